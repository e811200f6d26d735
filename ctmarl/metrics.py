"""Continual-learning metrics (DESIGN.md §8), pure functions over documented arrays.

Shapes: a run has K tasks. ``curves[k]`` is the 1-d array of normalised scores of the greedy
evaluations made while training task k (in order; the last one is at the end of task k).
``R`` is [K, K]: ``R[k, j]`` = normalised score on task j after training task k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def final_scores(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """c_k(end of task k) for every k: [K]."""
    return np.array([curve[-1] for curve in curves], dtype=float)


def performance(curves: Sequence[Sequence[float]]) -> float:
    """P = mean_k c_k(end of task k): how well each new task was learned."""
    return float(final_scores(curves).mean())


def auc_per_task(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """AUC_k = mean_t c_k(t): [K]."""
    return np.array([float(np.mean(curve)) for curve in curves], dtype=float)


def auc(curves: Sequence[Sequence[float]]) -> float:
    """AUC = mean_k mean_t c_k(t): how fast tasks are learned (the headline score)."""
    return float(auc_per_task(curves).mean())


def forgetting_per_task(R: np.ndarray) -> np.ndarray:
    """F_j = max_{k<K} R[k, j] - R[K, j] for j < K (K = last task index): [K-1 values]."""
    R = np.asarray(R, dtype=float)
    last = R.shape[0] - 1
    return np.array([R[:last, j].max() - R[last, j] for j in range(last)], dtype=float)


def forgetting(R: np.ndarray) -> float | None:
    """Mean forgetting over the tasks before the last; None for a single-task scenario."""
    values = forgetting_per_task(R)
    return float(values.mean()) if values.size else None


def plasticity_ratio_per_task(auc_method: Sequence[float], auc_scratch: Sequence[float]) -> np.ndarray:
    """PR_k = AUC_k(method) / AUC_k(scratch): [K]; NaN where the scratch AUC is 0."""
    method, scratch = np.asarray(auc_method, dtype=float), np.asarray(auc_scratch, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scratch > 0, method / np.where(scratch > 0, scratch, 1.0), np.nan)


def forward_transfer_per_task(auc_method: Sequence[float], auc_scratch: Sequence[float]) -> np.ndarray:
    """FT_k = (AUC_k - AUC_k^scratch) / (1 - AUC_k^scratch) (Continual World): [K]; NaN where
    the scratch AUC is 1 (nothing left to transfer)."""
    method, scratch = np.asarray(auc_method, dtype=float), np.asarray(auc_scratch, dtype=float)
    headroom = 1.0 - scratch
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(headroom > 0, (method - scratch) / np.where(headroom > 0, headroom, 1.0), np.nan)


def trend(values: Sequence[float]) -> float:
    """Least-squares slope of values against their index, ignoring NaN (the PR_k trend)."""
    y = np.asarray(values, dtype=float)
    x = np.arange(y.size, dtype=float)
    keep = ~np.isnan(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def nan_mean(values: Sequence[float]) -> float:
    y = np.asarray(values, dtype=float)
    return float(np.nanmean(y)) if (~np.isnan(y)).any() else float("nan")
