"""ctmarl.stats against answers computed by hand (rliable's definitions)."""

import numpy as np
import pytest

from ctmarl import stats


def test_iqm_is_the_mean_of_the_middle_half_over_runs_and_tasks():
    # 8 scores sorted: 1 2 3 4 5 6 7 100 -> drop 2 from each end -> mean(3, 4, 5, 6) = 4.5
    assert stats.iqm([[1, 2], [3, 4], [5, 6], [7, 100]]) == 4.5
    # 5 scores: int(0.25 * 5) = 1 dropped from each end -> mean(2, 3, 4) = 3
    assert stats.iqm([10, 2, 3, 4, -50]) == 3.0
    # 3 scores: int(0.75) = 0 dropped -> the plain mean
    assert stats.iqm([[0.0, 0.3, 0.6]]) == pytest.approx(0.3)


def test_bootstrap_ci_of_two_runs_covers_the_exact_resampling_distribution():
    # Runs {0, 1}, one task: resampled IQMs (= means of 2) are 0, 0.5, 1 with probability
    # 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are exactly 0 and 1.
    assert stats.stratified_bootstrap_ci([[0.0], [1.0]]) == (0.0, 1.0)


def test_bootstrap_is_stratified_by_task():
    # Task 0 scores 0 and task 1 scores 1 on every run. Resampling runs within each task always
    # gives three 0s and three 1s, whose IQM is mean(0, 0, 1, 1) = 0.5: a zero-width interval.
    # (Resampling all six scores together would not: it could draw six 1s.)
    scores = [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    assert stats.iqm(scores) == 0.5
    assert stats.stratified_bootstrap_ci(scores) == (0.5, 0.5)


def test_bootstrap_is_deterministic_and_brackets_the_iqm():
    scores = np.random.default_rng(1).uniform(size=(5, 4))
    first = stats.stratified_bootstrap_ci(scores)
    assert first == stats.stratified_bootstrap_ci(scores)
    assert first.low < stats.iqm(scores) < first.high
    assert stats.stratified_bootstrap_ci(scores, seed=7) != first


def test_bootstrap_needs_two_runs():
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.stratified_bootstrap_ci([[0.5, 0.2]])


def test_probability_of_improvement_counts_ties_as_half():
    # x in {1, 2}, y in {2, 3}: pairs (1,2) 0, (1,3) 0, (2,2) 1/2, (2,3) 0 -> 0.5 / 4
    assert stats.probability_of_improvement([1, 2], [2, 3]) == 0.125
    # two tasks: task 0 as above (0.125); task 1 x = {5, 5} beats y = {1, 1} always (1) -> mean 0.5625
    assert stats.probability_of_improvement([[1, 5], [2, 5]], [[2, 1], [3, 1]]) == 0.5625
    # different run counts; identical samples give 1/2
    assert stats.probability_of_improvement([[0.5], [0.7], [0.9]], [[0.6]]) == pytest.approx(2 / 3)
    assert stats.probability_of_improvement([[0.3, 0.4]], [[0.3, 0.4]]) == 0.5


@pytest.mark.parametrize("bad, message", [
    ([[1.0, float("nan")]], "NaN"),
    (np.zeros((0, 2)), "non-empty"),
    (np.zeros((2, 2, 2)), "non-empty"),
])
def test_bad_shapes_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.iqm(bad)


def test_probability_of_improvement_needs_the_same_tasks():
    with pytest.raises(ValueError, match="tasks"):
        stats.probability_of_improvement([[1, 2]], [[1, 2, 3]])


def test_strata_bootstrap_keeps_a_one_run_stratum_fixed():
    """A method with one seed on one scenario and several on another (the aggregate's strata): the
    one-run stratum enters every resample as itself, so the interval is that of the varied strata
    with the single value added, and a constant single value leaves a constant interval."""
    varied = [np.array([0.0, 1.0]), np.array([0.2, 0.4, 0.6])]
    with_single = stats.stratified_bootstrap_ci_of_strata(varied + [np.array([0.5])])
    assert with_single.low <= stats.iqm(np.array([0.0, 1.0, 0.2, 0.4, 0.6, 0.5])[:, None]) <= with_single.high
    assert with_single.low < with_single.high
    # every stratum but one has one run: the interval still comes from the one that varies
    ci = stats.stratified_bootstrap_ci_of_strata([np.array([0.3]), np.array([0.3, 0.3]), np.array([0.3])])
    assert ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.stratified_bootstrap_ci_of_strata([np.array([0.3]), np.array([0.4])])
