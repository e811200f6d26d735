"""Run records: the self-describing YAML each run writes (DESIGN.md §9).

A record holds the schema version; the scenario (name, version, tier, hash of its definition);
learner and method with their fully resolved configs; ``config_hash`` over everything that
defines the run; the seed; provenance (ctmarl version, git commit and whether the tree was dirty,
library versions, device, machine); timing; per-evaluation curves; the R matrix; final metrics;
and ``content_hash``, a sha256 over all other fields, so a number edited by hand is detected.

Records are written atomically (temporary file in the same folder + rename) and loaded only as
plain data (:func:`ctmarl.config.read_yaml`); a malformed one (a key of the wrong type, a missing
nested key, a non-numeric metric) is a :class:`~ctmarl.errors.RecordError` naming the key.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ctmarl.config import MAX_RECORD_BYTES, read_yaml, stable_hash
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
    try:
        import jax

        info["jax"] = str(jax.__version__)
    except ImportError:
        info["jax"] = None
    return info


def config_hash(record: Mapping[str, Any]) -> str:
    """Hash of what defines a run: scenario (incl. definition hash) + tier, learner, method, seed."""
    return stable_hash({key: record[key] for key in ("scenario", "learner", "method", "seed")})


def content_hash(record: Mapping[str, Any]) -> str:
    return stable_hash({k: v for k, v in record.items() if k != "content_hash"})


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``config_hash`` and ``content_hash``."""
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
    """Check structure and both hashes; raise RecordError naming the problem."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a run record (expected a mapping)")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{where}: missing key {missing[0]!r}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {shorten(repr(record['schema_version']))} is not {SCHEMA_VERSION}")
    _check_types(record, where)
    if record["content_hash"] != content_hash(record):
        raise RecordError(f"{where}: content_hash does not match the content (the record was edited)")
    if record["config_hash"] != config_hash(record):
        raise RecordError(f"{where}: config_hash does not match its scenario/learner/method/seed")
    n_tasks = len(record["tasks"])
    R = record["R"]
    if len(R) != n_tasks or any(len(row) != n_tasks for row in R):
        raise RecordError(f"{where}: R must be {n_tasks}x{n_tasks}")
    lengths = {len(v) for v in record["curves"].values()}
    if len(lengths) != 1:
        raise RecordError(f"{where}: curves have columns of different lengths")
    for key, value in record["metrics"].items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise RecordError(f"{where}: metrics.{shorten(key)} is not finite (NaN or infinite)")
    return record


#: What the readers of records (leaderboard, plots, reports, sweeps) rely on, by key path:
#: a type, or a tuple of types (None: the key may hold null). Other keys are free.
_NUMBER = (int, float)
_TYPES: dict[str, Any] = {
    "scenario": dict, "scenario.name": str, "scenario.version": int, "scenario.tier": str,
    "scenario.definition_hash": str,
    "learner": dict, "learner.name": str, "learner.entry_point": str, "learner.config": dict,
    "method": dict, "method.name": str, "method.entry_point": str, "method.config": dict,
    "seed": int, "config_hash": str, "content_hash": str, "provenance": dict,
    "timing": dict, "timing.env_steps": int, "timing.updates": int, "timing.wall_time_s": _NUMBER,
    "tasks": list, "curves": dict, "R": list, "metrics": dict, "metrics.performance": _NUMBER,
    "metrics.auc": _NUMBER, "metrics.auc_per_task": list, "metrics.forgetting": (*_NUMBER, type(None)),
}
#: Optional keys: checked when present.
_OPTIONAL_TYPES: dict[str, Any] = {
    "method.variant": (str, type(None)), "provenance.git_commit": (str, type(None)),
    "provenance.torch_threads": (int, type(None)), "provenance.device": (str, type(None)),
    "neurons": (dict, type(None)), "method_summary": (dict, type(None)),
}


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
    if not record["tasks"] or not all(isinstance(name, str) for name in record["tasks"]):
        raise RecordError(f"{where}: tasks must be a non-empty list of task names")
    for path, values in (("metrics.auc_per_task", record["metrics"]["auc_per_task"]),
                         *((f"curves.{shorten(k)}", v) for k, v in record["curves"].items()),
                         *((f"R[{i}]", row) for i, row in enumerate(record["R"]))):
        _check_value(values, list, path, where)
        for value in values:
            _check_value(value, (*_NUMBER, type(None)), f"{path}[...]", where)


def _check_value(value: Any, kinds: Any, path: str, where: str) -> None:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        words = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
                 type(None): "null"}
        names = " or ".join(words[k] for k in kinds if not (k is int and float in kinds))
        raise RecordError(f"{where}: {path} must be {names}, got {type(value).__name__} {shorten(repr(value), 40)}")


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record (see :func:`validate_record`); at most
    :data:`ctmarl.config.MAX_RECORD_BYTES`, read as plain data by :func:`ctmarl.config.read_yaml`."""
    path = Path(path)
    return validate_record(read_yaml(path, str(path), RecordError, "record", MAX_RECORD_BYTES), str(path))
