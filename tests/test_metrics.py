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
