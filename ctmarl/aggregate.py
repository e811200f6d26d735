"""The cross-scenario aggregate: one number per method and learner over every valid scenario.

A scenario's table enters when ``ctmarl validity`` says it shows plasticity loss (its verdict on
the leaderboard, from its ``none`` and ``reset_all`` records) and it is ranked (not smoke), and only
the newest such version of a scenario at a tier and learner: a later version supersedes an earlier
one (``predator_prey_drift-v3`` re-calibrates v2's tier), so one scenario is not counted twice and
the aggregate moves to the new version as its records land (an older version's table still stands,
with its own verdict, on the leaderboard). In it,
each of a method's seeds that has the ``none`` and ``reset_all`` record of the same seed gives,
per task k, the **normalised AUC**

    z_k = (AUC_k − AUC_k(none)) / Δ,   Δ = mean_j (AUC_j(reset_all) − AUC_j(none))   (same seed)

so 0 is what keeping the network does and 1 is the average advantage that training each task from
scratch has over it. Δ is the seed's mean gap over all tasks, not task k's own gap: the first
task's gap is exactly 0 (``reset_all`` resets only at task boundaries) and other tasks' gaps can
be near 0, which would divide by nothing. A seed whose Δ is not positive is left out (its
scenario then shows no plasticity loss for that seed; the entry says how many were left out).

Per (method, learner): the IQM of all z_k over the valid scenarios, seeds and tasks, with a 95%
stratified-bootstrap interval (each (scenario, task) a stratum, its seeds resampled within it;
:func:`ctmarl.stats.stratified_bootstrap_ci_of_strata`). ``none`` is 0 by construction and
``reset_all`` is listed too (its IQM is not 1: the mean gap is spread unevenly over tasks). A
method is aggregated over the scenarios it has records on; its entry lists them with their seed
counts, so methods with different coverage are shown as such, each interval from its own seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ctmarl import stats, validity

NONE, SCRATCH = validity.NONE_METHOD, validity.SCRATCH_METHOD


def _auc(item: Any) -> np.ndarray:
    return np.asarray(item.record["metrics"]["auc_per_task"], dtype=float)


def shows_loss(board: Any) -> bool:
    """Whether a leaderboard table counts as valid: ranked, and its validity verdict is *shows
    plasticity loss*."""
    return board.ranked and board.validity is not None and board.validity["verdict"] == validity.SHOWS


def normalised_scores(items: list[Any], none: Mapping[int, Any], scratch: Mapping[int, Any]) -> tuple[
        dict[int, np.ndarray], int]:
    """{seed: z per task} for the method's ``items`` with a same-seed ``none`` and ``reset_all``
    record, and how many seeds were left out for a non-positive Δ."""
    out, dropped = {}, 0
    for item in items:
        seed = item.seed
        if seed not in none or seed not in scratch:
            continue
        base = _auc(none[seed])
        gap = float(np.mean(_auc(scratch[seed]) - base))
        if not gap > 0:
            dropped += 1
            continue
        out[seed] = (_auc(item) - base) / gap
    return out, dropped


def aggregate(boards: list[Any], records: Mapping[tuple, Mapping[str, list[Any]]]) -> list[dict[str, Any]]:
    """The aggregate entries, per learner sorted by IQM (highest first). ``boards``: the
    leaderboard's tables (their ``validity`` and ``ranked``); ``records``: per table key
    (scenario, version, tier, learner), its admitted records by method."""
    per: dict[tuple[str, str], dict[str, Any]] = {}
    valid = [board for board in boards if shows_loss(board)]
    newest: dict[tuple[str, str, str], int] = {}
    for board in valid:
        key = (board.scenario, board.tier, board.learner)
        newest[key] = max(newest.get(key, board.version), board.version)
    for board in valid:
        if board.version != newest[(board.scenario, board.tier, board.learner)]:
            continue  # superseded by a newer valid version of the same scenario
        methods = records[(board.scenario, board.version, board.tier, board.learner)]
        none = {item.seed: item for item in methods.get(NONE, [])}
        scratch = {item.seed: item for item in methods.get(SCRATCH, [])}
        for method, items in methods.items():
            scores, dropped = normalised_scores(items, none, scratch)
            entry = per.setdefault((board.learner, method), {"strata": [], "scenarios": [], "dropped": 0})
            entry["dropped"] += dropped
            if scores:
                matrix = np.stack([scores[s] for s in sorted(scores)])
                entry["strata"] += list(matrix.T)
                entry["scenarios"].append({"table": board.title, "seeds": sorted(scores)})
    out = []
    for (learner, method), entry in per.items():
        if not entry["strata"]:
            continue
        strata = entry["strata"]
        if max(len(column) for column in strata) >= 2:
            ci: list[float] | str = list(stats.stratified_bootstrap_ci_of_strata(strata))
        else:
            ci = "n/a: one seed (a bootstrap CI needs at least 2)"
        out.append({
            "learner": learner, "method": method,
            "reference": method in (NONE, SCRATCH),
            "normalised_auc_iqm": float(stats.iqm(np.concatenate(strata)[:, None])),
            "normalised_auc_iqm_ci95": ci,
            "scenarios": entry["scenarios"],
            "seeds_left_out": entry["dropped"],
        })
    out.sort(key=lambda e: (e["learner"], e["reference"], -e["normalised_auc_iqm"], e["method"]))
    return out
