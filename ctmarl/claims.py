"""The KNIFE paper's four claims, read from the leaderboard's admitted records.

Every claim gets rows of evidence (numbers with 95% bootstrap intervals over seeds) and a verdict:
*supported*, *not supported*, *not separable* (the intervals do not decide) or *not measured* (no
record to decide on). The neuron claims are read from the ``none`` records' neuron logs (what
plain training does to the network, with no method acting on it); the method claims from the
leaderboard's numbers. Only ranked tables whose validity verdict is *shows plasticity loss* vote:
a scenario that does not show the loss cannot tell whether a method fights it. Rows of the other
tables with enough records are listed, marked, for the reader.

1. **Stagnant neurons concentrate in the mixer.** Per seed: the stagnant ratio of the mixer's
   neurons minus the agent's (each part's groups pooled, weighted by their widths), averaged over
   the neuron logs of the last task. Row: supported when the interval of the mean over seeds lies
   above 0, not supported when below, else not separable.
2. **Stagnant neurons differ from dormant and GraMa neurons.** Per seed, at the last task, all
   groups pooled: the share of the stagnant neurons that the other criterion does not flag,
   1 − |stagnant ∧ dormant| / |stagnant| (and the same for GraMa). Row: supported when the
   interval lies above :data:`DIFFER_SHARE` (more than a tenth of the stagnant neurons are not
   dormant), not supported when below it (the two criteria flag nearly the same neurons), else not
   separable.
3. **KNIFE beats ReDo, GraMa, reset and plasticity injection.** Per learner, KNIFE's normalised
   AUC in the cross-scenario aggregate (:mod:`ctmarl.aggregate`) and its IQM AUC in each valid
   table, against each rival's: *better* when KNIFE's 95% interval lies entirely above the
   rival's, *worse* when entirely below, else *not separable* (non-overlapping intervals: a
   conservative test). The aggregate comparison needs both methods averaged over the same valid
   tables (seed counts may differ): otherwise the row reads *different tables* and does not vote,
   since one scenario's scores would stand against another's. A learner's verdict is supported
   when KNIFE is better than every rival in the aggregate, not supported when any rival is
   better, else not separable.
4. **KNIFE helps both QMIX and QPLEX.** Per learner, KNIFE's aggregate normalised AUC against 0
   (what keeping the network does): supported when its interval lies above 0 on every learner,
   not supported when on some learner it does not, not measured when a learner has no KNIFE
   record on a valid table.

A claim's verdict over its rows: supported when every voting row is supported, not supported when
any is, not separable otherwise, not measured without a voting row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ctmarl import validity
from ctmarl.aggregate import shows_loss

KNIFE = "knife"
RIVALS = ("redo", "grama", "reset", "injection")
LEARNERS = ("qmix", "qplex")
#: Claim 2: a criterion "differs" from stagnancy when more than this share of the stagnant neurons
#: is not flagged by it.
DIFFER_SHARE = 0.1
SUPPORTED, NOT_SUPPORTED, NOT_SEPARABLE, NOT_MEASURED = (
    "supported", "not supported", "not separable", "not measured")
#: Claim 3's aggregate row when KNIFE and the rival are averaged over different valid tables.
DIFFERENT_TABLES = "different tables (no vote)"
#: Claim 3's ``where`` for the cross-scenario aggregate's rows (the others name a table).
AGGREGATE = "aggregate (normalised AUC)"


def interval_verdict(ci: list[float] | None, threshold: float) -> str:
    """supported / not supported / not separable for an interval against ``threshold``."""
    if ci is None:
        return NOT_SEPARABLE
    if ci[0] > threshold:
        return SUPPORTED
    if ci[1] < threshold:
        return NOT_SUPPORTED
    return NOT_SEPARABLE


def compare(ours: list[float] | None, theirs: list[float] | None) -> str:
    """better / worse / not separable: whether two 95% intervals are apart, and which is above."""
    if ours is None or theirs is None:
        return NOT_SEPARABLE
    if ours[0] > theirs[1]:
        return "better"
    if ours[1] < theirs[0]:
        return "worse"
    return NOT_SEPARABLE


def combine(row_verdicts: list[str]) -> str:
    """A claim's verdict from its voting rows' verdicts."""
    if not row_verdicts:
        return NOT_MEASURED
    if NOT_SUPPORTED in row_verdicts:
        return NOT_SUPPORTED
    if all(v == SUPPORTED for v in row_verdicts):
        return SUPPORTED
    return NOT_SEPARABLE


# --- the neuron claims -------------------------------------------------------------------------

def _last_task(neurons: Mapping[str, Any]) -> np.ndarray:
    task = np.asarray(neurons["task"])
    return task == task.max()


def _pooled(groups: Mapping[str, Any], key: str, keep: np.ndarray, part: str | None = None) -> float:
    """Count of neurons flagged by ``key`` (a ratio per log) over the width, groups pooled, over the
    logs in ``keep``; only the groups of ``part`` when given."""
    flagged = total = 0.0
    for group in groups.values():
        if part is not None and group["part"] != part:
            continue
        width = np.asarray(group["width"], dtype=float)[keep]
        flagged += float((np.asarray(group[key], dtype=float)[keep] * width).sum())
        total += float(width.sum())
    return flagged / total if total else float("nan")


def mixer_minus_agent(neurons: Mapping[str, Any]) -> float:
    """Claim 1 for one record: pooled stagnant ratio of the mixer minus the agent's, last task."""
    keep = _last_task(neurons)
    groups = neurons["groups"]
    return _pooled(groups, "stagnant_ratio", keep, "mixer") - _pooled(groups, "stagnant_ratio", keep, "agent")


def share_not_flagged(neurons: Mapping[str, Any], other: str) -> float:
    """Claim 2 for one record: 1 − |stagnant ∧ other| / |stagnant|, last task, groups pooled
    (``other``: dormant or grama); NaN when no neuron is stagnant."""
    keep = _last_task(neurons)
    groups = neurons["groups"]
    stagnant = _pooled(groups, "stagnant_ratio", keep)
    both = _pooled(groups, f"stagnant_and_{other}", keep)
    return 1.0 - both / stagnant if stagnant > 0 else float("nan")


def _has_neurons(record: Mapping[str, Any]) -> bool:
    neurons = record.get("neurons")
    return bool(neurons) and bool(neurons.get("task")) and all(
        "stagnant_and_dormant" in g and "stagnant_and_grama" in g for g in neurons["groups"].values())


def _neuron_rows(boards: list[Any], records: Mapping[tuple, Mapping[str, list[Any]]]) -> tuple[list, list]:
    concentrate, differ = [], []
    for board in boards:
        if not board.ranked:
            continue
        items = [i for i in records[(board.scenario, board.version, board.tier, board.learner)].get(
            validity.NONE_METHOD, []) if _has_neurons(i.record)]
        if len(items) < validity.MIN_SEEDS:
            continue
        votes = shows_loss(board)
        base = {"table": board.title, "seeds": sorted(i.seed for i in items), "votes": votes}
        mean, ci = validity.summarise([mixer_minus_agent(i.record["neurons"]) for i in items])
        concentrate.append({**base, "mixer_minus_agent": mean, "ci95": ci, "verdict": interval_verdict(ci, 0.0)})
        for other in ("dormant", "grama"):
            mean, ci = validity.summarise([share_not_flagged(i.record["neurons"], other) for i in items])
            differ.append({**base, "other": other, "share_not_flagged": mean, "ci95": ci,
                           "verdict": interval_verdict(ci, DIFFER_SHARE)})
    return concentrate, differ


# --- the method claims -------------------------------------------------------------------------

def _interval(entry: Mapping[str, Any], key: str) -> list[float] | None:
    ci = entry.get(key)
    return list(ci) if isinstance(ci, list) else None


def _tables(entry: Mapping[str, Any]) -> frozenset[str]:
    """The tables an aggregate entry averages over (its seeds may differ: each interval has its own n)."""
    return frozenset(item["table"] for item in entry.get("scenarios", []))


def _method_rows(boards: list[Any], aggregate: list[Mapping[str, Any]]) -> tuple[list, list]:
    beats, helps = [], []
    for learner in LEARNERS:
        agg = {e["method"]: e for e in aggregate if e["learner"] == learner}
        knife = agg.get(KNIFE)
        if knife is not None:
            ci = _interval(knife, "normalised_auc_iqm_ci95")
            helps.append({"learner": learner, "normalised_auc_iqm": knife["normalised_auc_iqm"], "ci95": ci,
                          "verdict": interval_verdict(ci, 0.0), "votes": True})
        else:
            helps.append({"learner": learner, "verdict": NOT_MEASURED, "votes": True,
                          "why": "no knife record on a table that shows plasticity loss"})
        tables = [b for b in boards if b.learner == learner and shows_loss(b)]
        for rival in RIVALS:
            if knife is None or rival not in agg:
                continue
            ours, theirs = _interval(knife, "normalised_auc_iqm_ci95"), _interval(agg[rival], "normalised_auc_iqm_ci95")
            same = _tables(knife) == _tables(agg[rival])
            beats.append({"learner": learner, "where": AGGREGATE, "rival": rival,
                          "knife": knife["normalised_auc_iqm"], "knife_ci95": ours,
                          "rival_value": agg[rival]["normalised_auc_iqm"], "rival_ci95": theirs,
                          "comparison": compare(ours, theirs) if same else DIFFERENT_TABLES, "votes": same})
            for board in tables:
                entries = {e["method"]: e for e in board.entries}
                if KNIFE not in entries or rival not in entries:
                    continue
                ours, theirs = _interval(entries[KNIFE], "auc_iqm_ci95"), _interval(entries[rival], "auc_iqm_ci95")
                beats.append({"learner": learner, "where": board.title, "rival": rival,
                              "knife": entries[KNIFE]["auc_iqm"], "knife_ci95": ours,
                              "rival_value": entries[rival]["auc_iqm"], "rival_ci95": theirs,
                              "comparison": compare(ours, theirs), "votes": False})
    return beats, helps


def _beats_verdict(rows: list[Mapping[str, Any]]) -> str:
    per_learner = []
    for learner in LEARNERS:
        voting = [r["comparison"] for r in rows if r["votes"] and r["learner"] == learner]
        if not voting:
            continue
        if "worse" in voting:
            per_learner.append(NOT_SUPPORTED)
        elif len(voting) == len(RIVALS) and all(v == "better" for v in voting):
            per_learner.append(SUPPORTED)
        else:
            per_learner.append(NOT_SEPARABLE)
    return combine(per_learner)


def claims(boards: list[Any], records: Mapping[tuple, Mapping[str, list[Any]]],
           aggregate: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The four claims with their rows and verdicts (``boards``, ``records`` and ``aggregate`` as
    :func:`ctmarl.aggregate.aggregate` takes and gives them)."""
    concentrate, differ = _neuron_rows(boards, records)
    beats, helps = _method_rows(boards, aggregate)
    helps_verdicts = [r["verdict"] for r in helps]
    helps_verdict = (NOT_SUPPORTED if NOT_SUPPORTED in helps_verdicts
                     else NOT_MEASURED if NOT_MEASURED in helps_verdicts else combine(helps_verdicts))
    return [
        {"claim": "stagnant neurons concentrate in the mixer",
         "verdict": combine([r["verdict"] for r in concentrate if r["votes"]]), "rows": concentrate},
        {"claim": "stagnant neurons differ from dormant and GraMa neurons",
         "verdict": combine([r["verdict"] for r in differ if r["votes"]]), "rows": differ},
        {"claim": f"KNIFE beats {', '.join(RIVALS)}", "verdict": _beats_verdict(beats), "rows": beats},
        {"claim": "KNIFE helps both QMIX and QPLEX", "verdict": helps_verdict, "rows": helps},
    ]


# --- markdown ----------------------------------------------------------------------------------

def _v(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown(items: list[Mapping[str, Any]]) -> list[str]:
    """The claims section of LEADERBOARD.md."""
    lines = ["## The KNIFE paper's claims", "",
             "Read from the records above by ctmarl/claims.py (rules there). Only tables whose validity verdict",
             "is *shows plasticity loss* vote; rows of other tables are marked `no vote`. Intervals: 95% bootstrap",
             "over seeds; \"better\"/\"worse\" need the two intervals apart. Claim 3 votes with the aggregate;",
             "its per-table rows, marked `(table)`, show where the aggregate comes from.", ""]
    for number, item in enumerate(items, 1):
        lines += [f"### {number}. {item['claim']}: **{item['verdict']}**", ""]
        rows = item["rows"]
        if number == 1:
            lines += ["| table | seeds | mixer − agent stagnant ratio, last task | row |", "| --- | ---: | --- | --- |"]
            lines += [f"| {r['table']} | {len(r['seeds'])} | {_v(r['mixer_minus_agent'], r['ci95'])} | "
                      f"{r['verdict'] if r['votes'] else 'no vote'} |" for r in rows]
        elif number == 2:
            lines += ["| table | seeds | other criterion | stagnant neurons it does not flag | row |",
                      "| --- | ---: | --- | --- | --- |"]
            lines += [f"| {r['table']} | {len(r['seeds'])} | {r['other']} | {_v(r['share_not_flagged'], r['ci95'])} | "
                      f"{r['verdict'] if r['votes'] else 'no vote'} |" for r in rows]
        elif number == 3:
            lines += ["| learner | where | rival | knife | rival | knife is |", "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['learner']} | {r['where']} | `{r['rival']}` | {_v(r['knife'], r['knife_ci95'])} | "
                      f"{_v(r['rival_value'], r['rival_ci95'])} | {r['comparison']}"
                      f"{'' if r['where'] == AGGREGATE else ' (table)'} |" for r in rows]
        else:
            lines += ["| learner | knife's normalised AUC (0 = none) | row |", "| --- | --- | --- |"]
            lines += [f"| {r['learner']} | {_v(r.get('normalised_auc_iqm'), r.get('ci95')) if 'why' not in r else r['why']} "
                      f"| {r['verdict']} |" for r in rows]
        if not rows:
            lines += ["(no record to decide on yet)"]
        lines.append("")
    return lines
