"""Robust aggregate statistics over runs, with rliable's definitions (Agarwal et al., 2021), via scipy.

Every function takes scores as a 2-d array of shape ``[runs, tasks]``: one row per run (a seed),
one column per task (in ctmarl: the tasks of one scenario, so a score is a per-task AUC_k). No I/O.

- **IQM** (interquartile mean): the mean of the middle 50% of all ``runs x tasks`` scores,
  ``scipy.stats.trim_mean(scores, 0.25, axis=None)``, which drops ``int(0.25 * n)`` scores from each
  end of the sorted ``n`` scores. Robust to outlier runs, more efficient than the median.
- **Stratified bootstrap CI**: resample runs with replacement *independently within each task*
  (the task is the stratum), recompute the statistic, and take the percentile interval of the
  resampled statistics. ``scipy.stats.bootstrap`` does exactly this when each task's column is
  passed as its own sample (unpaired samples are resampled independently). The generator is seeded
  so the interval is the same on every call (the leaderboard is rebuilt in CI and compared).
- **Bootstrap CI of a mean** (:func:`mean_ci`): for one number per run (e.g. a per-seed
  plasticity ratio), the percentile interval of the mean over runs resampled with replacement.
- **Probability of improvement** P(X > Y): for each task k, the probability that a random run of
  method X scores higher than a random run of method Y on task k, ties counting 1/2 (the
  Mann–Whitney U statistic divided by ``n_x * n_y``), averaged over tasks. X and Y need the same
  tasks but not the same number of runs.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

#: Fraction cut from each end for the interquartile mean.
IQM_TRIM = 0.25
#: Bootstrap defaults used by the leaderboard.
CI_LEVEL = 0.95
CI_RESAMPLES = 10_000
CI_SEED = 0

# scipy >= 1.15 takes the generator as `rng`; older releases as `random_state`.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"


class Interval(NamedTuple):
    low: float
    high: float


def as_scores(scores, name: str = "scores") -> np.ndarray:
    """``scores`` as a float array ``[runs, tasks]``; a 1-d array is one task (``[runs, 1]``)."""
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [runs, tasks] array, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name}: contains NaN")
    return array


def iqm(scores) -> float:
    """Interquartile mean of all ``[runs, tasks]`` scores (25% trimmed mean, rliable's IQM)."""
    return float(scipy_stats.trim_mean(as_scores(scores), IQM_TRIM, axis=None))


def _iqm_of_columns(*columns: np.ndarray, axis: int = -1) -> np.ndarray:
    # scipy hands one resampled array per task, each [..., runs]; the IQM is over all of them.
    return scipy_stats.trim_mean(np.concatenate(columns, axis=axis), IQM_TRIM, axis=axis)


def stratified_bootstrap_ci(
    scores, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES, seed: int = CI_SEED
) -> Interval:
    """Percentile ``level`` CI of the IQM of ``[runs, tasks]`` scores, runs resampled within tasks.

    Needs at least 2 runs (with one run every resample is the same run). Deterministic for a
    given ``seed`` and scipy/numpy version.
    """
    array = as_scores(scores)
    if array.shape[0] < 2:
        raise ValueError(f"a bootstrap CI needs at least 2 runs, got {array.shape[0]}")
    return stratified_bootstrap_ci_of_strata(tuple(array.T), level, resamples, seed)


def stratified_bootstrap_ci_of_strata(
    strata, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES, seed: int = CI_SEED
) -> Interval:
    """As :func:`stratified_bootstrap_ci` for strata of different sizes: ``strata`` is a sequence
    of 1-d arrays (one per stratum, e.g. per scenario and task, its runs), each resampled with
    replacement on its own; the IQM is over all of them. Needs a stratum with at least 2 runs. A
    stratum of one run enters every resample as itself (resampling one value can only draw it;
    scipy refuses a sample of one), so a method with one seed on one scenario and several on
    another gets an interval whose width comes from the latter."""
    columns = tuple(np.asarray(column, dtype=float) for column in strata)
    if not columns or any(c.ndim != 1 or c.size == 0 or np.isnan(c).any() for c in columns):
        raise ValueError("strata: expected non-empty 1-d arrays without NaN")
    if max(c.size for c in columns) < 2:
        raise ValueError("a bootstrap CI needs at least 2 runs in some stratum")
    varied = tuple(c for c in columns if c.size >= 2)
    fixed = np.concatenate([c for c in columns if c.size < 2] or [np.empty(0)])

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        constant = np.broadcast_to(fixed, resampled[0].shape[:-1] + fixed.shape)
        return _iqm_of_columns(*resampled, constant, axis=axis)

    result = scipy_stats.bootstrap(
        varied, statistic, n_resamples=resamples, vectorized=True, paired=False,
        confidence_level=level, method="percentile", **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


def mean_ci(values, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> Interval:
    """Percentile ``level`` bootstrap CI of the mean of 1-d ``values`` (one per run), runs resampled
    with replacement. Needs at least 2 values; deterministic for a given ``seed``."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or np.isnan(array).any():
        raise ValueError(f"values: expected a 1-d array without NaN, got shape {array.shape}")
    if array.size < 2:
        raise ValueError(f"a bootstrap CI needs at least 2 runs, got {array.size}")
    result = scipy_stats.bootstrap(
        (array,), np.mean, n_resamples=resamples, vectorized=True, confidence_level=level,
        method="percentile", **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


def probability_of_improvement(scores_x, scores_y) -> float:
    """P(X > Y): mean over tasks of U_k / (n_x n_y), U_k the Mann–Whitney U of X's runs over Y's
    on task k (pairs with x > y count 1, ties 1/2). ``scores_x`` [n_x, tasks], ``scores_y`` [n_y, tasks]."""
    x, y = as_scores(scores_x, "scores_x"), as_scores(scores_y, "scores_y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"scores_x has {x.shape[1]} tasks, scores_y has {y.shape[1]}")
    per_task = [
        scipy_stats.mannwhitneyu(x[:, k], y[:, k], alternative="greater").statistic / (len(x) * len(y))
        for k in range(x.shape[1])
    ]
    return float(np.mean(per_task))
