"""Continual and neuron-level summaries computed from run records (no training, no I/O).

The plasticity ratio and forward transfer need a *scratch* reference: the record of the
``reset_all`` method (which re-learns every task from a fresh initialisation) with the same
scenario, version, tier, learner and seed. Where it is missing the summary says so instead of
inventing a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ctmarl import metrics

SCRATCH_METHOD = "reset_all"
RATIO_KEYS = ("stagnant_ratio", "dormant_ratio", "grama_ratio")


def run_key(record: Mapping[str, Any]) -> tuple:
    s = record["scenario"]
    return (s["name"], s["version"], s["tier"], record["learner"]["name"], record["seed"])


def find_scratch(record: Mapping[str, Any], candidates: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ``reset_all`` record of the same scenario, version, tier, learner and seed, if any."""
    key = run_key(record)
    for candidate in candidates:
        if candidate["method"]["name"] == SCRATCH_METHOD and run_key(candidate) == key:
            return candidate
    return None


def continual_summary(record: Mapping[str, Any], scratch: Mapping[str, Any] | None) -> dict[str, Any]:
    m = record["metrics"]
    summary: dict[str, Any] = {
        "performance": m["performance"],
        "auc": m["auc"],
        "forgetting": m["forgetting"],
        "auc_per_task": m["auc_per_task"],
    }
    if scratch is None:
        name, version, tier, learner, seed = run_key(record)
        missing = (f"n/a: no {SCRATCH_METHOD} record for {name}-v{version} {tier} {learner} seed {seed}")
        summary.update(plasticity_ratio=missing, forward_transfer=missing)
        return summary
    scratch_auc = scratch["metrics"]["auc_per_task"]
    pr = metrics.plasticity_ratio_per_task(m["auc_per_task"], scratch_auc)
    ft = metrics.forward_transfer_per_task(m["auc_per_task"], scratch_auc)
    summary.update(
        plasticity_ratio=_number_or_reason(metrics.nan_mean(pr), "scratch AUC is 0 on every task"),
        plasticity_ratio_per_task=_nan_to_none(pr),
        plasticity_ratio_trend=_number_or_reason(metrics.trend(pr), "fewer than 2 defined PR_k"),
        forward_transfer=_number_or_reason(
            metrics.nan_mean(ft), "undefined: scratch AUC is 1 on every task (no headroom)"),
        forward_transfer_per_task=_nan_to_none(ft),
    )
    return summary


def _number_or_reason(value: float, reason: str) -> float | str:
    return f"n/a: {reason}" if np.isnan(value) else value


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def neuron_ratios_by_task(record: Mapping[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """Per part ("agent", "mixer", "all") and ratio: the mean over each task's logs [K].

    Group ratios are combined weighted by group width (a ratio of neurons over the whole part).
    None where a task had no logging update.
    """
    log = record.get("neurons") or {}
    groups = log.get("groups", {})
    tasks = np.asarray(log.get("task", []))
    n_tasks = len(record["tasks"])
    out: dict[str, dict[str, list[float | None]]] = {}
    for part in ("agent", "mixer", "all"):
        members = [g for g, c in groups.items() if part == "all" or c["part"] == part]
        if not members or tasks.size == 0:
            continue
        out[part] = {}
        for key in RATIO_KEYS:
            series = np.array([groups[g][key] for g in members], dtype=float)  # [G, L]
            counts = np.array([groups[g]["width"] for g in members], dtype=float)  # [G, L]
            combined = (counts * series).sum(0) / counts.sum(0)
            out[part][key] = [
                float(combined[tasks == k].mean()) if (tasks == k).any() else None for k in range(n_tasks)
            ]
    return out

