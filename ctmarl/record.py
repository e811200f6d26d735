"""Run records: the self-describing YAML each run writes (DESIGN.md §9).

A record holds the schema version; the scenario (name, version, tier, hash of its definition);
learner and method with their fully resolved configs; ``config_hash`` over everything that
defines the run; the seed; provenance (ctmarl version, git commit and whether the tree was dirty,
library versions, device, machine, and ``method``: the method's distribution, source hash and git
state, :mod:`ctmarl.source`); timing; per-evaluation curves; the R matrix; final metrics;
and ``content_hash``, a sha256 over all other fields, so a number edited by hand is detected.
Anyone can recompute that hash (:func:`seal`), so it does not stop a forger: :func:`validate_record`
also checks every score's range and the curves' consistency, and re-derives the metrics from the
curves and R (:func:`recomputed_metrics`), refusing a record whose stored metrics differ.

Records are written atomically (temporary file in the same folder + rename) and loaded only as
plain data (:func:`ctmarl.config.read_yaml`); a malformed one (a key of the wrong type, a missing
nested key, a non-numeric metric, a score outside [0, 1]) is a :class:`~ctmarl.errors.RecordError`
naming the file and the field.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ctmarl.config import MAX_DEPTH, MAX_RECORD_BYTES, read_yaml, stable_hash
from ctmarl.errors import OutputError, RecordError, shorten

SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "schema_version", "scenario", "learner", "method", "seed", "config_hash", "provenance",
    "timing", "tasks", "curves", "R", "metrics", "content_hash",
)


def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirtiness of the git checkout containing ``path``; 'unknown' outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"git_commit": "unknown", "git_dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
            capture_output=True, text=True, timeout=10,
        )
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}


def provenance(device: str) -> dict[str, Any]:
    import numpy
    import torch

    import ctmarl

    info = {
        "ctmarl_version": ctmarl.__version__,
        **git_state(Path(ctmarl.__file__).resolve().parent),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:  # the installed version, without importing jax (seconds) where the run did not need it
        info["jax"] = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        info["jax"] = None
    return info


def config_hash(record: Mapping[str, Any]) -> str:
    """Hash of what defines a run: scenario (incl. definition hash) + tier, learner, method, seed."""
    return stable_hash({key: record[key] for key in ("scenario", "learner", "method", "seed")})


def content_hash(record: Mapping[str, Any]) -> str:
    return stable_hash({k: v for k, v in record.items() if k != "content_hash"})


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``config_hash`` and ``content_hash``; a RecordError if ``record`` is not plain data
    with string keys (the hashes of ``{1: x}`` and ``{"1": x}`` would be the same)."""
    _check_plain(record, "", "record to seal")
    for key in ("scenario", "learner", "method", "seed"):
        if key not in record:
            raise RecordError(f"record to seal: missing key {key!r}")
    record["config_hash"] = config_hash(record)
    record["content_hash"] = content_hash(record)
    return record


def record_filename(record: Mapping[str, Any]) -> str:
    """``<scenario>-v<version>_<tier>_<learner>_<method>[-<variant>]_seed<seed>.yaml``; the
    method's ``variant`` (a hash of a non-default method config) keeps variants apart."""
    s, method = record["scenario"], record["method"]
    variant = f"-{_safe(str(method['variant']))}" if method.get("variant") else ""
    return (f"{s['name']}-v{s['version']}_{s['tier']}_{record['learner']['name']}_"
            f"{_safe(method['name'])}{variant}_seed{record['seed']}.yaml")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there, or raise OutputError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ctmarl-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None


def write_yaml_atomic(data: Any, path: Path) -> Path:
    """Write YAML to ``path`` through a temporary file and a rename: never half a file."""
    return write_text_atomic(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100), path)


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename: never half a file.
    An OSError becomes an :class:`OutputError` naming the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; records are shared
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_record(record: dict[str, Any], folder: Path) -> Path:
    return write_yaml_atomic(record, Path(folder) / record_filename(record))


def validate_record(record: Any, where: str) -> dict[str, Any]:
    """Check a record; raise one :class:`RecordError` naming ``where`` and the first field at fault.

    In order: (1) structure: a mapping with every required key and this schema version, plain
    data only (string keys, no sets, bytes or objects: what the hashes read unambiguously), every
    field of its readers' type (:data:`_TYPES`: a bool is not a number, a seed is an integer);
    (2) ``content_hash`` and ``config_hash``; (3) every number finite, every score within
    :data:`SCORE_RANGE` (:func:`_check_ranges`); (4) curves consistent with each other, with
    ``tasks`` and with R (:func:`_check_curves`); (5) the stored metrics equal their
    recomputation from curves and R (:func:`recomputed_metrics`) within :data:`METRIC_TOLERANCE`.
    A record re-sealed after an edit passes (2), not (5): its metrics are re-derived, not trusted.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a run record (expected a mapping)")
    _check_plain(record, "", where)
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{where}: missing key {missing[0]!r}")
    if record["schema_version"] != SCHEMA_VERSION or isinstance(record["schema_version"], bool):
        raise RecordError(f"{where}: schema_version {shorten(repr(record['schema_version']))} is not {SCHEMA_VERSION}")
    _check_types(record, where)
    if record["content_hash"] != content_hash(record):
        raise RecordError(f"{where}: content_hash does not match the content (the record was edited)")
    if record["config_hash"] != config_hash(record):
        raise RecordError(f"{where}: config_hash does not match its scenario/learner/method/seed")
    _check_ranges(record, where)
    _check_curves(record, where)
    _check_metrics_agree(record, where)
    return record


#: Normalised scores (``curves.score``, ``R`` and the metrics averaging them) lie in [0, 1]: the
#: :class:`ctmarl.envs.base.BatchedEnv` contract, which every env family keeps (``matrix``: (payoff
#: - min) / (max - min); ``predator_prey``: captured / capturable prey; ``smax`` and ``sc2``: a
#: battle won, 1, or not, 0). Forgetting is a difference of two scores.
SCORE_RANGE = (0.0, 1.0)
FORGETTING_RANGE = (-1.0, 1.0)
#: Stored metrics are rounded to 6 decimals from the unrounded curves (ctmarl.evaluate); recomputed
#: from the rounded curves they differ by at most 1.5e-6 (forgetting: two rounded scores, rounded).
METRIC_TOLERANCE = 2e-6
#: Seeds are integers in [-2**53, 2**53] (ctmarl sweep files and ctmarl.api accept no others).
MAX_SEED = 2**53

#: What the readers of records (leaderboard, plots, reports, sweeps) rely on, by key path:
#: a type, or a tuple of types (None: the key may hold null). Other keys are free.
_NUMBER = (int, float)
_TYPES: dict[str, Any] = {
    "scenario": dict, "scenario.name": str, "scenario.version": int, "scenario.tier": str,
    "scenario.definition_hash": str,
    # learner.entry_point is null for a learner trained outside ctmarl (ctmarl.api.OutsideRun).
    "learner": dict, "learner.name": str, "learner.entry_point": (str, type(None)), "learner.config": dict,
    "method": dict, "method.name": str, "method.entry_point": str, "method.config": dict,
    "seed": int, "config_hash": str, "content_hash": str, "provenance": dict,
    "timing": dict, "timing.env_steps": int, "timing.updates": int, "timing.wall_time_s": _NUMBER,
    "tasks": list, "curves": dict, "curves.env_step": list, "curves.task": list, "curves.task_step": list,
    "curves.score": list, "curves.return": list, "R": list, "metrics": dict, "metrics.performance": _NUMBER,
    "metrics.auc": _NUMBER, "metrics.auc_per_task": list, "metrics.final_score_per_task": list,
    "metrics.forgetting": (*_NUMBER, type(None)),
}
#: Optional keys: checked when present.
_OPTIONAL_TYPES: dict[str, Any] = {
    "method.variant": (str, type(None)), "provenance.git_commit": (str, type(None)),
    "provenance.method": (dict, type(None)),
    "provenance.torch_threads": (int, type(None)), "provenance.device": (str, type(None)),
    "neurons": (dict, type(None)), "method_summary": (dict, type(None)), "plasticity_probe": (dict, type(None)), "contract": (dict, type(None)),
    "R_return": list, "task_definition": list, "metrics.q_tot_mse_per_task": (list, type(None)),
}
#: The element type of list fields (curves columns not named here hold numbers).
_ELEMENTS: dict[str, Any] = {
    "tasks": str, "task_definition": int, "curves.env_step": int, "curves.task": int, "curves.task_step": int,
    "metrics.auc_per_task": _NUMBER, "metrics.final_score_per_task": _NUMBER,
    "metrics.q_tot_mse_per_task": _NUMBER,
}
_WORDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
          type(None): "null"}


def _join(path: str, key: str) -> str:
    return f"{path}.{shorten(key, 40)}" if path else shorten(key, 40)


def _check_plain(value: Any, path: str, where: str, depth: int = 0) -> None:
    """Raise RecordError unless ``value`` is plain YAML data with string keys: a key ``1`` beside a
    key ``'1'`` would hash as one, and a set or an object cannot be hashed at all."""
    if depth > MAX_DEPTH:
        raise RecordError(f"{where}: {path or 'the record'} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RecordError(f"{where}: {path or 'the record'} has a key that is not a string: "
                                  f"{type(key).__name__} {shorten(repr(key), 40)} (mapping keys must be strings)")
            _check_plain(item, _join(path, key), where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{path}[{index}]", where, depth + 1)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise RecordError(f"{where}: {path or 'the record'} must be plain data (mappings, lists, strings, "
                          f"numbers, booleans, null), got {type(value).__name__} {shorten(repr(value), 40)}")


def _check_types(record: dict[str, Any], where: str) -> None:
    """Raise RecordError naming the first key whose value is not of the kind its readers expect."""
    for path, kinds in (*_TYPES.items(), *_OPTIONAL_TYPES.items()):
        *parents, key = path.split(".")
        block = record
        for parent in parents:
            block = block[parent]  # parents come first in _TYPES, so they are checked mappings
        if key not in block:
            if path in _TYPES:
                raise RecordError(f"{where}: missing key {path!r}")
            continue
        _check_value(block[key], kinds, path, where)
    if not record["tasks"]:
        raise RecordError(f"{where}: tasks must be a non-empty list of task names")
    lists = [(path, _value_at(record, path)) for path in _ELEMENTS]
    lists += [(f"curves.{shorten(k, 40)}", v) for k, v in record["curves"].items() if f"curves.{k}" not in _ELEMENTS]
    for name in ("R", "R_return"):
        for i, row in enumerate(record.get(name) or []):
            _check_value(row, list, f"{name}[{i}]", where)
            lists.append((f"{name}[{i}]", row))
    for path, values in lists:
        if values is None:
            continue
        _check_value(values, list, path, where)
        for index, value in enumerate(values):
            _check_value(value, _ELEMENTS.get(path, _NUMBER), f"{path}[{index}]", where)
    seed = record["seed"]
    if not -MAX_SEED <= seed <= MAX_SEED:
        raise RecordError(f"{where}: seed must be an integer in [-2**53, 2**53], got {shorten(seed, 40)}")
    for key in ("env_steps", "updates"):
        if record["timing"][key] < 0:
            raise RecordError(f"{where}: timing.{key} must be >= 0, got {record['timing'][key]}")


def _value_at(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` whose parents are checked mappings, None where absent."""
    block: Any = record
    for key in path.split("."):
        if not isinstance(block, dict) or key not in block:
            return None
        block = block[key]
    return block


def _check_value(value: Any, kinds: Any, path: str, where: str) -> None:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(_WORDS[k] for k in kinds if not (k is int and float in kinds))
        raise RecordError(f"{where}: {path} must be {names}, got {type(value).__name__} {shorten(repr(value), 40)}")


def _numbers(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, number) for every number in nested lists/mappings (bools are not numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, _join(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, _NUMBER) and not isinstance(value, bool):
        yield path, value


def _check_ranges(record: dict[str, Any], where: str) -> None:
    """Every measured number finite; scores within SCORE_RANGE, forgetting within FORGETTING_RANGE."""
    metrics = record["metrics"]
    measured = [("timing.wall_time_s", record["timing"]["wall_time_s"]), ("curves", record["curves"]),
                ("R", record["R"]), ("R_return", record.get("R_return")), ("metrics", metrics)]
    for root, block in measured:
        for path, value in _numbers(block, root):
            if not math.isfinite(value):
                raise RecordError(f"{where}: {path} is not finite (NaN or infinite)")
    scores = [("curves.score", record["curves"]["score"]), ("R", record["R"])]
    scores += [(f"metrics.{key}", metrics[key]) for key in ("performance", "auc", "auc_per_task",
                                                            "final_score_per_task")]
    for root, block in (*scores, ("metrics.forgetting", metrics["forgetting"])):
        low, high = FORGETTING_RANGE if root == "metrics.forgetting" else SCORE_RANGE
        for path, value in _numbers(block, root):
            if not low <= value <= high:
                why = ("forgetting is a difference of two scores" if root == "metrics.forgetting"
                       else "scores are normalised")
                raise RecordError(f"{where}: {path} is {value!r}, outside [{low:g}, {high:g}] ({why})")


def _check_curves(record: dict[str, Any], where: str) -> None:
    """Curves, R and the per-task metrics describe the same K = len(tasks) tasks, in order."""
    tasks, curves = record["tasks"], record["curves"]
    n_tasks = len(tasks)
    n_evals = len(curves["task"])
    for key, column in curves.items():
        if len(column) != n_evals:
            raise RecordError(f"{where}: curves.{shorten(key, 40)} has {len(column)} values, curves.task "
                              f"{n_evals}: every column has one value per evaluation")
    task_index, env_step, task_step = curves["task"], curves["env_step"], curves["task_step"]
    for i in range(n_evals):
        if not 0 <= task_index[i] < n_tasks:
            raise RecordError(f"{where}: curves.task[{i}] is {task_index[i]}, not a task index in "
                              f"0..{n_tasks - 1} (K = len(tasks) = {n_tasks})")
        if env_step[i] < 0 or task_step[i] < 0:
            key = "env_step" if env_step[i] < 0 else "task_step"
            raise RecordError(f"{where}: curves.{key}[{i}] is negative ({curves[key][i]})")
        if i and task_index[i] < task_index[i - 1]:
            raise RecordError(f"{where}: curves.task[{i}] is {task_index[i]} after {task_index[i - 1]}: "
                              "tasks are trained in order")
        if i and env_step[i] < env_step[i - 1]:
            raise RecordError(f"{where}: curves.env_step[{i}] is {env_step[i]} after {env_step[i - 1]}: "
                              "env steps never decrease")
        if i and task_index[i] == task_index[i - 1] and task_step[i] < task_step[i - 1]:
            raise RecordError(f"{where}: curves.task_step[{i}] is {task_step[i]} after {task_step[i - 1]} "
                              "within one task: task steps never decrease")
        if task_step[i] > env_step[i]:
            raise RecordError(f"{where}: curves.task_step[{i}] ({task_step[i]}) exceeds curves.env_step[{i}] "
                              f"({env_step[i]})")
    if n_evals and env_step[-1] > record["timing"]["env_steps"]:
        raise RecordError(f"{where}: curves.env_step[{n_evals - 1}] is {env_step[-1]}, beyond the run's "
                          f"timing.env_steps {record['timing']['env_steps']}")
    last = {task: i for i, task in enumerate(task_index)}  # task -> index of its last evaluation
    for k in range(n_tasks):
        if k not in last:
            raise RecordError(f"{where}: curves.task has no evaluation of task {k} ({shorten(tasks[k], 40)}): "
                              "every task is evaluated at least at its end")
    for name in ("R", "R_return"):
        matrix = record.get(name)
        if matrix is None:
            continue
        if len(matrix) != n_tasks:
            raise RecordError(f"{where}: {name} has {len(matrix)} rows, must be {n_tasks}x{n_tasks} "
                              f"(K = len(tasks) = {n_tasks})")
        for i, row in enumerate(matrix):
            if len(row) != n_tasks:
                raise RecordError(f"{where}: {name}[{i}] has {len(row)} values, must be {n_tasks}x{n_tasks} "
                                  f"(K = len(tasks) = {n_tasks})")
    for k in range(n_tasks):  # R[k][k] is task k's last evaluation (ctmarl.protocol, _end_task)
        i = last[k]
        for name, column in (("R", "score"), ("R_return", "return")):
            if name in record and abs(record[name][k][k] - curves[column][i]) > METRIC_TOLERANCE:
                raise RecordError(f"{where}: {name}[{k}][{k}] is {record[name][k][k]!r}, but task {k}'s last "
                                  f"evaluation, curves.{column}[{i}], is {curves[column][i]!r}: they are the same "
                                  "evaluation")
    for key in ("auc_per_task", "final_score_per_task"):
        values = record["metrics"][key]
        if len(values) != n_tasks:
            raise RecordError(f"{where}: metrics.{key} has {len(values)} values, must have one per task "
                              f"(K = len(tasks) = {n_tasks})")
    definitions = record.get("task_definition")
    if definitions is not None and len(definitions) != n_tasks:
        raise RecordError(f"{where}: task_definition has {len(definitions)} values, must have one per task "
                          f"(K = len(tasks) = {n_tasks})")


def recomputed_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of a record's curves and R, computed as a run computes them
    (:meth:`ctmarl.protocol.RunResult.summary`: performance, auc, auc_per_task,
    final_score_per_task, forgetting), unrounded. ``record`` must have passed
    :func:`validate_record`'s checks of curves and R (its callers' job)."""
    from ctmarl.protocol import RunResult  # torch: only when a record's numbers are read

    result = RunResult(task_names=list(record["tasks"]), curves=record["curves"], R=record["R"])
    return result.summary()


def with_recomputed_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``record`` whose metrics are :func:`recomputed_metrics`, rounded to the
    6 decimals records keep (other metric keys, such as ``q_tot_mse_per_task``, kept): what the
    leaderboard scores. Rounding drops the float noise of averaging rounded scores, so two runs
    with equal AUCs tie, as they do in the stored metrics."""
    from ctmarl.evaluate import RECORD_DECIMALS, rounded

    return {**record, "metrics": {**record["metrics"], **rounded(recomputed_metrics(record), RECORD_DECIMALS)}}


def _check_metrics_agree(record: dict[str, Any], where: str) -> None:
    """Raise RecordError naming the first stored metric that its recomputation does not match."""
    stored = record["metrics"]
    for key, value in recomputed_metrics(record).items():
        source = "R" if key == "forgetting" else "curves"
        pairs = ([(f"[{i}]", s, r) for i, (s, r) in enumerate(zip(stored[key], value))]
                 if isinstance(value, list) else [("", stored[key], value)])
        for index, kept, computed in pairs:
            if (kept is None) != (computed is None) or (
                    computed is not None and abs(kept - computed) > METRIC_TOLERANCE):
                shown = None if computed is None else round(computed, 6)
                raise RecordError(f"{where}: metrics.{key}{index}: stored {kept!r}, recomputed from {source} "
                                  f"{shown!r}")


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record (see :func:`validate_record`); at most
    :data:`ctmarl.config.MAX_RECORD_BYTES`, read as plain data by :func:`ctmarl.config.read_yaml`."""
    path = Path(path)
    return validate_record(read_yaml(path, str(path), RecordError, "record", MAX_RECORD_BYTES), str(path))
