"""Sweeps: many runs (scenarios x tiers x learners x methods x seeds) through an executor (DESIGN.md §11).

A sweep is the product of its axes. Each run is a self-contained task, one
:func:`ctmarl.evaluate.evaluate` call that writes its own record (and checkpoints beside it), so:

- the whole sweep is validated before any run starts: an unknown scenario, tier, learner, method
  or device, or a config that does not fit one combination, is one :class:`~ctmarl.errors.CtmarlError`
  and nothing is written;
- a run whose valid record already exists in the output folder, with the same ``config_hash``,
  neuron-logging interval and device type, is skipped; an interrupted run continues from its
  checkpoint (``resume=True``), so re-running an interrupted sweep finishes it with the same
  numbers an uninterrupted one gives;
- a run that fails is reported with its error (the traceback goes to ``<record stem>.error.log``
  in the output folder) and the other runs go on; a worker process that dies is retried up to
  ``retries`` times (resuming from its checkpoint), then reported;
- Ctrl-C stops the sweep after the running runs wrote a checkpoint; run it again to continue.

Two sweeps must not write into one folder at the same time (each would take the other's runs as
its own interrupted ones).

Executors:

============  ===============================================================================
``inline``    one run after another in this process (the default)
``pool``      a local process pool (``concurrent.futures.ProcessPoolExecutor``, spawn start)
``ray``       Ray tasks on a local instance or a cluster (``--address``); needs the ``ray`` extra;
              ctmarl (and any plug-in a sweep names) must be installed on every node
============  ===============================================================================

Worker processes (pool, Ray) pin torch, OpenMP and MKL to ``threads`` threads, 1 by default:
runs side by side on a few cores each using every core oversubscribe the machine (on 2 cores a
9 s run took 5 minutes). The inline executor keeps torch's thread count unless ``threads`` is
given. CPU reductions depend on the thread count, so records are bit-identical across executors
when they run with the same ``threads`` (records hold it as ``provenance.torch_threads``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ctmarl.config import from_mapping, read_yaml
from ctmarl.errors import ConfigError, CtmarlError, RecordError, RunInterrupted, UnknownNameError, shorten
from ctmarl.progress import ProgressLines

EXECUTORS = ("inline", "pool", "ray")
#: Status of a run in a sweep's report.
DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: the product of the axes, with the settings every run shares.

    A sweep YAML file holds these keys (all but ``scenarios`` optional)::

        scenarios: [matrix_drift, predator_prey_penalty]
        tiers: [quick]
        learners: [qmix, qplex]
        algos: [none, reset, knife]
        seeds: [0, 1, 2]
        method_configs: {knife: knife_fast.yaml}   # per method; paths relative to the sweep file
    """

    scenarios: tuple[str, ...]
    """Scenario ids or YAML paths."""
    algos: tuple[str, ...] = ("none",)
    """Plasticity methods: registered names or ``package.module:Class``."""
    tiers: tuple[str, ...] = ("quick",)
    learners: tuple[str, ...] = ("qmix",)
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    """torch device of every run."""
    neuron_every: int = 50
    """Neuron metrics every N updates (0 = off)."""
    checkpoint_every: int | None = None
    """Env steps between checkpoints (None: ``evaluate``'s default; 0: none)."""
    method_config: str | None = None
    """A YAML file of method config overrides applied to every method of the sweep."""
    method_configs: Mapping[str, Any] = field(default_factory=dict)
    """Per method: a YAML file of its config overrides (wins over ``method_config``)."""

    def __post_init__(self) -> None:
        for axis in ("scenarios", "algos", "tiers", "learners", "seeds"):
            if not getattr(self, axis):
                raise ValueError(f"{axis}: at least one value is required")
        if self.neuron_every < 0:
            raise ValueError(f"neuron_every: must be >= 0, got {self.neuron_every}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        for algo, path in self.method_configs.items():
            if not isinstance(path, str):
                raise ValueError(f"method_configs.{shorten(algo)}: expected a file path, got {shorten(repr(path))}")


def load_sweep_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """A sweep YAML (see :class:`SweepSpec`), with ``overrides`` (e.g. from the command line) on
    top; relative method-config paths are taken relative to the file."""
    path = Path(path)
    data = read_yaml(path, str(path), what="sweep file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping of keys ({', '.join(_sweep_keys())})")

    def relative(value: Any) -> Any:
        if isinstance(value, str) and not Path(value).is_absolute():
            return str(path.parent / value)
        return value

    if "method_config" in data:
        data["method_config"] = relative(data["method_config"])
    if isinstance(data.get("method_configs"), dict):
        data["method_configs"] = {k: relative(v) for k, v in data["method_configs"].items()}
    return from_mapping(SweepSpec, {**data, **(overrides or {})}, str(path))


def _sweep_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(SweepSpec)]


def expand(sweep: SweepSpec) -> list:
    """The sweep's runs as :class:`ctmarl.evaluate.RunSpec` (scenario, tier, learner, method, seed
    nested in that order; a value given twice runs once)."""
    from ctmarl.evaluate import RunSpec

    runs = []
    for scenario in dict.fromkeys(sweep.scenarios):
        for tier in dict.fromkeys(sweep.tiers):
            for learner in dict.fromkeys(sweep.learners):
                for algo in dict.fromkeys(sweep.algos):
                    for seed in dict.fromkeys(sweep.seeds):
                        runs.append(RunSpec(
                            scenario=scenario, algo=algo, tier=tier, learner=learner, seed=seed,
                            device=sweep.device, neuron_every_updates=sweep.neuron_every,
                            method_config=sweep.method_configs.get(algo, sweep.method_config)))
    return runs


# --- validation and planning ----------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedRun:
    """One validated run of a sweep and what a record must match to count as already done."""

    index: int
    spec: Any  # ctmarl.evaluate.RunSpec
    label: str
    record_path: Path
    config_hash: str
    device_type: str
    checkpoint_every: int | None = None

    def matches(self, record: Mapping[str, Any]) -> str | None:
        """None if ``record`` is this run's finished record, else what differs."""
        if record["config_hash"] != self.config_hash:
            return "config_hash differs (scenario, learner or method config, or seed)"
        if record.get("neurons", {}).get("every_updates") != self.spec.neuron_every_updates:
            return "neuron-metrics interval differs"
        if str(record["provenance"].get("device", "")).split(":")[0] != self.device_type:
            return "device type differs"
        return None


def plan(sweep: SweepSpec, out: Path) -> list[PlannedRun]:
    """Validate every run of ``sweep`` and compute its record path; raise a CtmarlError on the first
    problem, before anything is written.

    Each axis value is checked alone first (so the error names it as in a single run); then each
    distinct combination is built once (learner, method and its config file, without training),
    which catches a config that does not fit one combination.
    """
    from ctmarl.evaluate import prepare, resolve_device, run_identity
    from ctmarl.method import method_class
    from ctmarl.record import config_hash, record_filename
    from ctmarl.registry import LEARNERS
    from ctmarl.scenario import TIER_NAMES, make_scenario

    scenarios = {name: make_scenario(name) for name in sweep.scenarios}
    for tier in sweep.tiers:
        if tier not in TIER_NAMES:
            raise UnknownNameError(f"unknown tier {tier!r}; known: {', '.join(TIER_NAMES)}")
    for learner in sweep.learners:
        cls = LEARNERS.load(learner)
        if not (isinstance(cls, type) and hasattr(cls, "Config")):
            raise UnknownNameError(f"learner {learner!r} resolves to {cls!r}, which has no Config")
    for algo in sweep.algos:
        method_class(algo)
    device = resolve_device(sweep.device)

    planned: list[PlannedRun] = []
    by_path: dict[Path, PlannedRun] = {}
    blocks: dict[tuple, dict[str, Any]] = {}
    for spec in expand(sweep):
        key = (spec.scenario, spec.tier, spec.learner, spec.algo, spec.method_config)
        label = f"{scenarios[spec.scenario].id} {spec.tier} {spec.learner}+{spec.algo}"
        if key not in blocks:
            try:
                prepared = prepare(spec, None)
            except CtmarlError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            blocks[key] = run_identity(spec, prepared.scenario, prepared.learner, prepared.method)
        block = {**blocks[key], "seed": spec.seed}
        path, run_hash = Path(out) / record_filename(block), config_hash(block)
        if path in by_path:  # e.g. matrix_drift and matrix_drift-v1: one run, one record
            if by_path[path].config_hash != run_hash:
                raise ConfigError(f"{by_path[path].label} and {label} seed {spec.seed} are different runs that "
                                  f"would write the same record {path.name}; sweep them into different --out folders")
            continue
        by_path[path] = PlannedRun(len(planned), spec, f"{label} seed {spec.seed}", path, run_hash, device.type,
                                   sweep.checkpoint_every)
        planned.append(by_path[path])
    return planned


def finished_record(run: PlannedRun) -> tuple[bool, str | None]:
    """(done, note): whether ``run``'s valid record exists; a note says why one that exists is not it."""
    from ctmarl.record import load_record

    if not run.record_path.exists():
        return False, None
    try:
        record = load_record(run.record_path)
    except RecordError as exc:
        return False, f"existing record is invalid ({exc}); running again"
    differs = run.matches(record)
    if differs is not None:
        return False, f"existing record {run.record_path.name} is of another run ({differs}); running again"
    return True, None


# --- one run, anywhere ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs for one run (plain data: it travels to other processes)."""

    index: int
    spec: Any  # ctmarl.evaluate.RunSpec
    label: str
    out: str
    threads: int | None
    checkpoint_every: int | None
    #: Live loggers of the run (ctmarl.runlog).
    log: tuple[str, ...] = ("csv",)
    #: Seconds between the run's progress lines on stderr (None: none).
    progress_every: float | None = None


@dataclass
class RunOutcome:
    """What became of one run of a sweep."""

    index: int
    label: str
    status: str
    record_path: str | None = None
    error: str | None = None
    wall_time_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def configure_process(threads: int | None) -> None:
    """Process settings for training: ``threads`` torch/OpenMP/MKL threads (None: leave as is), and
    PyTorch's transparent-huge-page allocation for large CPU tensors.

    The huge pages cut the page faults of the big per-update temporaries about tenfold (the TD
    update of a 128-episode batch allocates over a GB of short-lived tensors); they change no
    number. PyTorch reads ``THP_MEM_ALLOC_ENABLE`` at its first large allocation, so this must run
    before the first run of the process; a value the user set is kept.
    """
    import torch

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)  # for libraries that start their own pools later
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


#: In a pool worker process (set by its initializer): whether it has been stopped.
_WORKER = {"pool": False, "stopped": False}


def run_task(task: RunTask) -> RunOutcome:
    """Run one task (in any process) and say what became of it; never raises for a failed run.

    The run resumes from its checkpoint when there is one. Its traceback, if it fails, goes to
    ``<record stem>.error.log`` beside where its record would be (removed when it succeeds).

    A pool worker whose run was interrupted (SIGTERM or Ctrl-C, checkpointed) starts no other run:
    the pool hands each worker runs from a queue that already holds the next ones, which
    ``cancel_futures`` cannot take back, so without this a stopped sweep's workers would go on
    computing them. They come back INTERRUPTED, not started.
    """
    from ctmarl.evaluate import prepare, execute

    if _WORKER["stopped"]:
        return RunOutcome(task.index, task.label, INTERRUPTED, error="not started: its worker was stopped")
    configure_process(task.threads)
    started = time.perf_counter()
    try:
        prepared = prepare(task.spec, Path(task.out), resume=True, checkpoint_every=task.checkpoint_every,
                           log=task.log)
        progress = None
        if task.progress_every is not None:
            progress = ProgressLines(task.label, prepared.total_env_steps, prepared.scenario.n_tasks,
                                     done=prepared.resumed_env_steps, every_s=task.progress_every)
        record, path = execute(prepared, progress)
    except RunInterrupted as exc:
        if _WORKER["pool"]:  # a run in the caller's own process leaves the process usable
            _WORKER["stopped"] = True
        return RunOutcome(task.index, task.label, INTERRUPTED, error=str(exc),
                          wall_time_s=time.perf_counter() - started)
    except Exception as exc:  # one failed run is reported; the sweep goes on
        return RunOutcome(task.index, task.label, FAILED, error=_one_line(exc),
                          wall_time_s=time.perf_counter() - started, note=_write_error_log(task, exc))
    _error_log_path(path).unlink(missing_ok=True)
    metrics = record["metrics"]
    return RunOutcome(task.index, task.label, DONE, str(path), wall_time_s=time.perf_counter() - started,
                      metrics={"auc": metrics["auc"], "performance": metrics["performance"],
                               "env_steps_per_s": record["timing"]["env_steps_per_s"]})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_log_path(record_path: Path) -> Path:
    return Path(record_path).with_suffix(".error.log")


def _write_error_log(task: RunTask, exc: BaseException) -> str | None:
    from ctmarl.evaluate import checkpoint_path

    try:
        path = _error_log_path(checkpoint_path(task.spec, Path(task.out)))
        path.write_text(f"{task.label}\n\n" + "".join(traceback.format_exception(exc)))
        return f"traceback in {path}"
    except Exception:  # the report still has the error line
        return None


# --- executors ------------------------------------------------------------------------------------

OnDone = Callable[[RunOutcome], None]


class InlineExecutor:
    """Runs one after another in this process; stops the sweep at an interrupted run (Ctrl-C)."""

    name = "inline"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def map(self, tasks: list[RunTask], on_done: OnDone) -> None:
        import torch

        before = torch.get_num_threads()
        try:
            for task in tasks:
                outcome = run_task(dataclasses.replace(task, threads=self.threads))
                on_done(outcome)
                if outcome.status == INTERRUPTED:
                    raise KeyboardInterrupt
        finally:
            torch.set_num_threads(before)  # the caller's process keeps its own setting


def _start_worker(threads: int | None) -> None:
    _WORKER["pool"] = True
    configure_process(threads)


class PoolExecutor:
    """A local process pool: ``workers`` processes started with ``spawn`` (no state inherited from
    this process), each pinned to ``threads`` threads (default 1).

    If a worker process dies (the pool breaks), the runs it was holding are retried in a new pool
    up to ``retries`` times, then reported as failed.
    """

    name = "pool"

    def __init__(self, workers: int, threads: int | None = None, retries: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.threads, self.retries = workers, 1 if threads is None else threads, retries

    def start(self) -> None:
        pass  # a pool lives for one map(): a broken one is replaced there

    def close(self) -> None:
        pass

    def _tasks(self, tasks: list[RunTask]) -> list[RunTask]:
        return [dataclasses.replace(t, threads=self.threads) for t in tasks]

    def map(self, tasks: list[RunTask], on_done: OnDone) -> None:
        with sigterm_as_keyboard_interrupt():
            self._map(tasks, on_done)

    def _map(self, tasks: list[RunTask], on_done: OnDone) -> None:
        pending = self._tasks(tasks)
        attempts = {t.index: 0 for t in pending}
        while pending:
            broken: list[RunTask] = []
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=min(self.workers, len(pending)), mp_context=context,
                initializer=_start_worker, initargs=(self.threads,))
            stopping = True  # until the loop below ends normally
            try:
                futures = {pool.submit(run_task, task): task for task in pending}
                for future in concurrent.futures.as_completed(futures):
                    task = futures[future]
                    try:
                        on_done(future.result())
                    except concurrent.futures.process.BrokenProcessPool as exc:
                        attempts[task.index] += 1
                        if attempts[task.index] > self.retries:
                            on_done(RunOutcome(task.index, task.label, FAILED, error=(
                                f"its worker process died ({_one_line(exc)}), "
                                f"{attempts[task.index]} attempt(s)")))
                        else:
                            broken.append(task)
                stopping = False
            finally:
                if stopping:
                    # Ctrl-C reached the workers too (one process group); SIGTERM (a scheduler, Ray)
                    # may have reached only this process: pass it on, so every running run
                    # checkpoints at its next safe point (SIGTERM never escalates, see
                    # ctmarl.checkpoint.deferred_interrupts).
                    _terminate_workers(pool)
                pool.shutdown(wait=True, cancel_futures=True)
            pending = sorted(broken, key=lambda t: t.index)


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if process.is_alive():
                process.terminate()  # SIGTERM
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    """In the main thread, where SIGTERM has its default handling: SIGTERM raises
    KeyboardInterrupt, so a sweep's parent process stops (and stops its workers) the way Ctrl-C
    stops it instead of dying at once."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handle(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RayExecutor:
    """Ray tasks on the instance at ``address`` or, without one, on a local instance started with
    ``workers`` CPUs (all cores by default) and stopped at the end. Each task asks for ``threads``
    CPUs and ``gpus_per_run`` GPUs (1 for CUDA sweeps: Ray hides GPUs from tasks that ask for none).

    A task whose worker process dies is retried by Ray up to ``retries`` times (the run resumes
    from its checkpoint), then reported as failed. If Ray is already initialised in this process,
    that instance is used as it is.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None,
                 retries: int = 2, gpus_per_run: float = 0.0) -> None:
        self.address, self.workers, self.gpus_per_run = address, workers, gpus_per_run
        self.threads, self.retries = 1 if threads is None else threads, retries
        self._started_here = False

    def start(self) -> None:
        """Connect to (or start) Ray; a CtmarlError if that fails. Called by :func:`run_sweep`."""
        ray = import_ray()
        if ray.is_initialized() or self._started_here:
            return
        options: dict[str, Any] = {"include_dashboard": False}
        if self.address is None and self.workers is not None:
            options["num_cpus"] = self.workers
        try:
            ray.init(address=self.address, **options)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: a user-fixable setup
            where = f"at {self.address!r}" if self.address else "locally"
            raise CtmarlError(f"cannot start or reach Ray {where}: {_one_line(exc)}") from None
        self._started_here = True

    def close(self) -> None:
        """Stop the local Ray instance if :meth:`start` started it."""
        if self._started_here:
            import_ray().shutdown()
            self._started_here = False

    def map(self, tasks: list[RunTask], on_done: OnDone) -> None:
        ray = import_ray()
        self.start()
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_run, max_retries=self.retries)(run_task)
        refs = {}
        try:
            for task in tasks:
                refs[remote.remote(dataclasses.replace(task, threads=self.threads))] = task
            waiting = list(refs)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    task = refs[ref]
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = RunOutcome(task.index, task.label, FAILED, error=(
                            f"Ray could not complete it after {self.retries} retries "
                            f"({_one_line(exc)[:300]})"))
                    on_done(outcome)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)
            raise


def import_ray():
    """Ray, or a CtmarlError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CtmarlError('the ray executor needs Ray: pip install "ctmarl[ray]" (or pip install "ray>=2.9")') from None
    return ray


def make_executor(name: str | None, workers: int | None = None, address: str | None = None,
                  threads: int | None = None, retries: int | None = None, device: str = "cpu"):
    """The executor ``name`` (None: ``pool`` when ``workers`` > 1, else ``inline``) for runs on ``device``."""
    if name is None:
        name = "pool" if workers is not None and workers > 1 else "inline"
    if name not in EXECUTORS:
        raise CtmarlError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise CtmarlError(f"--address is for the ray executor, not {name!r}")
    if name == "inline":
        if workers is not None and workers > 1:
            raise CtmarlError(f"the inline executor runs one run at a time; --workers {workers} needs pool or ray")
        return InlineExecutor(threads)
    if name == "pool":
        return PoolExecutor(workers or os.cpu_count() or 1, threads, 1 if retries is None else retries)
    import_ray()  # fail before anything runs
    return RayExecutor(address, workers, threads, 2 if retries is None else retries,
                       gpus_per_run=1.0 if device.startswith("cuda") else 0.0)


# --- the sweep ------------------------------------------------------------------------------------

@dataclass
class SweepReport:
    """Every run of a sweep, in sweep order, with what became of it."""

    outcomes: list[RunOutcome]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status in (FAILED, INTERRUPTED)]

    @property
    def ok(self) -> bool:
        return not self.failed


def run_sweep(
    runs: list[PlannedRun],
    out: Path,
    executor,
    *,
    on_done: OnDone | None = None,
    on_skip: Callable[[PlannedRun], None] | None = None,
    on_note: Callable[[PlannedRun, str], None] | None = None,
    log: tuple[str, ...] = ("csv",),
    progress_every: float | None = None,
) -> SweepReport:
    """Run the planned runs that have no finished record yet through ``executor``.

    ``on_skip`` hears of each run skipped, ``on_note`` of existing records that are not the run's,
    ``on_done`` of each run as it ends. Returns the report of every run (skipped ones included).
    Each run writes the live logs ``log`` beside its record and, with ``progress_every``, a
    progress line on stderr at most that often (seconds; see :mod:`ctmarl.progress`).
    """
    from ctmarl.checkpoint import remove_stale_temporaries
    from ctmarl.record import ensure_writable

    ensure_writable(out)  # before reading records: a folder that cannot be written fails at once
    outcomes: dict[int, RunOutcome] = {}
    tasks = []
    for run in runs:
        remove_stale_temporaries(run.record_path)  # a record write that a kill cut short
        done, note = finished_record(run)
        if done:
            outcomes[run.index] = RunOutcome(run.index, run.label, SKIPPED, str(run.record_path))
            if on_skip is not None:
                on_skip(run)
            continue
        if note is not None and on_note is not None:
            on_note(run, note)
        tasks.append(RunTask(run.index, run.spec, run.label, str(out), None, run.checkpoint_every,
                             log=tuple(log), progress_every=progress_every))

    def finished(outcome: RunOutcome) -> None:
        outcomes[outcome.index] = outcome
        if on_done is not None:
            on_done(outcome)

    if tasks:
        executor.start()
        try:
            executor.map(tasks, finished)
        finally:
            executor.close()
    return SweepReport([outcomes[run.index] for run in runs if run.index in outcomes])


def describe(runs: Iterable[PlannedRun]) -> str:
    """One line per run, for dry listings."""
    return "\n".join(f"{run.label} -> {run.record_path}" for run in runs)
