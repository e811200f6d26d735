"""Checkpoints of a run in progress (DESIGN.md §11): written atomically, loaded safely, checked.

A run's checkpoint is one file beside its record, ``<record stem>.ckpt``, overwritten every
``every_env_steps`` env steps (or, by default, every :data:`DEFAULT_EVERY_SECONDS` of training)
and on Ctrl-C, and removed once the record is written. It holds
plain containers (dicts, lists, numbers, strings) of tensors only and is read with
``torch.load(weights_only=True)``, so loading a checkpoint cannot run code.

Layout (``format_version`` 1)::

    format          "ctmarl-checkpoint"
    format_version  1
    identity        what a resumed run must match (see :func:`check_identity`): the run's
                    config_hash (scenario definition + tier, learner and method with their resolved
                    configs, seed), those parts separately (to say which one differs), and the
                    settings outside the hash that change the record (neuron logging, device type)
    env_steps       env steps trained when it was written
    updates         learner updates done when it was written
    versions        ctmarl and torch versions that wrote it (informative)
    state           the runner's state, see :meth:`ctmarl.protocol.Training.state_dict`

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
previous checkpoint: a crash, a kill or a full disk mid-write leaves the previous one intact.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ctmarl.errors import CheckpointError, OutputError

FORMAT = "ctmarl-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".ckpt"
#: Default time between checkpoints: a killed run loses at most this much training. Writing costs
#: about as much as the replay's size (GBs at the standard predator-prey tier), hence not shorter.
DEFAULT_EVERY_SECONDS = 600.0
_KEYS = ("identity", "env_steps", "updates", "versions", "state")


def checkpoint_file(record_file: Path) -> Path:
    """The checkpoint path of the run whose record is ``record_file``."""
    return Path(record_file).with_suffix(SUFFIX)


def _serialise(payload: dict[str, Any], handle: BinaryIO) -> None:
    # Into an open file object, not a path: torch reports a failed write to a path as an opaque
    # RuntimeError, while a file object's OSError (ENOSPC, EIO) comes through as it is.
    torch.save(payload, handle)


def write_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically; an OSError becomes an OutputError saying so."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            _serialise(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint exists"
            raise OutputError(f"cannot write checkpoint {path}: {exc.strerror or exc} ({kept})") from None
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed write of ``path`` left behind (they are never read)."""
    pattern = os.path.join(glob.escape(str(Path(path).parent)), f".{glob.escape(Path(path).name)}.*.tmp")
    for stale in glob.glob(pattern):
        Path(stale).unlink(missing_ok=True)


def refused_global(exc: BaseException) -> str | None:
    """``"GLOBAL module.Class"`` when ``exc`` is a ``weights_only`` load refusing an object, else None."""
    found = re.search(r"(?:Unsupported global: |unsupported )(GLOBAL [\w.]+)", str(exc))
    return found.group(1) if found else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint's structure; any problem is a CheckpointError (file untouched)."""
    path = Path(path)
    keep = "it was left as it is; delete it to start the run over"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # truncated zip, foreign or unsafe pickle: torch raises many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        refused = refused_global(exc)
        if refused is not None:
            # A complete file holding an object a weights_only load refuses: written by a ctmarl
            # older than the method-state check (ctmarl.contract), with a method whose state_dict()
            # holds such an object. The file is intact; the method has to change.
            raise CheckpointError(
                f"checkpoint {path} holds an object that a weights_only load refuses ({refused}): the "
                f"method's state_dict() must hold only tensors, numbers, strings, lists and dicts; fix the "
                f"method (or, if nobody's method wrote it, distrust the file), then delete the checkpoint to "
                "start the run over; it was left as it is") from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason[:160]}); {keep}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ctmarl checkpoint; {keep}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {payload.get('format_version')!r}; "
                              f"this ctmarl reads version {FORMAT_VERSION}; {keep}")
    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing[0]!r} (corrupt); {keep}")
    return payload


def check_identity(payload: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint written for another run than ``identity`` describes, naming the difference."""
    theirs = payload["identity"]
    differing = [key for key in identity if theirs.get(key) != identity[key]]
    if not differing:
        return
    details = []
    for key in differing:
        old, new = theirs.get(key), identity[key]
        if isinstance(old, dict) and isinstance(new, dict):
            subkeys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            old = {k: old.get(k) for k in subkeys}
            new = {k: new.get(k) for k in subkeys}
        if key == "config_hash":
            old, new = str(old)[:12], str(new)[:12]
        details.append(f"{key}: checkpoint {old!r}, requested {new!r}")
    raise CheckpointError(
        f"checkpoint {path} was written by a different run ({'; '.join(details)}); refusing to resume "
        f"it. It was left as it is: run with the settings it was written with, or delete it to start over")


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """torch's global generators (CPU, and the device's CUDA one): network (re)initialisation
    draws from them, e.g. a method re-initialising layers."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_global_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class CheckpointWriter:
    """Writes one run's checkpoints to ``path``, whenever the runner asks (Ctrl-C) and when
    :meth:`due`: each time the run's env steps cross a multiple of ``every_env_steps`` (the same
    places in every run of it), or with ``every_env_steps=None`` every ``every_seconds`` of wall time."""

    path: Path
    identity: dict[str, Any]
    every_env_steps: int | None = None
    every_seconds: float = DEFAULT_EVERY_SECONDS
    #: Env steps of the latest checkpoint written or resumed from (None: none yet).
    last_env_steps: int | None = None
    _last_time: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.every_env_steps is not None and self.every_env_steps < 1:
            raise ValueError(f"every_env_steps must be >= 1 or None, got {self.every_env_steps}")
        self._last_time = time.monotonic()

    def due(self, env_steps: int) -> bool:
        """Whether a checkpoint is due at a safe point where the run has trained ``env_steps``."""
        if self.every_env_steps is None:
            return time.monotonic() - self._last_time >= self.every_seconds
        return env_steps // self.every_env_steps > (self.last_env_steps or 0) // self.every_env_steps

    def write(self, state: dict[str, Any], env_steps: int, updates: int) -> None:
        import ctmarl

        payload = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "identity": self.identity,
            "env_steps": env_steps, "updates": updates,
            "versions": {"ctmarl": ctmarl.__version__, "torch": str(torch.__version__)},
            "state": state,
        }
        write_checkpoint(payload, self.path)
        self.last_env_steps = env_steps
        self._last_time = time.monotonic()

    def describe(self) -> str:
        """Where the run's latest checkpoint is, for error messages."""
        if self.last_env_steps is None:
            return "no checkpoint had been written yet"
        return f"its last checkpoint (env step {self.last_env_steps}) is kept at {self.path}"


class InterruptRequest:
    """Set by Ctrl-C (SIGINT) or SIGTERM while a run can checkpoint; the runner stops at its next
    safe point. ``signal_name`` says which signal asked first."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = "SIGINT"


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[InterruptRequest]:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a request the runner honours between two
    collections, where its state is consistent and can be checkpointed; a second Ctrl-C stops at
    once. SIGTERM is what cluster schedulers and Ray send before killing a job: it never
    escalates, so a job that gets it twice (from the scheduler and from its parent) still
    checkpoints.

    Only in the main thread (the only one signals reach), and for each signal only where it still
    has Python's default handling, so a host application's own handlers (and a SIGINT that a
    non-interactive shell ignores for background jobs) are left alone.
    """
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame) -> None:
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not request.requested:
            request.signal_name = signal.Signals(signum).name
        request.requested = True

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {}
    for signum, default in defaults.items():
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
