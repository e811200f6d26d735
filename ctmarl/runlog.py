"""Live logs of a run in progress: CSV (built in, on by default), TensorBoard and Weights & Biases.

The run record stays the source of truth; these are views of the same numbers, streamed while the
run goes (``ctmarl evaluate --log csv,tensorboard,wandb``). The runner emits *rows*, one number
each, in a fixed order that depends only on the run (never on wall time or on which loggers are
on), so a run's rows are the same every time it is run:

==========  =====================================================================================
kind        rows
==========  =====================================================================================
``eval``    every greedy evaluation on the current task: ``score``, ``return`` (the record's curves)
``train``   every :data:`TRAIN_EVERY_UPDATES` updates: ``loss``, ``grad_norm`` (what the learner's
            update returns) and ``epsilon``
``neurons`` whenever neuron metrics are logged (``--neuron-every``): ``<group>/stagnant_ratio``,
            ``<group>/dormant_ratio``, ``<group>/grama_ratio`` per neuron group
``method``  every :data:`TRAIN_EVERY_UPDATES` updates and at each task end: the numeric entries of
            the method's summary (cumulative counts: KNIFE's replacements and parameter growth,
            ReDo's resets, ...), ``a/b`` for nested ones
``R``       at each task end: ``task_<j>``, the score on task j (the record's R row)
==========  =====================================================================================

Each row carries the env step, the update count and the task index at which it was emitted.

CSV: ``<record stem>.progress.csv`` beside the record, columns ``kind, env_step, update, task,
metric, value, wall_time_s``; flushed before every checkpoint. A resumed run truncates the file to
the rows the checkpoint had emitted (their count is part of the checkpointed state), then appends,
so killed and resumed, the file holds each row exactly once.

TensorBoard (``pip install tensorboard``): event files in ``<record stem>.tb/``, one scalar per row
tagged ``<kind>/<metric>`` at step = env step; a resumed run purges events after the checkpoint's
env step (``purge_step``), so only a task-end row of a checkpoint taken exactly at a task end can
appear twice there.

W&B (``pip install wandb``): one W&B run per record stem (``resume="allow"``), offline unless the
user configured W&B (``WANDB_MODE`` or ``WANDB_API_KEY`` set); files under ``<out>/wandb``. W&B
drops rows whose step is below its latest, so a resumed run does not duplicate them.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ctmarl.errors import CtmarlError, OutputError

#: Loggers ``--log`` accepts, and the package each needs.
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}
#: What ``ctmarl evaluate`` logs when ``--log`` is not given.
DEFAULT_LOGGERS = ("csv",)
#: Updates between two ``train`` (and ``method``) row groups.
TRAIN_EVERY_UPDATES = 50
CSV_COLUMNS = ("kind", "env_step", "update", "task", "metric", "value", "wall_time_s")


def parse_loggers(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"csv,tensorboard"`` (or a list of such strings) -> ("csv", "tensorboard"); ``none`` or an
    empty string: no logger. Unknown names are an error listing the known ones."""
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip().lower() for part in parts for n in part.split(",") if n.strip()]
    if names in (["none"], []):
        return ()
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise CtmarlError(f"--log: unknown logger(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(LOGGERS)} (comma-separated), or none")
    return tuple(dict.fromkeys(names))


def require_loggers(names: Iterable[str]) -> None:
    """Fail before training, with the pip command, if a logger's package is not installed."""
    import importlib.util

    for name in names:
        package = LOGGERS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise CtmarlError(f"--log {name} needs the {package} package, which is not installed: "
                              f"pip install {package}  (or: pip install 'ctmarl[{name}]')")


def flatten_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """The numbers (not bools) in nested dicts, keyed ``a/b``; lists and strings are skipped."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(flatten_numbers(value, f"{prefix}{key}/"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip("/")] = float(data)
    return out


class _CsvLog:
    def __init__(self, path: Path, keep_rows: int | None):
        self.path = path
        try:
            if keep_rows is not None and path.exists():
                _truncate_csv(path, keep_rows)
                self.handle = path.open("a", newline="")
            else:
                self.handle = path.open("w", newline="")
                csv.writer(self.handle).writerow(CSV_COLUMNS)
        except OSError as exc:
            raise OutputError(f"cannot write the run's CSV log {path}: {exc.strerror or exc}") from None
        self.writer = csv.writer(self.handle)

    def write(self, kind, env_step, update, task, values, wall) -> None:
        for metric, value in values.items():
            self.writer.writerow((kind, env_step, update, task, metric, repr(float(value)), f"{wall:.3f}"))

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _truncate_csv(path: Path, keep_rows: int) -> None:
    """Keep the header and the first ``keep_rows`` data rows of ``path`` (all if it has fewer)."""
    with path.open("r+", newline="") as handle:
        if handle.readline().strip() != ",".join(CSV_COLUMNS):
            raise OutputError(f"{path} is not a ctmarl progress log (unexpected header); move it away "
                              "and resume again")
        for _ in range(keep_rows):
            if not handle.readline():
                break
        handle.truncate(handle.tell())


class _TensorBoardLog:
    def __init__(self, folder: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def write(self, kind, env_step, update, task, values, wall) -> None:
        for metric, value in values.items():
            self.writer.add_scalar(f"{kind}/{metric}", value, global_step=env_step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandbLog:
    def __init__(self, out: Path, stem: str, config: Mapping[str, Any]):
        import wandb

        configured = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ctmarl"), name=stem, id=_wandb_id(stem),
                              resume="allow", dir=str(out), config=dict(config),
                              mode=None if configured else "offline")

    def write(self, kind, env_step, update, task, values, wall) -> None:
        self.run.log({f"{kind}/{metric}": value for metric, value in values.items()}, step=env_step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def _wandb_id(stem: str) -> str:
    import hashlib

    return hashlib.sha256(stem.encode()).hexdigest()[:16]


class RunLog:
    """The loggers of one run. ``emitted`` counts rows since the run began (checkpointed by the
    runner); a resumed run opens with the count its checkpoint holds."""

    def __init__(self, loggers: Iterable[str], out: Path, stem: str, *, resume_rows: int | None = None,
                 resume_env_steps: int = 0, config: Mapping[str, Any] | None = None):
        self.names = tuple(loggers)
        require_loggers(self.names)
        self.paths: dict[str, Path] = {}
        self.backends: list[Any] = []
        self._started = time.monotonic()
        try:
            if "csv" in self.names:
                self.paths["csv"] = Path(out) / f"{stem}.progress.csv"
                self.backends.append(_CsvLog(self.paths["csv"], resume_rows))
            if "tensorboard" in self.names:
                self.paths["tensorboard"] = Path(out) / f"{stem}.tb"
                purge = resume_env_steps + 1 if resume_rows is not None else None
                self.backends.append(_TensorBoardLog(self.paths["tensorboard"], purge))
            if "wandb" in self.names:
                self.paths["wandb"] = Path(out) / "wandb"
                self.backends.append(_WandbLog(Path(out), stem, config or {}))
        except BaseException:
            self.close()
            raise

    def write(self, kind: str, env_step: int, update: int, task: int, values: Mapping[str, float]) -> None:
        wall = time.monotonic() - self._started
        for backend in self.backends:
            backend.write(kind, env_step, update, task, values, wall)

    def flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def close(self) -> None:
        for backend in self.backends:
            try:
                backend.close()
            except Exception:  # closing must not hide the run's own outcome
                pass
        self.backends = []
