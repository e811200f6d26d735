"""Run records -> the leaderboard (DESIGN.md §9): ``build`` writes it, ``check`` verifies it in CI.

Layout (``ctmarl leaderboard build`` and ``check`` default to the folder ``leaderboard/``)::

    leaderboard/
      records/           committed run records (YAML from ``ctmarl evaluate``; sub-folders allowed)
      leaderboard.yaml   generated: one entry per (scenario, version, tier, learner, method)
      LEADERBOARD.md     generated: one table per (scenario, version, tier, learner)
      plots/             generated: IQM of AUC with its 95% CI per method, one PNG per table

**Admission.** Every ``*.yaml`` under ``records/`` must be a run record that passes all of these,
or the build fails naming the file (nothing is skipped silently; any other file but a
``README.md`` or a dotfile is an error too):

- it loads and validates (:func:`ctmarl.record.load_record`): schema version, required keys and
  the type of every field (a bool is not a number, a seed is an integer), ``content_hash`` over
  the content and ``config_hash`` over scenario/learner/method/seed; every score in curves, R and
  metrics within [0, 1] (forgetting within [-1, 1]) and finite; curves consistent (columns of one
  length, tasks 0..K-1 in order each evaluated, env steps never decreasing, R K x K with R[k][k]
  task k's last evaluation, K = len(tasks)); and every stored metric equal, within 2e-6 (records
  keep 6 decimals), to its recomputation from curves and R
  (:meth:`ctmarl.protocol.RunResult.summary`). ``content_hash`` is a plain sha256 anyone can
  recompute, so it only catches careless edits; the recomputation is what catches edited metrics;
- its file name is the one ``ctmarl evaluate`` gives it (:func:`ctmarl.record.record_filename`);
- provenance: ``git_commit`` is a full 40-hex commit and ``git_dirty`` is exactly ``false``. The
  commit is not looked up in the repository: CI clones may be shallow and a submitter's commit may
  live in a fork; a clean, named commit is what makes the run re-creatable;
- the method's code (``provenance.method``, :mod:`ctmarl.source`): a *reference* method (entry
  point in a package of :data:`REFERENCE_PACKAGES`, i.e. shipped in the ``ctmarl`` distribution
  and covered by ``provenance.git_commit``) may lack the block, so records made before it existed
  stay admitted; any other method must have it. When present: ``git_dirty`` must not be ``true``
  (the method's package had modified or untracked files). A non-reference method must, besides,
  come from a named commit (``git_commit`` 40-hex and ``git_dirty: false``) or, outside a git
  work tree, from an installed distribution with a version; and its ``source_sha256`` must equal
  the hash re-derived from the plug-in installed now (so ``build`` and ``check`` need it
  installed). A reference method's hash is not compared: its code legitimately changes between
  ctmarl commits, which ``git_commit`` names and ``check`` re-runs;
- the method contract (``contract``, :mod:`ctmarl.contract`): clean and guarded; a reference
  method's record made before runs carried it may lack it, a plug-in's may not;
- its scenario is a standard scenario (``name-vN`` in the registry), with the same definition
  hash as the current definition, and its learner is the registered one with exactly the
  hyperparameters the scenario's tier prescribes, and its method is a registered name (not the
  ``package.module:Class`` form) whose installed entry point is the record's and whose shipped
  defaults are the record's config (no ``method.variant``, whatever keys the record carries): no
  entry is scored on a private variant; its ``tasks`` are the tier's tasks and each has the
  scenario's ``evals_per_task`` evaluations.
No two records may be the same run (same scenario, version, tier, learner, method and seed), and
all records of one entry must share the method's entry point and config: to compare configs,
register the variant under its own method name.

**Entries.** Records are grouped by (scenario, version, tier, learner, method); versions, tiers and
learners never mix. Every number is computed from the records' curves and R, never read from their
stored ``metrics`` (which admission only checks against the recomputation). Per entry, with
``scores`` the ``[seeds, tasks]`` array of per-task AUC_k:

- ``auc_iqm``: IQM of ``scores`` (:func:`ctmarl.stats.iqm`), ``auc_iqm_ci95``: its 95% percentile
  stratified-bootstrap CI (10 000 resamples, seed 0; ``n/a`` with one seed);
- ``auc_mean`` and ``performance_mean``: means over seeds of the records' AUC and performance;
- ``forgetting``: the mean over seeds of each record's mean forgetting (it needs no reference run;
  ``n/a`` for a single-task scenario);
- ``plasticity_ratio``: the mean over seeds of mean_k PR_k against the ``reset_all`` record of the
  same scenario, version, tier, learner *and seed*. If any seed of the entry lacks its
  ``reset_all`` record the entry says ``n/a: no reset_all record for seed(s) ...`` instead of
  averaging over a different set of seeds than the AUC;
- ``probability_of_improvement_over_none``: P(X > Y) of this entry's runs over the ``none``
  entry's runs of the same scenario, version, tier and learner (:func:`ctmarl.stats.
  probability_of_improvement`; different seed counts are fine; ``none`` itself scores 0.5);
- ``records``: file and ``content_hash`` of every record it came from.
Entries with at least :data:`MIN_RANKED_SEEDS` seeds are ranked within their table by ``auc_iqm``
(ties share a rank); entries with fewer are listed after them with ``rank: null`` and an
``unranked`` reason. Tables of the smoke tier (:data:`UNRANKED_TIERS`) are kept, since ``check``
re-runs their records, but never ranked: their entries are ``unranked_entries`` in
leaderboard.yaml and sit in a separate "Unranked" section at the end of LEADERBOARD.md. Numbers
are rounded to 4 decimals, so a rebuild on another machine gives the same text.

**Check** (:func:`check`, run by ``.ci/run``): admit every record, rebuild in memory, fail naming
the first difference if the committed ``leaderboard.yaml`` or ``LEADERBOARD.md`` differs (so no
number can be typed in by hand), check that the plots they link exist (their bytes are not
compared), then re-run a sample of smoke-tier records and compare (:func:`reproduce`).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctmarl import stats, validity
from ctmarl import claims as paper_claims
from ctmarl.aggregate import aggregate as cross_scenario_aggregate
from ctmarl.config import from_mapping, to_plain
from ctmarl.errors import CtmarlError, RecordError, shorten
from ctmarl.record import load_record, record_filename, with_recomputed_metrics, write_text_atomic
from ctmarl.report import SCRATCH_METHOD, continual_summary, find_scratch
from ctmarl.scenario import TIER_NAMES

#: 2: smoke-tier entries moved to ``unranked_entries``; one-seed entries have ``rank: null``.
SCHEMA_VERSION = 2
RECORDS_DIR = "records"
YAML_NAME = "leaderboard.yaml"
MARKDOWN_NAME = "LEADERBOARD.md"
PLOTS_DIR = "plots"
#: The reference every entry's probability of improvement is measured against.
BASELINE_METHOD = "none"
#: Methods every table is measured against, shown apart and never ranked.
REFERENCE_METHODS = (BASELINE_METHOD, SCRATCH_METHOD)
#: Tiers whose tables are listed but never ranked: smoke runs exist so that ``check`` can re-run
#: them, and are too short to measure anything.
UNRANKED_TIERS = ("smoke",)
#: An entry needs this many seeds for a rank (one seed has no confidence interval).
MIN_RANKED_SEEDS = 2
#: Decimal places of the numbers in the generated files.
DECIMALS = 4
#: Files under records/ that are not records.
IGNORED_FILES = ("README.md",)
#: Live logs ``ctmarl evaluate`` writes beside a record (ctmarl.runlog): skipped, never admitted.
LOG_SUFFIXES = (".progress.csv",)
LOG_FOLDER_SUFFIXES = (".tb",)
LOG_FOLDERS = ("wandb",)
#: A smoke record re-run by ``check`` matches if every number is within this of the record's:
#: records keep 6 decimals, so a last-bit difference before rounding moves the 6th decimal by one.
REPRODUCE_TOLERANCE = 1.5e-6
#: Packages of the ``ctmarl`` distribution that hold reference methods: their records are covered
#: by ``provenance.git_commit`` and need no ``provenance.method`` block (see Admission above).
REFERENCE_PACKAGES = ("ctmarl_baselines",)
#: Record fields ``check`` compares after re-running a smoke record (numbers within the
#: tolerance, everything else equal). The neuron log is a measurement aid, not a score: not compared.
REPRODUCED_FIELDS = ("config_hash", "tasks", "curves", "R", "R_return", "metrics", "method_summary")

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEADER = (
    "# Generated by `ctmarl leaderboard build` from the run records in records/. Do not edit:\n"
    "# `ctmarl leaderboard check` (run in CI) rebuilds this file and fails on any difference.\n"
)


class LeaderboardError(CtmarlError):
    """The committed leaderboard does not match its records, or a record does not reproduce."""


# --- admission -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admitted:
    """A record admitted to the leaderboard, with its path relative to the records folder.

    ``record`` is the record as loaded except that its metrics are recomputed from its curves and
    R (:func:`ctmarl.record.with_recomputed_metrics`): every number on the leaderboard comes from
    them. (:func:`admit` does that; hand-built instances in tests carry their own metrics.)"""

    file: str
    record: dict[str, Any]

    @property
    def key(self) -> tuple[str, int, str, str, str]:
        """(scenario, version, tier, learner, method): the entry the record belongs to."""
        s = self.record["scenario"]
        return (s["name"], s["version"], s["tier"], self.record["learner"]["name"], self.record["method"]["name"])

    @property
    def seed(self) -> int:
        return self.record["seed"]


def record_files(records_dir: Path) -> list[Path]:
    """Every file under ``records_dir`` that must be a record, sorted; rejects strays."""
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        raise RecordError(f"{records_dir}: records folder does not exist")
    files = []
    for path in sorted(records_dir.rglob("*")):
        relative = path.relative_to(records_dir)
        if path.is_dir() or path.name in IGNORED_FILES or any(p.startswith(".") for p in relative.parts):
            continue
        if path.name.endswith(LOG_SUFFIXES) or any(
                p in LOG_FOLDERS or p.endswith(LOG_FOLDER_SUFFIXES) for p in relative.parts[:-1]):
            continue
        if path.suffix != ".yaml":
            raise RecordError(f"{path}: not a run record (records are the .yaml files ctmarl evaluate writes)")
        files.append(path)
    return files


def check_provenance(record: Mapping[str, Any], where: str) -> None:
    """A record must come from a named, clean commit (see the module docstring)."""
    prov = record["provenance"]
    if not isinstance(prov, Mapping):
        raise RecordError(f"{where}: provenance is not a mapping")
    commit, dirty = prov.get("git_commit"), prov.get("git_dirty")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise RecordError(f"{where}: provenance has no git commit (git_commit: {commit!r}): run "
                          "ctmarl evaluate from a git checkout of ctmarl")
    if dirty is not False:
        state = "uncommitted changes" if dirty else "an unknown working-tree state"
        raise RecordError(f"{where}: made from a working tree with {state} (git_dirty: {dirty!r}) at "
                          f"{commit[:12]}: commit everything, then re-run it")


def _is_reference(entry_point: str) -> bool:
    """Whether the method at ``entry_point`` ships in the ``ctmarl`` distribution."""
    return entry_point.partition(":")[0].split(".")[0] in REFERENCE_PACKAGES


def check_method_source(record: Mapping[str, Any], where: str, installed: dict[Any, Any] | None = None) -> None:
    """The method's code is identified and unchanged (see the module docstring). ``installed``
    caches re-derived source hashes by entry point across records."""
    from ctmarl.source import source_files, source_hash

    entry_point = record["method"]["entry_point"]
    reference = _is_reference(entry_point)
    block = record["provenance"].get("method")
    if block is None:
        if reference:
            return
        raise RecordError(f"{where}: provenance.method is missing: a plug-in method's record must say which code "
                          f"it ran ({entry_point}); re-run it with this ctmarl version")
    field = "provenance.method"
    recorded = block.get("source_sha256")
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        raise RecordError(f"{where}: {field}.source_sha256 is not a sha256 hex digest: {shorten(repr(recorded), 80)}")
    commit, dirty = block.get("git_commit"), block.get("git_dirty")
    if dirty is True:
        raise RecordError(f"{where}: {field}.git_dirty is true: the method's package {block.get('package')!r} had "
                          f"modified or untracked files at {str(commit)[:12]}; commit them, then re-run it")
    if reference:
        return
    if dirty is False:
        if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
            raise RecordError(f"{where}: {field}.git_commit is not a full commit: {shorten(repr(commit), 80)}")
    elif not (isinstance(block.get("distribution"), str) and isinstance(block.get("version"), str)):
        raise RecordError(f"{where}: {field}: the method's code is neither in a git commit (git_dirty: "
                          f"{dirty!r}) nor in an installed distribution with a version; commit or package it, "
                          "then re-run it")
    installed = {} if installed is None else installed
    if entry_point not in installed:
        try:
            found = source_files(entry_point)
            installed[entry_point] = "" if found is None else source_hash(found[2])
        except Exception as exc:  # importing a plug-in runs its code: any error leaves it unchecked
            raise RecordError(f"{where}: cannot load method {entry_point} to re-derive {field}.source_sha256 "
                              f"({exc}); install the plug-in") from None
    if installed[entry_point] != recorded:
        raise RecordError(f"{where}: {field}.source_sha256 differs from the installed method's (recorded "
                          f"{recorded[:12]}, installed {installed[entry_point][:12]}): its code changed since the "
                          f"run; install the version it ran ({block.get('distribution')} {block.get('version')}"
                          f"{' at ' + commit[:12] if isinstance(commit, str) else ''}) or re-run it")


def check_method_identity(method: Mapping[str, Any], where: str, cache: dict[Any, Any]) -> None:
    """The record's method is the installed one: its entry point is the one its name resolves to
    and its config the method's shipped defaults, whatever else the record says (a deleted
    ``variant`` key); a registered method's ``package.module:Class`` form is refused (its runs
    are the name's). ``cache`` keeps each name's answer across records."""
    from ctmarl.method import canonical_method_name, make_method
    from ctmarl.registry import METHODS

    name = method["name"]
    if ":" in name and canonical_method_name(name) != name:
        raise RecordError(f"{where}: method {name!r} is the class form of the registered method "
                          f"{canonical_method_name(name)!r}; its runs count under that name: re-run it with "
                          f"--algo {canonical_method_name(name)}")
    # An unregistered class (``package.module:Class``) is its own entry point, its defaults its
    # Config's: the same rule holds.
    key = ("method", name)
    if key not in cache:
        try:
            cache[key] = (METHODS.entry_point(name), to_plain(make_method(name).config))
        except CtmarlError as exc:
            cache[key] = exc
    if isinstance(cache[key], CtmarlError):
        raise RecordError(f"{where}: {cache[key]}") from None
    entry_point, shipped = cache[key]
    if method["entry_point"] != entry_point:
        raise RecordError(f"{where}: method {name!r} ran from {shorten(repr(method['entry_point']), 80)}, not the "
                          f"installed {entry_point}")
    if method["config"] != shipped:
        config = method["config"] if isinstance(method["config"], Mapping) else {}
        differing = sorted(map(str, set(shipped) | set(config)), key=str)
        differing = [k for k in differing if config.get(k, _MISSING) != shipped.get(k, _MISSING)]
        raise RecordError(f"{where}: the config of method {name!r} differs from its shipped defaults "
                          f"({shorten(', '.join(differing) or 'its type', 120)}); to rank a variant, register it under "
                          "its own method name with those defaults")


_MISSING = object()


def check_contract(record: Mapping[str, Any], where: str) -> None:
    """The run kept the method contract as ``ctmarl evaluate`` checked it (:mod:`ctmarl.contract`):
    ``contract.clean`` is true and the learner was guarded. A reference method's record made
    before runs carried ``contract`` is admitted without it (``validate-method`` checks the
    reference methods in CI); a plug-in's never is."""
    entry_point = record["method"]["entry_point"]
    reference = _is_reference(entry_point)
    contract = record.get("contract")
    if contract is None:
        if reference:
            return
        raise RecordError(f"{where}: contract is missing: a plug-in method's record must carry the outcome of the "
                          "method contract that ctmarl evaluate checks as the run goes; re-run it with this ctmarl "
                          "version")
    if contract.get("clean") is not True or contract.get("guarded") is not True:
        raise RecordError(f"{where}: contract: the run's method contract is not clean (clean: "
                          f"{shorten(repr(contract.get('clean')), 20)}, guarded: "
                          f"{shorten(repr(contract.get('guarded')), 20)}); only runs whose every hook call was "
                          "checked are ranked")


def check_standard_config(record: Mapping[str, Any], where: str, cache: dict[Any, Any] | None = None) -> None:
    """The record's scenario and learner are the standard ones, unmodified, and its method is the
    installed one with its shipped defaults (no ``variant``, :func:`check_method_identity`)."""
    from ctmarl.registry import LEARNERS
    from ctmarl.scenario import make_scenario

    s = record["scenario"]
    scenario_id = f"{s['name']}-v{s['version']}"
    try:
        scenario = make_scenario(scenario_id)
    except CtmarlError as exc:
        raise RecordError(f"{where}: scenario {scenario_id} is not a standard scenario ({exc})") from None
    if s["definition_hash"] != scenario.definition_hash:
        raise RecordError(f"{where}: scenario {scenario_id} was run from a different definition than the "
                          f"standard one in {scenario.source} (definition_hash differs)")
    if s["tier"] not in TIER_NAMES:
        raise RecordError(f"{where}: unknown tier {s['tier']!r}; known: {', '.join(TIER_NAMES)}")
    method = record["method"]
    if method.get("variant"):
        raise RecordError(f"{where}: method {method['name']!r} ran with a config other than its shipped "
                          f"defaults (variant {method['variant']}); to rank a variant, register it under "
                          "its own method name with those defaults")
    check_method_identity(method, where, {} if cache is None else cache)
    learner = record["learner"]
    try:
        entry_point = LEARNERS.entry_point(learner["name"])
        cls = LEARNERS.load(learner["name"])
    except CtmarlError as exc:
        raise RecordError(f"{where}: {exc}") from None
    if learner["entry_point"] != entry_point:
        raise RecordError(f"{where}: learner {learner['name']!r} ran from {learner['entry_point']}, "
                          f"not the registered {entry_point}")
    tier = scenario.tier(s["tier"])
    task_names = [task.name for task in scenario.tasks(s["tier"])]
    if record["tasks"] != task_names:
        raise RecordError(f"{where}: tasks {shorten(record['tasks'])} are not the tasks of {scenario_id} "
                          f"{s['tier']} ({shorten(task_names)})")
    evals = scenario.protocol.evals_per_task
    counts = Counter(record["curves"]["task"])
    for k, name in enumerate(task_names):
        if counts[k] != evals:
            raise RecordError(f"{where}: curves: task {k} ({name}) has {counts[k]} evaluations; {scenario_id} "
                              f"makes {evals} per task")
    expected = to_plain(from_mapping(cls.Config, dict(tier.learner), f"{scenario.source}: tiers.{s['tier']}.learner"))
    if learner["config"] != expected:
        differing = sorted(k for k in set(expected) | set(learner["config"])
                           if learner["config"].get(k) != expected.get(k))
        raise RecordError(f"{where}: learner config differs from what {scenario_id} {s['tier']} prescribes "
                          f"({', '.join(differing)})")


def admit(path: Path, records_dir: Path, installed: dict[Any, Any] | None = None) -> Admitted:
    """Load ``path`` and apply every admission rule; raise RecordError naming the file. The
    admitted record's metrics are the ones recomputed from its curves and R. ``installed``: see
    :func:`check_method_source`."""
    record = load_record(path)
    where = str(path)
    expected_name = record_filename(record)
    if path.name != expected_name:
        raise RecordError(f"{where}: named {path.name}, but its content is the run {expected_name}")
    check_provenance(record, where)
    # The registered method first: a record naming other code (os:system) is refused before any
    # of that code is imported to hash it.
    check_standard_config(record, where, installed)
    check_method_source(record, where, installed)
    check_contract(record, where)
    return Admitted(path.relative_to(records_dir).as_posix(), with_recomputed_metrics(record))


def admit_all(records_dir: Path) -> list[Admitted]:
    """Every record under ``records_dir``, admitted, with duplicates and mixed configs rejected."""
    records_dir = Path(records_dir)
    installed: dict[Any, Any] = {}
    admitted = [admit(path, records_dir, installed) for path in record_files(records_dir)]
    runs: dict[tuple, Admitted] = {}
    for item in admitted:
        run_key = (*item.key, item.seed)
        if run_key in runs:
            raise RecordError(f"{records_dir / item.file}: the same run as {records_dir / runs[run_key].file}")
        runs[run_key] = item
    # One entry is one config: every record's entry point and config equal the installed method's
    # (check_method_identity), so the records of an entry cannot differ in them.
    return admitted


# --- statistics per entry --------------------------------------------------------------------

def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def auc_scores(items: Iterable[Admitted]) -> np.ndarray:
    """The ``[seeds, tasks]`` array of per-task AUC_k, rows in the order given."""
    return np.array([item.record["metrics"]["auc_per_task"] for item in items], dtype=float)


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _plasticity_ratio(items: list[Admitted], pool: list[Admitted]) -> float | str:
    values = []
    missing = []
    for item in items:
        scratch = find_scratch(item.record, [p.record for p in pool])
        if scratch is None:
            missing.append(item.seed)
            continue
        ratio = continual_summary(item.record, scratch)["plasticity_ratio"]
        if isinstance(ratio, str):
            return f"{ratio} (seed {item.seed})"
        values.append(ratio)
    if missing:
        return f"n/a: no {SCRATCH_METHOD} record for seed(s) {_seed_list(missing)}"
    return float(np.mean(values))


def _forgetting(items: list[Admitted]) -> float | str:
    values = [item.record["metrics"]["forgetting"] for item in items]
    if any(v is None for v in values):
        return "n/a: single-task scenario"
    return float(np.mean(values))


def _retention(items: list[Admitted]) -> float:
    """Mean over seeds of mean_j R[K-1][j]: the score on every task after the last one."""
    return float(np.mean([np.mean(item.record["R"][-1]) for item in items]))


def entry_statistics(items: list[Admitted], pool: list[Admitted], baseline: list[Admitted] | None) -> dict[str, Any]:
    """The numbers of one entry (``items``, sorted by seed); ``pool`` = the records of its table
    (for the scratch reference), ``baseline`` = the ``none`` entry's records or None."""
    scores = auc_scores(items)
    if len(items) >= 2:
        ci: list[float] | str = list(stats.stratified_bootstrap_ci(scores))
    else:
        ci = "n/a: one seed (a bootstrap CI needs at least 2)"
    if baseline:
        poi: float | str = stats.probability_of_improvement(scores, auc_scores(baseline))
    else:
        poi = f"n/a: no {BASELINE_METHOD} entry for this scenario, tier and learner"
    return {
        "auc_iqm": stats.iqm(scores),
        "auc_iqm_ci95": ci,
        "auc_mean": float(np.mean([i.record["metrics"]["auc"] for i in items])),
        "performance_mean": float(np.mean([i.record["metrics"]["performance"] for i in items])),
        "retention": _retention(items),
        "plasticity_ratio": _plasticity_ratio(items, pool),
        "forgetting": _forgetting(items),
        "probability_of_improvement_over_none": poi,
    }


# --- the leaderboard -------------------------------------------------------------------------

@dataclass
class Board:
    """One table: the entries of one (scenario, version, tier, learner), ranked."""

    scenario: str
    version: int
    tier: str
    learner: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    validity: dict[str, str] | None = None
    """``ctmarl validity``'s {verdict, reason} for this table (:func:`board_validity`), or None."""

    @property
    def title(self) -> str:
        return f"{self.scenario}-v{self.version} · {self.tier} · {self.learner}"

    @property
    def plot_name(self) -> str:
        return f"{self.scenario}-v{self.version}_{self.tier}_{self.learner}.png"

    @property
    def ranked(self) -> bool:
        """Whether this table ranks its entries (no table of an :data:`UNRANKED_TIERS` tier does)."""
        return self.tier not in UNRANKED_TIERS


@dataclass
class Leaderboard:
    boards: list[Board]
    n_records: int
    aggregate: list[dict[str, Any]] = field(default_factory=list)
    """The cross-scenario aggregate (:mod:`ctmarl.aggregate`)."""
    claims: list[dict[str, Any]] = field(default_factory=list)
    """The KNIFE paper's claims with their evidence and verdicts (:mod:`ctmarl.claims`)."""

    def data(self) -> dict[str, Any]:
        """The content of leaderboard.yaml."""
        return {
            "schema_version": SCHEMA_VERSION,
            "statistics": {
                "score": "AUC_k: mean greedy normalised score over task k's evaluations; one per seed and task",
                "auc_iqm": "interquartile mean (25% trimmed mean) of all seeds x tasks AUC_k (scipy.stats.trim_mean)",
                "auc_iqm_ci95": (f"95% percentile interval, stratified bootstrap (seeds resampled within each "
                                 f"task), {stats.CI_RESAMPLES} resamples, seed {stats.CI_SEED} "
                                 "(scipy.stats.bootstrap)"),
                "plasticity_ratio": f"mean over seeds of mean_k AUC_k / AUC_k of {SCRATCH_METHOD} with the same seed",
                "retention": ("mean over seeds of mean_j R[K-1][j]: the score on every task after the last one "
                              f"(the other side of the trade-off: {SCRATCH_METHOD} wins AUC by forgetting)"),
                "forgetting": "mean over seeds of mean_j (max_{k<K} R[k][j] - R[K][j])",
                "probability_of_improvement_over_none": (
                    f"mean over tasks of P(AUC_k of a run of this method > AUC_k of a run of {BASELINE_METHOD}), "
                    "ties 1/2 (Mann-Whitney U / (n m))"),
                "validity": (f"per table, the verdict of `ctmarl validity` (ctmarl/validity.py) from its "
                             f"{BASELINE_METHOD} and {SCRATCH_METHOD} records when >= {validity.MIN_SEEDS} seeds have "
                             "both; null otherwise"),
                "rank": (f"within a table, by auc_iqm (ties share a rank), for entries with >= {MIN_RANKED_SEEDS} "
                         "seeds; null for the others, listed after the ranked ones, `unranked` saying why"),
                "reference": (f"{' and '.join(REFERENCE_METHODS)}: the references every table is measured against "
                              "(keep the network; train each task from scratch), never ranked, listed last"),
                "aggregate": ("per learner and method, the IQM over every valid scenario (validity: shows "
                              "plasticity loss; of a scenario, its newest valid version), seed and task of the AUC "
                              "normalised between none (0) and reset_all (1) of the same seed, with a 95% stratified-bootstrap interval "
                              "((scenario, task) strata); see ctmarl/aggregate.py"),
                "claims": ("the KNIFE paper's four claims, each with its rows of evidence from the records and a "
                           "verdict (supported / not supported / not separable / not measured); only tables whose "
                           "validity verdict is shows plasticity loss vote; rules in ctmarl/claims.py"),
                "unranked_entries": (f"the entries of {'/'.join(UNRANKED_TIERS)}-tier tables: kept because "
                                     "`ctmarl leaderboard check` re-runs their records, never ranked"),
                "metrics": ("every number is computed from the records' curves and R; a record whose stored "
                            "metrics differ from that recomputation is not admitted"),
            },
            "boards": [{"scenario": b.scenario, "version": b.version, "tier": b.tier, "learner": b.learner,
                        "validity": b.validity} for b in self.boards],
            "aggregate": self.aggregate,
            "claims": self.claims,
            "entries": [entry for board in self.boards if board.ranked for entry in board.entries],
            "unranked_entries": [entry for board in self.boards if not board.ranked for entry in board.entries],
        }

    def yaml_text(self) -> str:
        data = self.data()
        entries = {key: data.pop(key) for key in ("aggregate", "claims", "entries", "unranked_entries")}
        # The explanations in block style, the entries with short lists inline (seeds, CI).
        return (_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
                + yaml.safe_dump(entries, sort_keys=False, default_flow_style=None, width=100))

    def markdown(self) -> str:
        return render_markdown(self)


def _board_order(key: tuple) -> tuple:
    scenario, version, tier, learner = key
    return (scenario, version, TIER_NAMES.index(tier), learner)


def board_validity(methods: Mapping[str, list[Admitted]]) -> dict[str, str] | None:
    """``ctmarl validity``'s {verdict, reason} for one table (``methods``: its records by method)
    from its ``none`` and ``reset_all`` records; None when fewer than ``validity.MIN_SEEDS`` seeds
    have both. Records it cannot analyse together give an inconclusive verdict saying why."""
    none = [item.record for item in methods.get(validity.NONE_METHOD, [])]
    scratch = [item.record for item in methods.get(validity.SCRATCH_METHOD, [])]
    if len({r["seed"] for r in none} & {r["seed"] for r in scratch}) < validity.MIN_SEEDS:
        return None
    try:
        return dict(validity.analyse(none, scratch)["verdict"])
    except validity.ValidityError as exc:
        return {"verdict": validity.INCONCLUSIVE, "reason": f"cannot analyse its records: {exc}"}


def build(records_dir: Path | str) -> Leaderboard:
    """Admit every record under ``records_dir`` and compute the leaderboard (no files written)."""
    return assemble(admit_all(Path(records_dir)))


def assemble(admitted: list[Admitted]) -> Leaderboard:
    """The leaderboard of admitted records."""
    by_board: dict[tuple, dict[str, list[Admitted]]] = {}
    for item in admitted:
        *board_key, method = item.key
        by_board.setdefault(tuple(board_key), {}).setdefault(method, []).append(item)
    boards = []
    for board_key in sorted(by_board, key=_board_order):
        methods = by_board[board_key]
        pool = [item for items in methods.values() for item in items]
        baseline = sorted(methods.get(BASELINE_METHOD, []), key=lambda i: i.seed)
        board = Board(*board_key, validity=board_validity(methods))
        for method, items in methods.items():
            items = sorted(items, key=lambda i: i.seed)
            numbers = {k: _round(v) for k, v in entry_statistics(items, pool, baseline).items()}
            board.entries.append({
                "scenario": board.scenario, "version": board.version, "tier": board.tier,
                "learner": board.learner, "method": method, "rank": None, "unranked": None,
                "reference": method in REFERENCE_METHODS,
                "method_entry_point": items[0].record["method"]["entry_point"],
                "seeds": [i.seed for i in items],
                **numbers,
                "records": [{"file": i.file, "content_hash": i.record["content_hash"]} for i in items],
            })
        rank_entries(board)
        boards.append(board)
    aggregate = cross_scenario_aggregate(boards, by_board)
    return Leaderboard(boards, len(admitted), aggregate, paper_claims.claims(boards, by_board, aggregate))


def _unranked_reason(board: Board, entry: Mapping[str, Any]) -> str | None:
    """Why ``entry`` of ``board`` has no rank, or None when it has one."""
    if not board.ranked:
        return (f"{board.tier} tier: its records are kept so that `ctmarl leaderboard check` can re-run "
                "them, not to rank methods")
    if entry["reference"]:
        return "a reference, not a contender"
    if len(entry["seeds"]) < MIN_RANKED_SEEDS:
        return f"{len(entry['seeds'])} seed: a rank needs at least {MIN_RANKED_SEEDS}"
    return None


def rank_entries(board: Board) -> None:
    """Order ``board``'s entries, ranked ones first by ``auc_iqm`` (ties share a rank), then the
    unranked ones (``rank`` None, ``unranked`` their reason) by ``auc_iqm``."""
    for entry in board.entries:
        entry["rank"], entry["unranked"] = None, _unranked_reason(board, entry)
    board.entries.sort(key=lambda e: (e["reference"], e["unranked"] is not None, -e["auc_iqm"], e["method"]))
    for position, entry in enumerate(board.entries):
        if entry["unranked"] is not None:
            continue
        previous = board.entries[position - 1] if position else None
        same = previous is not None and previous["auc_iqm"] == entry["auc_iqm"]
        entry["rank"] = previous["rank"] if same else position + 1


# --- markdown and plots ----------------------------------------------------------------------

def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, str):
        return "n/a"
    if isinstance(value, list):
        return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
    return f"{value:.{digits}f}"


_COLUMNS = ("plasticity_ratio", "forgetting", "probability_of_improvement_over_none")


def render_markdown(leaderboard: Leaderboard) -> str:
    unranked_tiers = "/".join(UNRANKED_TIERS)
    lines = [
        "# ctmarl leaderboard",
        "",
        "Generated by `ctmarl leaderboard build` from the run records in [`records/`](records/); do not",
        "edit by hand: CI (`ctmarl leaderboard check`) rebuilds this file and `leaderboard.yaml` and fails",
        "on any difference. Exact numbers, seeds and the content hash of every record are in",
        "[`leaderboard.yaml`](leaderboard.yaml); how to add a method is in [CONTRIBUTING.md](../CONTRIBUTING.md).",
        "Every number is computed from the records' curves and R matrices; a record whose stored metrics",
        "differ from that recomputation, or whose scores leave [0, 1], is refused.",
        "",
        "- **IQM AUC [95% CI]**: interquartile mean of the per-task AUC (mean greedy normalised score over",
        "  a task's evaluations: learning speed) over all seeds × tasks, with a 95% stratified-bootstrap",
        "  interval (seeds resampled within tasks; needs ≥ 2 seeds). Ranked by it; entries with fewer than",
        f"  {MIN_RANKED_SEEDS} seeds are listed after the ranked ones without a rank (–).",
        "- **performance**: mean final score per task; **retention**: mean score on every task after the last",
        f"  one (`{SCRATCH_METHOD}` wins AUC by forgetting: read the two together); **PR**: plasticity ratio against",
        f"  `{SCRATCH_METHOD}` with the same seeds; **forgetting**: mean drop from a task's best score to its score",
        "  after the last task.",
        f"- **References** (`{BASELINE_METHOD}`: keep the network; `{SCRATCH_METHOD}`: train each task from scratch)",
        "  are listed last in every table (rank `ref`) and never ranked.",
        "- **P(> none)**: probability that a run of the method has a higher task AUC than a run of "
        f"`{BASELINE_METHOD}`.",
        "- **Validity**: whether the table's scenario tier measures plasticity loss, by `ctmarl validity` from its",
        f"  `{BASELINE_METHOD}` and `{SCRATCH_METHOD}` records (rules in ctmarl/validity.py; needs ≥ 2 paired seeds).",
        f"- **Unranked**: {unranked_tiers}-tier tables are listed apart at the end, never ranked: CI re-runs",
        "  their records to check that runs reproduce; they are too short to compare methods.",
        "",
    ]
    if not leaderboard.boards:
        lines += ["No records yet.", ""]
    lines += _aggregate_markdown(leaderboard)
    lines += paper_claims.markdown(leaderboard.claims)
    ranked = [board for board in leaderboard.boards if board.ranked]
    unranked = [board for board in leaderboard.boards if not board.ranked]
    for board in ranked:
        lines += _board_markdown(board, "##")
    if unranked:
        lines += [f"## Unranked: {unranked_tiers} tier", "",
                  "Kept so that `ctmarl leaderboard check` can re-run these records and confirm they reproduce; the",
                  "runs are too short to measure plasticity, so their entries have no rank.", ""]
    for board in unranked:
        lines += _board_markdown(board, "###")
    return "\n".join(lines)


def _aggregate_markdown(leaderboard: Leaderboard) -> list[str]:
    """The headline: the cross-scenario aggregate per learner (ctmarl/aggregate.py)."""
    lines = ["## Across valid scenarios", "",
             "IQM of the per-task AUC normalised between `none` (0) and `reset_all` (1) of the same seed, over every",
             "ranked table whose validity verdict is *shows plasticity loss* (of a scenario, only its newest such",
             "version: a re-calibrated version supersedes the one it replaces), with a 95% stratified-bootstrap",
             "interval ((scenario, task) strata). Each method is aggregated over the tables it has records in",
             "(listed with their seeds); definitions in ctmarl/aggregate.py.", ""]
    if not leaderboard.aggregate:
        return lines + ["No valid table has `none` and `reset_all` records of the same seeds yet.", ""]
    for learner in sorted({e["learner"] for e in leaderboard.aggregate}):
        rows = [e for e in leaderboard.aggregate if e["learner"] == learner]
        lines += [f"### {learner}", "", f"![normalised AUC per method]({PLOTS_DIR}/{aggregate_plot_name(learner)})", "",
                  "| method | normalised IQM AUC [95% CI] | tables (seeds) |", "| --- | --- | --- |"]
        for e in rows:
            ci = "" if isinstance(e["normalised_auc_iqm_ci95"], str) else " " + _cell(e["normalised_auc_iqm_ci95"])
            tables = "; ".join(f"{t['table'].split(' · ')[0]} ({len(t['seeds'])})" for t in e["scenarios"])
            name = f"`{e['method']}` (reference)" if e["reference"] else f"`{e['method']}`"
            lines.append(f"| {name} | {e['normalised_auc_iqm']:.3f}{ci} | {tables} |")
        lines.append("")
    return lines


def aggregate_plot_name(learner: str) -> str:
    return f"aggregate_{learner}.png"


def plot_aggregate(rows: list[dict[str, Any]], learner: str, path: Path) -> Path:
    """Bars of the normalised IQM with 95% CI whiskers, contenders then references."""
    from ctmarl.plots import _figure

    figure = _figure(max(4.0, 0.8 * len(rows) + 2.0), 3.2)
    ax = figure.add_subplot()
    x = np.arange(len(rows))
    iqm = np.array([e["normalised_auc_iqm"] for e in rows])
    ci = [e["normalised_auc_iqm_ci95"] if isinstance(e["normalised_auc_iqm_ci95"], list) else [v, v]
          for e, v in zip(rows, iqm)]
    ax.bar(x, iqm, color=["tab:gray" if e["reference"] else "tab:blue" for e in rows], alpha=0.8)
    ax.errorbar(x, iqm, yerr=[iqm - np.array([c[0] for c in ci]), np.array([c[1] for c in ci]) - iqm],
                fmt="none", ecolor="black", capsize=4)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(1.0, color="tab:gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [e["method"] for e in rows], rotation=30, ha="right")
    ax.set(ylabel="normalised AUC, IQM (95% CI)", title=f"across valid scenarios · {learner}")
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return path


def _board_markdown(board: Board, heading: str) -> list[str]:
    """One table: its heading, plot, rows (a rank column in ranked tables), validity and notes."""
    columns = "| method | seeds | IQM AUC [95% CI] | performance | retention | PR | forgetting | P(> none) |"
    rule = "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    if board.ranked:
        columns, rule = "| rank " + columns, "| ---: " + rule
    lines = [f"{heading} {board.title}", "", f"![IQM of AUC per method]({PLOTS_DIR}/{board.plot_name})", "",
             columns, rule]
    notes, unranked = [], []
    for e in board.entries:
        ci = "" if isinstance(e["auc_iqm_ci95"], str) else " " + _cell(e["auc_iqm_ci95"])
        mark = "ref" if e["reference"] else "–"
        rank = "" if not board.ranked else f"| {mark if e['rank'] is None else e['rank']} "
        name = f"`{e['method']}` (reference)" if e["reference"] else f"`{e['method']}`"
        lines.append(f"{rank}| {name} | {len(e['seeds'])} | {e['auc_iqm']:.3f}{ci} | "
                     f"{_cell(e['performance_mean'])} | {_cell(e['retention'])} | "
                     + " | ".join(_cell(e[c]) for c in _COLUMNS) + " |")
        notes += [f"- `{e['method']}` {c.replace('_', ' ')}: {e[c].removeprefix('n/a: ')}"
                  for c in _COLUMNS if isinstance(e[c], str)]
        if board.ranked and e["unranked"] is not None and not e["reference"]:
            unranked.append(f"- `{e['method']}`: {e['unranked']}")
    if board.validity is not None:
        lines += ["", f"Validity: {board.validity['verdict']} — {board.validity['reason']}"]
    if unranked:
        lines += ["", "Unranked:", *unranked]
    if notes:
        lines += ["", "n/a:", *notes]
    lines.append("")
    return lines


def plot_board(board: Board, path: Path) -> Path:
    """Bars of IQM of AUC with 95% CI whiskers, one per method, in rank order."""
    from ctmarl.plots import _figure

    entries = board.entries
    figure = _figure(max(4.0, 0.8 * len(entries) + 2.0), 3.2)
    ax = figure.add_subplot()
    x = np.arange(len(entries))
    iqm = np.array([e["auc_iqm"] for e in entries])
    low = np.array([e["auc_iqm_ci95"][0] if isinstance(e["auc_iqm_ci95"], list) else e["auc_iqm"] for e in entries])
    high = np.array([e["auc_iqm_ci95"][1] if isinstance(e["auc_iqm_ci95"], list) else e["auc_iqm"] for e in entries])
    ax.bar(x, iqm, color="tab:blue", alpha=0.8)
    ax.errorbar(x, iqm, yerr=[iqm - low, high - iqm], fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(x, [e["method"] for e in entries], rotation=30, ha="right")
    ax.set(ylabel="IQM of task AUC (95% CI)", ylim=(0, 1.05), title=board.title)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return path


# --- writing ---------------------------------------------------------------------------------

def write(leaderboard: Leaderboard, out: Path | str) -> list[Path]:
    """Write leaderboard.yaml, LEADERBOARD.md and the plots into ``out``; stale plots are removed."""
    out = Path(out)
    written = [write_text_atomic(leaderboard.yaml_text(), out / YAML_NAME),
               write_text_atomic(leaderboard.markdown(), out / MARKDOWN_NAME)]
    plots = out / PLOTS_DIR
    learners = sorted({e["learner"] for e in leaderboard.aggregate})
    wanted = {board.plot_name for board in leaderboard.boards} | {aggregate_plot_name(x) for x in learners}
    if plots.is_dir():
        for stale in plots.glob("*.png"):
            if stale.name not in wanted:
                stale.unlink()
    if wanted:
        plots.mkdir(parents=True, exist_ok=True)
        written += [plot_board(board, plots / board.plot_name) for board in leaderboard.boards]
        written += [plot_aggregate([e for e in leaderboard.aggregate if e["learner"] == learner], learner,
                                   plots / aggregate_plot_name(learner)) for learner in learners]
    return written


# --- check -----------------------------------------------------------------------------------

def _first_difference(committed: Any, rebuilt: Any, path: str = "") -> str | None:
    """Path and values of the first place two plain YAML structures differ, or None."""
    if isinstance(committed, Mapping) and isinstance(rebuilt, Mapping):
        for key in list(rebuilt) + [k for k in committed if k not in rebuilt]:
            where = f"{path}.{key}" if path else str(key)
            if key not in committed:
                return f"{where}: missing in the committed file (rebuilt: {rebuilt[key]!r})"
            if key not in rebuilt:
                return f"{where}: in the committed file ({committed[key]!r}) but not in the rebuild"
            found = _first_difference(committed[key], rebuilt[key], where)
            if found:
                return found
        return None
    if isinstance(committed, list) and isinstance(rebuilt, list):
        for i, (a, b) in enumerate(zip(committed, rebuilt)):
            label = f"{path}[{i}]"
            if isinstance(b, Mapping) and {"scenario", "version", "tier", "learner", "method"} <= set(b):
                label += f" ({b['scenario']}-v{b['version']} {b['tier']} {b['learner']} {b['method']})"
            found = _first_difference(a, b, label)
            if found:
                return found
        if len(committed) != len(rebuilt):
            return f"{path}: {len(committed)} items committed, {len(rebuilt)} rebuilt"
        return None
    if committed != rebuilt or type(committed) is not type(rebuilt):
        return f"{path}: committed {committed!r}, rebuilt {rebuilt!r}"
    return None


def _first_line_difference(committed: str, rebuilt: str) -> str | None:
    a, b = committed.splitlines(), rebuilt.splitlines()
    for number, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return f"line {number}: committed {x!r}, rebuilt {y!r}"
    if len(a) != len(b) or committed != rebuilt:
        line = min(len(a), len(b)) + 1
        return f"line {line}: the committed file has {len(a)} lines, the rebuild {len(b)}"
    return None


def compare_committed(leaderboard: Leaderboard, root: Path) -> None:
    """Raise LeaderboardError naming the first difference between the committed files and the rebuild."""
    hint = "; run `ctmarl leaderboard build` and commit the result"
    yaml_path, md_path = root / YAML_NAME, root / MARKDOWN_NAME
    for path in (yaml_path, md_path):
        if not path.is_file():
            raise LeaderboardError(f"{path} is missing{hint}")
    committed_text = yaml_path.read_text()
    try:
        committed = yaml.safe_load(committed_text)
    except yaml.YAMLError as exc:
        raise LeaderboardError(f"{yaml_path}: not valid YAML: {exc}".replace("\n", " ")) from None
    difference = _first_difference(committed, leaderboard.data()) or _first_line_difference(
        committed_text, leaderboard.yaml_text())
    if difference:
        raise LeaderboardError(f"{yaml_path} differs from the rebuild from its records: {difference}{hint}")
    difference = _first_line_difference(md_path.read_text(), leaderboard.markdown())
    if difference:
        raise LeaderboardError(f"{md_path} differs from the rebuild from its records: {difference}{hint}")
    names = [board.plot_name for board in leaderboard.boards]
    names += [aggregate_plot_name(learner) for learner in sorted({e["learner"] for e in leaderboard.aggregate})]
    for name in names:
        if not (root / PLOTS_DIR / name).is_file():
            raise LeaderboardError(f"{root / PLOTS_DIR / name} (linked from {MARKDOWN_NAME}) is missing{hint}")


def _numbers_differ(a: Any, b: Any, path: str) -> str | None:
    """First place where two records' fields differ beyond REPRODUCE_TOLERANCE."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}: present in only one of record and re-run"
            found = _numbers_differ(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} values recorded, {len(b)} re-run"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _numbers_differ(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if abs(a - b) <= REPRODUCE_TOLERANCE or (math.isnan(a) and math.isnan(b)):
            return None
        return f"{path}: recorded {a!r}, re-run {b!r}"
    return None if a == b else f"{path}: recorded {a!r}, re-run {b!r}"


def reproduce(record: Mapping[str, Any]) -> str | None:
    """Re-run a record's run in-process (on CPU, with the record's method config and torch thread
    count: CPU reductions can depend on it) and compare it with the record.

    Returns None when it matches: ``config_hash`` (what the current code resolves for the same
    scenario, learner, method and seed), env steps and updates exactly, curves, R, metrics and
    the method summary within :data:`REPRODUCE_TOLERANCE`; otherwise the first difference.
    """
    import torch

    from ctmarl.evaluate import RunSpec, evaluate

    s = record["scenario"]
    threads = torch.get_num_threads()
    torch.set_num_threads(int(record["provenance"].get("torch_threads") or 1))
    try:
        with tempfile.TemporaryDirectory(prefix="ctmarl-reproduce-") as folder:
            # The record's resolved method config, given as the run's --method-config.
            method_config = Path(folder) / "method_config.yaml"
            method_config.write_text(yaml.safe_dump(record["method"]["config"]))
            spec = RunSpec(scenario=f"{s['name']}-v{s['version']}", algo=record["method"]["name"], tier=s["tier"],
                           learner=record["learner"]["name"], seed=record["seed"], device="cpu",
                           neuron_every_updates=(record.get("neurons") or {}).get("every_updates", 0),
                           method_config=str(method_config))
            rerun, _ = evaluate(spec, None)
    finally:
        torch.set_num_threads(threads)
    if rerun["config_hash"] != record["config_hash"]:
        detail = _first_difference({k: record[k] for k in ("scenario", "learner", "method")},
                                   {k: rerun[k] for k in ("scenario", "learner", "method")})
        return (f"config_hash: the current code resolves a different run config "
                f"({(detail or 'seed').replace('committed', 'recorded').replace('rebuilt', 'now')})")
    for key in ("env_steps", "updates"):
        if rerun["timing"][key] != record["timing"][key]:
            return f"timing.{key}: recorded {record['timing'][key]}, re-run {rerun['timing'][key]}"
    for key in REPRODUCED_FIELDS:
        if key in record or key in rerun:
            found = _numbers_differ(record.get(key), rerun.get(key), key)
            if found:
                return found
    return None


def reproduction_sample(admitted: list[Admitted], per_method: int) -> list[Admitted]:
    """Per method, the ``per_method`` smoke-tier CPU records with the smallest content hashes
    (deterministic, and not chosen by whoever made the records). Raises if a method has none."""
    by_method: dict[str, list[Admitted]] = {}
    for item in admitted:
        by_method.setdefault(item.key[4], [])
        if item.key[2] == "smoke" and item.record["provenance"].get("device") == "cpu":
            by_method[item.key[4]].append(item)
    sample = []
    for method in sorted(by_method):
        candidates = sorted(by_method[method], key=lambda i: i.record["content_hash"])
        if not candidates:
            raise LeaderboardError(
                f"method {method!r} has no smoke-tier record made on cpu for `ctmarl leaderboard check` to "
                f"re-run: add one (ctmarl evaluate --algo {method} --tier smoke --scenario ...)")
        sample += candidates[:per_method]
    return sample


#: Records that no longer reproduce with the current code because ctmarl's numerics changed after
#: they were made, by (scenario, git commit) -> the measurement that showed it. The audit cannot
#: compare them, so it leaves them out (and says so) until they are re-made; nothing else about
#: them changes. An entry here is a reviewed change that must carry its measurement.
STALE: dict[tuple[str, str], str] = {
    ("predator_prey_penalty", "2ccfad272cd386b9e67a07ed3b2c0844eaa2e68e"): (
        "made before the hand-written GRU unroll (037e4d8) and its chunking (4e1d02b), which change "
        "float rounding; re-running quick redo seed 0 at 84f91e0 gave 750582 env steps, recorded 750327"),
}


def is_stale(record: Mapping[str, Any]) -> bool:
    return (record["scenario"]["name"], str(record["provenance"].get("git_commit"))) in STALE


#: CPU seconds (as the records' own runs measured them) that ``check`` spends by default re-running
#: sampled non-smoke records (:func:`audit_sample`).
AUDIT_BUDGET_S = 900.0


def audit_seed(root: Path) -> int:
    """The seed of the audit draw: from the commit the check runs on (``git rev-parse HEAD``), so
    the draw changes with every commit and a record cannot be made to sit outside it; outside a
    git work tree, from the records' content hashes."""
    import hashlib
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    if not head:
        head = "".join(sorted(str(r.get("content_hash")) for r in
                              (load_record(p) for p in record_files(root / RECORDS_DIR))))
    return int.from_bytes(hashlib.sha256(f"ctmarl-audit:{head}".encode()).digest()[:8], "big")


def audit_sample(admitted: list[Admitted], budget_s: float, seed: int) -> list[Admitted]:
    """Non-smoke CPU records to re-run within ``budget_s``: the (scenario, tier, learner, method)
    groups in an order drawn from ``seed``, one record per group drawn likewise, each taken while
    its cost fits what is left of the budget. A record's cost is the median ``wall_time_s`` of its
    (scenario, version, tier) records, so one record cannot make itself look too long to draw.
    :data:`STALE` records (measured not to reproduce with the current code) are left out.
    Records longer than the whole budget are never drawn at that budget (say so, and raise it)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[Admitted]] = {}
    walls: dict[tuple, list[float]] = {}
    for item in admitted:
        if item.key[2] == "smoke" or item.record["provenance"].get("device") != "cpu" or is_stale(item.record):
            continue
        groups.setdefault(item.key, []).append(item)
        walls.setdefault(item.key[:3], []).append(float(item.record["timing"]["wall_time_s"]))
    cost = {key: float(np.median(values)) for key, values in walls.items()}
    sample, left = [], float(budget_s)
    keys = sorted(groups)
    for index in rng.permutation(len(keys)):
        key = keys[index]
        members = sorted(groups[key], key=lambda i: i.seed)
        item = members[int(rng.integers(len(members)))]
        if cost[key[:3]] <= left:
            sample.append(item)
            left -= cost[key[:3]]
    return sample


def _rerun(item: Admitted, records_dir: Path) -> None:
    where = records_dir / item.file
    try:  # against the record as stored (item.record's metrics are recomputed ones)
        difference = reproduce(load_record(where))
    except CtmarlError as exc:
        raise LeaderboardError(f"{where}: cannot re-run it: {exc} (a plug-in method must be installed "
                               "for the check; see CONTRIBUTING.md)") from None
    if difference:
        prov = item.record["provenance"]
        raise LeaderboardError(
            f"{where} does not reproduce: {difference} (recorded with torch {prov.get('torch')} on "
            f"{prov.get('machine')} at {prov.get('git_commit', '')[:12]})")


def check(root: Path | str, reproduce_per_method: int = 1,
          echo: Callable[[str], None] = lambda line: None, audit_budget_s: float = AUDIT_BUDGET_S,
          audit_seed_value: int | None = None) -> Leaderboard:
    """Verify the committed leaderboard under ``root`` (see the module docstring); raise on the
    first problem. ``reproduce_per_method`` smoke records per method are re-run (0 = none); then
    non-smoke records drawn by :func:`audit_sample` within ``audit_budget_s`` (0 = none), from
    :func:`audit_seed` unless ``audit_seed_value`` is given."""
    root = Path(root)
    records_dir = root / RECORDS_DIR
    admitted = admit_all(records_dir)
    echo(f"{len(admitted)} records admitted from {records_dir}")
    leaderboard = assemble(admitted)
    compare_committed(leaderboard, root)
    n_entries = sum(len(b.entries) for b in leaderboard.boards)
    echo(f"{root / YAML_NAME} and {root / MARKDOWN_NAME} match the rebuild ({n_entries} entries)")
    if reproduce_per_method > 0:
        sample = reproduction_sample(admitted, reproduce_per_method)
        if not sample:
            echo("no records, nothing to re-run")
        for item in sample:
            _rerun(item, records_dir)
            echo(f"re-ran {item.file}: matches")
    if audit_budget_s > 0:
        seed = audit_seed(root) if audit_seed_value is None else audit_seed_value
        sample = audit_sample(admitted, audit_budget_s, seed)
        total = sum(1 for item in admitted if item.key[2] != "smoke")
        stale = sum(1 for item in admitted if item.key[2] != "smoke" and is_stale(item.record))
        echo(f"audit: {len(sample)} of {total} non-smoke records drawn (seed {seed}, budget {audit_budget_s:.0f} s "
             f"of their recorded CPU time; {stale} stale records left out, see leaderboard.STALE)")
        for item in sample:
            started = time.perf_counter()
            _rerun(item, records_dir)
            echo(f"re-ran {item.file}: matches ({time.perf_counter() - started:.0f} s)")
    return leaderboard
