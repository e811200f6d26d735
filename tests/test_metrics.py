import numpy as np
import pytest

from ctmarl import metrics

CURVES = [[0.0, 0.5, 1.0], [0.5, 0.5], [0.25, 0.75, 0.5, 1.0]]


def test_performance_is_mean_of_final_points():
    assert metrics.final_scores(CURVES).tolist() == [1.0, 0.5, 1.0]
    assert metrics.performance(CURVES) == pytest.approx(2.5 / 3)


def test_auc_is_mean_of_per_task_means():
    assert metrics.auc_per_task(CURVES).tolist() == [0.5, 0.5, 0.625]
    assert metrics.auc(CURVES) == pytest.approx(1.625 / 3)


def test_forgetting_from_R():
    R = np.array([[1.0, 0.0, 0.0],
                  [0.5, 1.0, 0.0],
                  [0.25, 0.75, 1.0]])
    # F_0 = max(1.0, 0.5) - 0.25; F_1 = max(0.0... only k<2: R[0,1]=0, R[1,1]=1) - 0.75
    assert metrics.forgetting_per_task(R).tolist() == [0.75, 0.25]
    assert metrics.forgetting(R) == pytest.approx(0.5)
    assert metrics.forgetting(np.array([[0.3]])) is None


def test_plasticity_ratio_and_forward_transfer_by_hand():
    method, scratch = [0.5, 0.9, 0.3], [1.0, 0.6, 0.0]
    pr = metrics.plasticity_ratio_per_task(method, scratch)
    assert pr[:2].tolist() == pytest.approx([0.5, 1.5]) and np.isnan(pr[2])
    ft = metrics.forward_transfer_per_task(method, scratch)
    assert np.isnan(ft[0]) and ft[1:].tolist() == pytest.approx([0.75, 0.3])
    assert metrics.trend([1.0, 0.8, 0.6]) == pytest.approx(-0.2)
    assert metrics.nan_mean([1.0, float("nan"), 0.0]) == pytest.approx(0.5)
