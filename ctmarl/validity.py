"""Does a scenario measure plasticity loss? Evidence from run records (DESIGN.md §4.0).

For one (scenario, version, tier, learner), :func:`analyse` takes the records of the plain learner
(method ``none``) and of the scratch reference (``reset_all``, which learns every task from a
fresh network, so its R row after task k is the single-task expert of task k), pairs them by seed,
and computes (all per seed first, then the mean over seeds with a 95% percentile bootstrap
interval, :func:`ctmarl.stats.mean_ci`; with one seed the value and no interval):

1. **interference**, per consecutive pair (k, k+1): ``expert_on_next`` = R_scratch[k][k+1] (task
   k's expert scored on k+1), ``none_on_next`` = R_none[k][k+1] (the sequence's policy after k),
   ``reachable`` = the better final score on k+1 of the two methods (what training on k+1
   reaches), ``gap`` = reachable - max(expert_on_next, none_on_next); and the mean gap over pairs.
   A gap near 0 means the drift needs no new learning: a policy trained up to task k already
   scores on k+1 what training on k+1 reaches. Taking the better of both on each side keeps the
   gap honest where scratch cannot learn a task alone (then the expert of task k is no expert)
   and where ``none`` has lost the plasticity to reach what scratch reaches.
2. **learnability**: scratch's final score and AUC per task; the share of tasks whose mean final
   score is >= ``LEARNED_SCORE``.
3. **plasticity loss**: PR_k = AUC_k(none) / AUC_k(scratch) (NaN where the scratch AUC is 0); per
   seed the mean of PR_k over k >= 1 (task 0 is learned from scratch by both) and the
   least-squares slope of PR_k over all k; ``auc_gap`` = mean over k >= 1 of AUC_k(scratch) -
   AUC_k(none); ``auc_ratio`` = mean over k >= 1 of AUC_k(none) / mean over k >= 1 of
   AUC_k(scratch) (the ratio of the means; NaN where scratch's mean is 0). The verdict votes on
   ``auc_ratio``, not on the mean of PR_k: a mean of ratios is ruled by the tasks where scratch's
   AUC is near 0 (one failed scratch visit of AUC 0.006 against none's 0.79 gives PR_k = 127 and
   moved predator_prey_drift-v4's seed-0 PR mean to 9.4 while its AUC ratio is 0.49), whereas the
   ratio of the means weights each task by what scratch learns on it and is below 1 exactly when
   ``auc_gap`` > 0. (Decided on 4 Dec 2026 after v4 showed the fragility, and applied to every
   scenario at once; the mean of PR_k stays reported, as DESIGN.md §8 asks. Of the eleven tables
   then on main it changed one verdict, predator_prey_drift-v4's, from inconclusive to shows
   plasticity loss; the two statistics also disagree on matrix_drift_gradual-v1, PR mean 1.50
   against AUC ratio 0.78, whose verdict stays inconclusive because scratch learns 2 of its 6
   tasks.) For task definitions visited more than once (``task_definition``, else equal task
   names), ``revisit_auc_loss`` = AUC of the first visit - AUC of the n-th (n >= 2) in the
   ``none`` record (MEAL's AUC loss; needs no scratch), averaged over definitions per visit
   number and overall.
4. **probe** (when the ``none`` records carry ``plasticity_probe``): per task the share of a
   random-target regression loss a copy of the learner removes, next to the same for a fresh
   network, their ratio, and the slope of the learner's share over tasks (Lyle et al. 2023).

**Verdict** (:func:`verdict`; the first rule that applies wins; the probe is reported, not voted):

- fewer than ``MIN_SEEDS`` (2) paired seeds -> *inconclusive*; a single-task scenario too;
- mean interference gap below ``MIN_INTERFERENCE_GAP`` (0.1) -> *does not show plasticity loss*
  (consecutive tasks share their optimal behaviour: nothing to re-learn, so nothing to lose);
- scratch's mean final score below ``LEARNABLE_SCORE`` (0.5) on more than ``MAX_UNLEARNED_SHARE``
  (half) of the tasks -> *inconclusive* (scratch does not learn the tasks within the budget);
- the 95% interval of the AUC ratio lies entirely below ``NO_LOSS_PR`` (its high end < 1),
  or (repeated sequences) the interval of the overall revisit AUC loss lies entirely above 0 ->
  *shows plasticity loss*;
- the AUC ratio's interval has its low end >= ``NO_LOSS_PR_LOW`` (0.95) (so entirely >= 1, or
  reaching 1 from no lower than 0.95) -> *does not show plasticity loss* (none learns later tasks
  as fast as scratch);
- otherwise *inconclusive*, with the interval in the reason.

The rules compare the rounded numbers the result shows (so a reason never contradicts its numbers).

Everything here but :func:`find_records`, :func:`plan_missing` and :func:`write` is pure: plain
data in, plain data out (numbers rounded to ``DECIMALS`` places, NaN as None), deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctmarl import metrics, stats
from ctmarl.errors import CtmarlError, RecordError

NONE_METHOD = "none"
SCRATCH_METHOD = "reset_all"
#: Paired seeds needed for a verdict (an interval needs 2).
MIN_SEEDS = 2
#: A task counts as learned by scratch when its mean final score is at least this (reported share).
LEARNED_SCORE = 0.8
#: Scratch's mean final score below this means a task was not learned within its budget...
LEARNABLE_SCORE = 0.5
#: ...and when more than this share of the tasks was not learned, the scenario is inconclusive.
MAX_UNLEARNED_SHARE = 0.5
#: A mean interference gap below this means consecutive tasks share their optimal behaviour.
MIN_INTERFERENCE_GAP = 0.1
#: An AUC-ratio interval entirely below this shows plasticity loss...
NO_LOSS_PR = 1.0
#: ...and one whose low end is at least this shows none.
NO_LOSS_PR_LOW = 0.95

SHOWS, DOES_NOT_SHOW, INCONCLUSIVE = "shows plasticity loss", "does not show plasticity loss", "inconclusive"
VERDICTS = (SHOWS, DOES_NOT_SHOW, INCONCLUSIVE)
DECIMALS = 4
DEFAULT_OUT = "validity"
PROBE_PARTS = ("agent", "q_tot", "total")


class ValidityError(CtmarlError):
    """The records given cannot be analysed together (other scenarios, no pairs, malformed)."""


# --- pairing the records ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pairs:
    """Records of one scenario tier and learner, paired by seed (sorted).

    ``tasks`` [K] task names, ``definitions`` [K] index of each task's distinct definition,
    ``none``/``scratch`` one record per paired seed, ``unpaired`` seeds with only one of the two.
    """

    scenario: dict[str, Any]
    learner: str
    tasks: list[str]
    definitions: list[int]
    seeds: list[int]
    none: list[Mapping[str, Any]]
    scratch: list[Mapping[str, Any]]
    unpaired: dict[str, list[int]]


def _label(record: Mapping[str, Any]) -> str:
    try:
        return f"{record['method']['name']} seed {record['seed']}"
    except (KeyError, TypeError):
        return "a record without method name or seed"


def _identity(record: Mapping[str, Any]) -> tuple[str, int, str, str]:
    try:
        s = record["scenario"]
        return (s["name"], s["version"], s["tier"], record["learner"]["name"])
    except (KeyError, TypeError):
        raise ValidityError(f"{_label(record)}: lacks scenario name/version/tier or learner name") from None


def _check_shapes(record: Mapping[str, Any]) -> None:
    """A record has ``tasks`` [K], ``R`` [K, K], ``metrics.auc_per_task`` and ``final_score_per_task`` [K]."""
    where = _label(record)
    try:
        k = len(record["tasks"])
        R, m = record["R"], record["metrics"]
        per_task = (m["auc_per_task"], m["final_score_per_task"])
    except (KeyError, TypeError) as exc:
        raise ValidityError(f"{where}: lacks {exc} (needs tasks, R, metrics.auc_per_task, "
                            "metrics.final_score_per_task)") from None
    if len(R) != k or any(len(row) != k for row in R) or any(len(v) != k for v in per_task):
        raise ValidityError(f"{where}: R must be {k}x{k} and per-task metrics {k} long")


def _by_seed(records: Sequence[Mapping[str, Any]], method: str) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for record in records:
        if record.get("method", {}).get("name") != method:
            raise ValidityError(f"{_label(record)}: expected a {method} record")
        if record["seed"] in out:
            raise ValidityError(f"two {method} records for seed {record['seed']}")
        out[record["seed"]] = record
    return out


def task_definitions(records: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> list[int]:
    """[K] definition index per task: the records' ``task_definition`` (which must agree), or else
    equal names are one definition (indices in order of first appearance)."""
    given = [r["task_definition"] for r in records if r.get("task_definition") is not None]
    if given:
        first = list(given[0])
        if any(list(g) != first for g in given):
            raise ValidityError("the records disagree on task_definition")
        if len(first) != len(tasks) or not all(isinstance(d, int) and d >= 0 for d in first):
            raise ValidityError(f"task_definition must be {len(tasks)} non-negative ints, got {first}")
        return first
    index: dict[str, int] = {}
    return [index.setdefault(name, len(index)) for name in tasks]


def pair(none_records: Sequence[Mapping[str, Any]], scratch_records: Sequence[Mapping[str, Any]]) -> Pairs:
    """Check that all records are of one scenario (name, version, tier) and learner, with the same
    tasks, and pair ``none`` with ``reset_all`` records by seed; ValidityError if none pair."""
    everything = [*none_records, *scratch_records]
    if not everything:
        raise ValidityError("no records to analyse")
    identity = _identity(everything[0])
    for record in everything:
        if _identity(record) != identity:
            a, b = identity, _identity(record)
            raise ValidityError(f"records of different scenarios or learners: {a[0]}-v{a[1]} {a[2]} {a[3]} "
                                f"({_label(everything[0])}) and {b[0]}-v{b[1]} {b[2]} {b[3]} ({_label(record)})")
        _check_shapes(record)
        if list(record["tasks"]) != list(everything[0]["tasks"]):
            raise ValidityError(f"{_label(record)}: tasks {record['tasks']} differ from "
                                f"{everything[0]['tasks']} ({_label(everything[0])})")
    none, scratch = _by_seed(none_records, NONE_METHOD), _by_seed(scratch_records, SCRATCH_METHOD)
    seeds = sorted(set(none) & set(scratch))
    if not seeds:
        raise ValidityError(f"no seed has both a {NONE_METHOD} and a {SCRATCH_METHOD} record "
                            f"({NONE_METHOD} seeds: {sorted(none)}, {SCRATCH_METHOD} seeds: {sorted(scratch)})")
    tasks = list(everything[0]["tasks"])
    name, version, tier, learner = identity
    return Pairs(
        scenario={"name": name, "version": version, "tier": tier}, learner=learner, tasks=tasks,
        definitions=task_definitions(everything, tasks), seeds=seeds,
        none=[none[s] for s in seeds], scratch=[scratch[s] for s in seeds],
        unpaired={NONE_METHOD: sorted(set(none) - set(seeds)), SCRATCH_METHOD: sorted(set(scratch) - set(seeds))},
    )


# --- aggregation over seeds ------------------------------------------------------------------------

def _num(value: float) -> float | None:
    """A float rounded to DECIMALS places; NaN -> None."""
    value = float(value)
    return None if np.isnan(value) else round(value, DECIMALS) + 0.0  # + 0.0: no -0.0


def summarise(per_seed: Sequence[float]) -> tuple[float | None, list[float] | None]:
    """(mean, [low, high] 95% bootstrap interval) of one value per seed, NaN seeds left out;
    mean None when no seed has a value, interval None with fewer than 2."""
    values = np.asarray(per_seed, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None, None
    mean = _num(values.mean())
    if values.size < 2:
        return mean, None
    low, high = stats.mean_ci(values)
    return mean, [_num(low), _num(high)]


def _seed_mean(per_seed: np.ndarray) -> float | None:
    """Mean of one value per seed (``per_seed`` [S]) ignoring NaN; None if every seed is NaN."""
    return _num(metrics.nan_mean(per_seed))


def _with_ci(prefix: str, per_seed: Sequence[float]) -> dict[str, Any]:
    mean, ci = summarise(per_seed)
    return {prefix: mean, f"{prefix}_ci95": ci}


# --- the four sections -----------------------------------------------------------------------------

def _array(records: Sequence[Mapping[str, Any]], get) -> np.ndarray:
    return np.array([get(r) for r in records], dtype=float)


def interference(p: Pairs) -> dict[str, Any]:
    """Per consecutive pair (k, k+1), means over seeds; gap per pair and overall with intervals."""
    R_scratch = _array(p.scratch, lambda r: r["R"])  # [S, K, K]
    R_none = _array(p.none, lambda r: r["R"])  # [S, K, K]
    final_scratch = _array(p.scratch, lambda r: r["metrics"]["final_score_per_task"])  # [S, K]
    final_none = _array(p.none, lambda r: r["metrics"]["final_score_per_task"])  # [S, K]
    K = len(p.tasks)
    here, after = np.arange(K - 1), np.arange(1, K)
    expert = R_scratch[:, here, after]  # [S, K-1]: R_scratch[s, k, k+1]
    none_next = R_none[:, here, after]  # [S, K-1]
    carried = np.maximum(expert, none_next)  # the best a policy trained up to k scores on k+1
    reach_next = np.maximum(final_scratch, final_none)[:, 1:]  # the best training on k+1 reaches
    gap = reach_next - carried  # [S, K-1]
    pairs = [{
        "from": p.tasks[k], "to": p.tasks[k + 1],
        "expert_on_next": _seed_mean(expert[:, k]), "none_on_next": _seed_mean(none_next[:, k]),
        "reachable": _seed_mean(reach_next[:, k]), **_with_ci("gap", gap[:, k]),
    } for k in range(K - 1)]
    mean_gap = gap.mean(axis=1) if K > 1 else np.full(len(p.seeds), np.nan)
    return {"pairs": pairs, **_with_ci("mean_gap", mean_gap)}


def learnability(p: Pairs) -> dict[str, Any]:
    """Scratch's mean final score and AUC per task, and which tasks it learns."""
    final = _array(p.scratch, lambda r: r["metrics"]["final_score_per_task"]).mean(axis=0)  # [K]
    auc = _array(p.scratch, lambda r: r["metrics"]["auc_per_task"]).mean(axis=0)  # [K]
    return {
        "per_task": [{"task": t, "final": _num(f), "auc": _num(a)} for t, f, a in zip(p.tasks, final, auc)],
        "learned_share": _num(np.mean(final >= LEARNED_SCORE)),
        "not_learned": [t for t, f in zip(p.tasks, final) if f < LEARNABLE_SCORE],
    }


def revisit_losses(auc: Sequence[float], definitions: Sequence[int]) -> dict[int, list[float]]:
    """Per visit number n >= 2: AUC(first visit) - AUC(n-th visit) of every definition visited n
    times, for one run's per-task ``auc`` [K]."""
    visits: dict[int, list[int]] = {}
    for k, d in enumerate(definitions):
        visits.setdefault(d, []).append(k)
    out: dict[int, list[float]] = {}
    for positions in visits.values():
        for n, k in enumerate(positions[1:], start=2):
            out.setdefault(n, []).append(float(auc[positions[0]] - auc[k]))
    return out


def _revisit_section(p: Pairs, auc_none: np.ndarray) -> dict[str, Any] | None:
    per_seed = [revisit_losses(row, p.definitions) for row in auc_none]
    if not per_seed[0]:
        return None
    by_visit = [{"visit": n, **_with_ci("mean", [np.mean(losses[n]) for losses in per_seed])}
                for n in sorted(per_seed[0])]
    overall = [np.mean([v for values in losses.values() for v in values]) for losses in per_seed]
    return {"by_visit": by_visit, **_with_ci("mean", overall)}


def plasticity_loss(p: Pairs) -> dict[str, Any]:
    """PR_k per task, PR mean over k >= 1 and PR trend, AUC gap, revisit AUC loss (see module doc)."""
    auc_none = _array(p.none, lambda r: r["metrics"]["auc_per_task"])  # [S, K]
    auc_scratch = _array(p.scratch, lambda r: r["metrics"]["auc_per_task"])  # [S, K]
    pr = np.array([metrics.plasticity_ratio_per_task(n, s) for n, s in zip(auc_none, auc_scratch)])  # [S, K]
    later = slice(1, None)
    pr_mean = [metrics.nan_mean(row[later]) if row[later].size else np.nan for row in pr]
    auc_gap = [float(np.mean(row)) if row.size else np.nan for row in (auc_scratch - auc_none)[:, later]]
    auc_ratio = (metrics.plasticity_ratio_per_task(auc_none[:, later].mean(axis=1), auc_scratch[:, later].mean(axis=1))
                 if len(p.tasks) > 1 else np.full(len(p.seeds), np.nan))  # [S]
    per_task = [{
        "task": t, "auc_none": _num(auc_none[:, k].mean()), "auc_scratch": _num(auc_scratch[:, k].mean()),
        "pr": _seed_mean(pr[:, k]),
    } for k, t in enumerate(p.tasks)]
    return {
        "per_task": per_task,
        **_with_ci("pr_mean", pr_mean),
        **_with_ci("pr_trend", [metrics.trend(row) for row in pr]),
        **_with_ci("auc_gap", auc_gap),
        **_with_ci("auc_ratio", auc_ratio),
        "revisit_auc_loss": _revisit_section(p, auc_none),
    }


def _probe_of(record: Mapping[str, Any], n_tasks: int) -> Mapping[str, Any]:
    probe = record["plasticity_probe"]
    try:
        ok = all(len(probe["per_task"][part]) == n_tasks for part in PROBE_PARTS) and all(
            part in probe["fresh"] for part in PROBE_PARTS)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ValidityError(f"{_label(record)}: plasticity_probe needs fresh.{{agent,q_tot,total}} and "
                            f"per_task.{{agent,q_tot,total}} with {n_tasks} values")
    return probe


def probe(p: Pairs) -> dict[str, Any] | None:
    """The trainability probe of the ``none`` records that carry one, or None if none does.

    Per task the mean over seeds of each part's share, the fresh network's share, the ratio
    learner / fresh of ``total`` (per seed, then averaged), and the slope of ``total`` over tasks.
    """
    carrying = [(seed, r) for seed, r in zip(p.seeds, p.none) if r.get("plasticity_probe")]
    if not carrying:
        return None
    probes = [_probe_of(r, len(p.tasks)) for _, r in carrying]
    per_task = {part: np.array([pr["per_task"][part] for pr in probes], dtype=float) for part in PROBE_PARTS}  # [S, K]
    fresh = {part: np.array([pr["fresh"][part] for pr in probes], dtype=float) for part in PROBE_PARTS}  # [S]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(fresh["total"][:, None] > 0, per_task["total"] / fresh["total"][:, None], np.nan)  # [S, K]
    rows = [{"task": t, **{part: _num(per_task[part][:, k].mean()) for part in PROBE_PARTS},
             "ratio": _seed_mean(ratio[:, k])} for k, t in enumerate(p.tasks)]
    return {
        "seeds": [seed for seed, _ in carrying],
        "steps": probes[0].get("steps"), "lr": probes[0].get("lr"),
        "fresh": {part: _num(fresh[part].mean()) for part in PROBE_PARTS},
        "per_task": rows,
        **_with_ci("total_slope", [metrics.trend(row) for row in per_task["total"]]),
    }


# --- the verdict -----------------------------------------------------------------------------------

def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    text = "n/a" if value is None else f"{value:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def verdict(n_seeds: int, n_tasks: int, inter: Mapping[str, Any], learn: Mapping[str, Any],
            loss: Mapping[str, Any]) -> dict[str, str]:
    """{verdict, reason} from the sections (rules in the module docstring)."""
    def result(which: str, reason: str) -> dict[str, str]:
        return {"verdict": which, "reason": reason}

    if n_seeds < MIN_SEEDS:
        return result(INCONCLUSIVE, f"needs >= {MIN_SEEDS} seeds (has {n_seeds} paired)")
    if n_tasks < 2:
        return result(INCONCLUSIVE, "needs >= 2 tasks")
    unlearned = learn["not_learned"]
    if inter["mean_gap"] is not None and inter["mean_gap"] < MIN_INTERFERENCE_GAP:
        also = (f"; scratch alone does not learn {len(unlearned)} of {n_tasks} tasks ({', '.join(unlearned)})"
                if unlearned else "")
        return result(DOES_NOT_SHOW, f"consecutive tasks share their optimal behaviour: interference gap "
                                     f"{_fmt(inter['mean_gap'], inter['mean_gap_ci95'])} < {MIN_INTERFERENCE_GAP}"
                                     + also)
    if len(unlearned) > MAX_UNLEARNED_SHARE * n_tasks:
        return result(INCONCLUSIVE, f"scratch does not learn the tasks within the budget: final score < "
                                    f"{LEARNABLE_SCORE} on {len(unlearned)} of {n_tasks} tasks "
                                    f"({', '.join(unlearned)})")
    ratio, ratio_ci = loss["auc_ratio"], loss["auc_ratio_ci95"]
    revisit = loss["revisit_auc_loss"]
    ratio_text = f"AUC ratio {_fmt(ratio, ratio_ci)}"
    revisit_text = "" if revisit is None else f"revisit AUC loss {_fmt(revisit['mean'], revisit['mean_ci95'])}"
    evidence = []
    if ratio_ci is not None and ratio_ci[1] < NO_LOSS_PR:
        evidence.append(f"none learns later tasks more slowly than scratch: {ratio_text} (95% CI below {NO_LOSS_PR:g})")
    if revisit is not None and revisit["mean_ci95"] is not None and revisit["mean_ci95"][0] > 0:
        evidence.append(f"revisits are learned more slowly than first visits: {revisit_text} (95% CI above 0)")
    if evidence:
        return result(SHOWS, "; ".join(evidence))
    if ratio_ci is not None and ratio_ci[0] >= NO_LOSS_PR_LOW:
        return result(DOES_NOT_SHOW, f"none learns later tasks as fast as scratch: {ratio_text}")
    if ratio_ci is None:
        why = f"{ratio_text}: undefined without a scratch mean AUC > 0 over the tasks after the first in >= 2 seeds"
    else:
        why = f"{ratio_text}: the 95% CI neither lies below {NO_LOSS_PR:g} nor starts at >= {NO_LOSS_PR_LOW}"
    return result(INCONCLUSIVE, why + (f"; {revisit_text}" if revisit_text else ""))


# --- the analysis ----------------------------------------------------------------------------------

def analyse(none_records: Sequence[Mapping[str, Any]], scratch_records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The validity evidence of one scenario tier and learner from its ``none`` and ``reset_all``
    run records (plain data, deterministic; see the module docstring). ValidityError when the
    records are of different scenarios, learners or tasks, malformed, or share no seed."""
    p = pair(none_records, scratch_records)
    inter, learn, loss = interference(p), learnability(p), plasticity_loss(p)
    return {
        "scenario": dict(p.scenario),
        "learner": p.learner,
        "seeds": list(p.seeds),
        "unpaired_seeds": p.unpaired,
        "tasks": list(p.tasks),
        "task_definition": list(p.definitions),
        "interference": inter,
        "learnability": learn,
        "plasticity_loss": loss,
        "probe": probe(p),
        "verdict": verdict(len(p.seeds), len(p.tasks), inter, learn, loss),
        "thresholds": {
            "min_seeds": MIN_SEEDS, "learned_score": LEARNED_SCORE, "learnable_score": LEARNABLE_SCORE,
            "max_unlearned_share": MAX_UNLEARNED_SHARE, "min_interference_gap": MIN_INTERFERENCE_GAP,
            "no_loss_pr": NO_LOSS_PR, "no_loss_pr_low": NO_LOSS_PR_LOW, "loss_statistic": "auc_ratio",
        },
    }


# --- the table -------------------------------------------------------------------------------------

def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci_cell(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Indented text columns: the first left-aligned, the others right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("  " + "  ".join(padded)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _render_interference(inter: Mapping[str, Any]) -> list[str]:
    rows = [[f"{r['from']} → {r['to']}", _cell(r["expert_on_next"]), _cell(r["none_on_next"]),
             _cell(r["reachable"]), _cell(r["gap"]), _ci_cell(r["gap_ci95"])] for r in inter["pairs"]]
    return [f"Interference (expert = {SCRATCH_METHOD} after task k, on k+1; gap = reachable − max(expert_on_next, "
            f"none_on_next), reachable = max of both methods' final on k+1)",
            *_table(["pair", "expert_on_next", "none_on_next", "reachable", "gap", "gap 95% CI"], rows),
            f"  mean gap {_fmt(inter['mean_gap'], inter['mean_gap_ci95'])}"]


def _render_learnability(learn: Mapping[str, Any]) -> list[str]:
    rows = [[r["task"], _cell(r["final"]), _cell(r["auc"])] for r in learn["per_task"]]
    summary = f"  learned (final ≥ {LEARNED_SCORE}): {_fmt(learn['learned_share'])} of tasks"
    if learn["not_learned"]:
        summary += f"; final < {LEARNABLE_SCORE}: {', '.join(learn['not_learned'])}"
    return [f"Learnability ({SCRATCH_METHOD}, mean over seeds)", *_table(["task", "final", "AUC"], rows), summary]


def _render_plasticity_loss(loss: Mapping[str, Any]) -> list[str]:
    rows = [[r["task"], _cell(r["auc_none"]), _cell(r["auc_scratch"]), _cell(r["pr"])] for r in loss["per_task"]]
    lines = [f"Plasticity loss (PR_k = AUC_k({NONE_METHOD}) / AUC_k({SCRATCH_METHOD}))",
             *_table(["task", "AUC none", "AUC scratch", "PR"], rows),
             f"  PR mean over k ≥ 1 {_fmt(loss['pr_mean'], loss['pr_mean_ci95'])}; "
             f"PR trend {_fmt(loss['pr_trend'], loss['pr_trend_ci95'])}; "
             f"AUC gap {_fmt(loss['auc_gap'], loss['auc_gap_ci95'])}",
             f"  AUC ratio (mean AUC over k ≥ 1, {NONE_METHOD} / {SCRATCH_METHOD}; the verdict's statistic) "
             f"{_fmt(loss['auc_ratio'], loss['auc_ratio_ci95'])}"]
    revisit = loss["revisit_auc_loss"]
    if revisit is not None:
        visits = [f"visit {r['visit']} {_fmt(r['mean'], r['mean_ci95'])}" for r in revisit["by_visit"]]
        lines.append(f"  revisit AUC loss (first − n-th visit, {NONE_METHOD}): " + "; ".join(visits)
                     + f"; overall {_fmt(revisit['mean'], revisit['mean_ci95'])}")
    return lines


def _render_probe(probe_result: Mapping[str, Any]) -> list[str]:
    rows = [[r["task"], _cell(r["agent"]), _cell(r["q_tot"]), _cell(r["total"]), _cell(r["ratio"])]
            for r in probe_result["per_task"]]
    fresh = probe_result["fresh"]
    return [f"Probe (share of a random-target loss removed in {probe_result['steps']} steps, lr {probe_result['lr']}; "
            f"seeds {', '.join(str(s) for s in probe_result['seeds'])})",
            *_table(["task", "agent", "q_tot", "total", "total / fresh"], rows),
            f"  fresh network: agent {_fmt(fresh['agent'])}, q_tot {_fmt(fresh['q_tot'])}, "
            f"total {_fmt(fresh['total'])}; slope of total {_fmt(probe_result['total_slope'], probe_result['total_slope_ci95'])}"]


def render(result: Mapping[str, Any]) -> str:
    """The plain-text report of :func:`analyse`'s result: one block per section, then the verdict."""
    s = result["scenario"]
    lines = [f"{s['name']}-v{s['version']} · {s['tier']} · {result['learner']} — seeds "
             + ", ".join(str(seed) for seed in result["seeds"])]
    unpaired = {method: seeds for method, seeds in result["unpaired_seeds"].items() if seeds}
    if unpaired:
        lines.append("unpaired (not used): " + "; ".join(f"{m} seeds {seeds}" for m, seeds in unpaired.items()))
    lines += ["", *_render_interference(result["interference"]), "", *_render_learnability(result["learnability"]),
              "", *_render_plasticity_loss(result["plasticity_loss"])]
    if result["probe"] is not None:
        lines += ["", *_render_probe(result["probe"])]
    verdict_ = result["verdict"]
    lines += ["", f"Verdict: {verdict_['verdict']} — {verdict_['reason']}"]
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------------

def validity_filename(result: Mapping[str, Any]) -> str:
    """``<scenario>-v<version>_<tier>.yaml`` for qmix, ``..._<learner>.yaml`` for another learner."""
    s = result["scenario"]
    suffix = "" if result["learner"] == "qmix" else f"_{result['learner']}"
    return f"{s['name']}-v{s['version']}_{s['tier']}{suffix}.yaml"


def write(result: Mapping[str, Any], out: Path | str = DEFAULT_OUT) -> Path:
    """Write ``result`` as YAML into the folder ``out`` (atomically); return the path."""
    from ctmarl.record import write_yaml_atomic

    return write_yaml_atomic(dict(result), Path(out) / validity_filename(result))


def find_records(records_dir: Path | str, name: str, version: int, tier: str, learner: str,
                 seeds: Sequence[int]) -> tuple[dict[str, dict[int, dict[str, Any]]], list[str]]:
    """The ``none`` and ``reset_all`` records of one scenario tier and learner at ``seeds``, found in
    ``records_dir`` and its sub-folders under the names ``ctmarl evaluate`` gives them
    (:func:`ctmarl.record.record_filename`) and checked on content: scenario name, version, tier,
    learner, method and seed must match and the method must have no ``variant``. The scenario's
    definition hash is not compared (older records of the same version count).

    Returns ({method: {seed: record}}, notes on files passed over).
    """
    from ctmarl.record import load_record

    records_dir = Path(records_dir)
    found: dict[str, dict[int, dict[str, Any]]] = {NONE_METHOD: {}, SCRATCH_METHOD: {}}
    notes: list[str] = []
    if not records_dir.is_dir():
        return found, notes
    for method in found:
        for seed in seeds:
            filename = f"{name}-v{version}_{tier}_{learner}_{method}_seed{seed}.yaml"
            for path in sorted(records_dir.rglob(filename)):
                try:
                    record = load_record(path)
                except RecordError as exc:
                    notes.append(f"{path}: skipped: {exc}")
                    continue
                s, m = record["scenario"], record["method"]
                if ((s["name"], s["version"], s["tier"], record["learner"]["name"], m["name"], record["seed"])
                        != (name, version, tier, learner, method, seed) or m.get("variant")):
                    notes.append(f"{path}: skipped: its content is another run ({record_label(record)})")
                    continue
                found[method].setdefault(seed, record)
    return found, notes


def record_label(record: Mapping[str, Any]) -> str:
    s, m = record["scenario"], record["method"]
    variant = f"-{m['variant']}" if m.get("variant") else ""
    return (f"{s['name']}-v{s['version']} {s['tier']} {record['learner']['name']}+{m['name']}{variant} "
            f"seed {record['seed']}")


def missing_seeds(found: Mapping[str, Mapping[int, Any]], seeds: Sequence[int]) -> dict[str, list[int]]:
    """Per method, the seeds of ``seeds`` without a record in ``found``."""
    return {method: [s for s in seeds if s not in found[method]] for method in found}


def plan_missing(scenario: str, tier: str, learner: str, missing: Mapping[str, Sequence[int]], out: Path,
                 device: str = "cpu") -> list:
    """The sweep runs (:class:`ctmarl.sweep.PlannedRun`, validated, indexed 0..n-1) that make the
    ``missing`` records ({method: seeds}) in ``out``."""
    import dataclasses

    from ctmarl.sweep import SweepSpec, plan

    runs = []
    for method, seeds in missing.items():
        if seeds:
            spec = SweepSpec(scenarios=(scenario,), algos=(method,), tiers=(tier,), learners=(learner,),
                             seeds=tuple(seeds), device=device)
            runs += plan(spec, Path(out))
    return [dataclasses.replace(run, index=i) for i, run in enumerate(runs)]
