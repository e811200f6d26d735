"""One run, end to end: resolve names -> seed -> build learner and method -> run -> record."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctmarl.checkpoint import (
    CheckpointWriter, check_identity, checkpoint_file, deferred_interrupts, read_checkpoint, remove_stale_temporaries,
)
from ctmarl.config import stable_hash, to_plain
from ctmarl.contract import call_method
from ctmarl.envs.base import BatchedEnv
from ctmarl.errors import CheckpointError, CtmarlError, OutputError
from ctmarl.learner import make_learner
from ctmarl.method import canonical_method_name, load_method_config, make_method
from ctmarl.protocol import ProgressFn, RunResult, Training
from ctmarl.record import (
    SCHEMA_VERSION, config_hash, ensure_writable, provenance, record_filename, seal, write_record,
)
from ctmarl.registry import LEARNERS, METHODS
from ctmarl.runlog import DEFAULT_LOGGERS, RunLog, require_loggers
from ctmarl.scenario import make_scenario
from ctmarl.source import method_source


@dataclass(frozen=True)
class RunSpec:
    """What identifies one run."""

    scenario: str
    algo: str = "none"
    tier: str = "quick"
    learner: str = "qmix"
    seed: int = 0
    device: str = "cpu"
    #: Log neuron-level metrics every this many updates (0 = off). Measurement only.
    neuron_every_updates: int = 50
    #: YAML file of method config overrides, applied over the method's shipped defaults (None:
    #: the defaults). The resolved config is what the record holds and config_hash covers.
    method_config: str | None = None


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CtmarlError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CtmarlError(f"--device {name!r}: CUDA is not available on this machine")
    return device


@dataclass
class PreparedRun:
    """A run whose every input has been resolved and checked: nothing can fail on bad input now."""

    spec: RunSpec
    scenario: Any
    learner: Any
    method: Any
    out: Path | None
    #: The run in progress (method attached; restored from the checkpoint when resuming).
    training: Training | None = None
    #: Where this run's checkpoint goes (None: no output folder, so no checkpoints).
    checkpoint_path: Path | None = None
    #: Env steps between checkpoints (None: every DEFAULT_EVERY_SECONDS; 0: none).
    checkpoint_every: int | None = 0
    #: What a checkpoint must match to be resumed into this run (see ctmarl.checkpoint).
    identity: dict[str, Any] | None = None
    #: Env steps the run had trained in the checkpoint it resumes from (0: a fresh start).
    resumed_env_steps: int = 0

    @property
    def total_env_steps(self) -> int:
        return self.scenario.tier(self.spec.tier).env_steps_per_task * self.scenario.n_tasks


def prepare(spec: RunSpec, out: Path | None, *, resume: bool = False,
            checkpoint_every: int | None = None, log: tuple[str, ...] = DEFAULT_LOGGERS) -> PreparedRun:
    """Resolve names, check configs, device and output folder, seed, build learner and method.

    With an output folder the run writes a checkpoint to :func:`checkpoint_path` every
    ``checkpoint_every`` env steps (None: every ``ctmarl.checkpoint.DEFAULT_EVERY_SECONDS`` of
    training; 0: never) and on Ctrl-C. ``resume`` continues from that checkpoint when
    there is one (and starts from the beginning when there is none); without ``resume`` an
    existing checkpoint is an error, so an interrupted run is never overwritten by accident.

    ``log``: the live loggers (:mod:`ctmarl.runlog`) writing beside the record; with an output
    folder only. A logger whose package is missing fails here, before anything is written.
    """
    require_loggers(log)
    scenario = make_scenario(spec.scenario)
    tier = scenario.tier(spec.tier)
    device = resolve_device(spec.device)
    method = _make_method(spec)
    if out is not None:
        ensure_writable(out)
    torch.manual_seed(spec.seed)
    learner = make_learner(
        spec.learner, scenario.env_info(spec.tier), dict(tier.learner), device=device, seed=spec.seed,
        where=f"{scenario.source}: tiers.{spec.tier}.learner",
    )
    prepared = PreparedRun(spec, scenario, learner, method, out)
    prepared.training = Training(scenario, spec.tier, learner, method, spec.seed, spec.neuron_every_updates)
    if out is not None:
        _prepare_checkpoints(prepared, resume, checkpoint_every)
        if log:
            training = prepared.training
            prepared.training.log = RunLog(
                log, Path(out), prepared.checkpoint_path.stem,
                resume_rows=training.position.log_rows if prepared.resumed_env_steps else None,
                resume_env_steps=prepared.resumed_env_steps,
                config={k: v for k, v in (prepared.identity or {}).items() if k != "config_hash"})
    return prepared


def checkpoint_path(spec: RunSpec, out: Path) -> Path:
    """Where run ``spec`` with output folder ``out`` keeps its checkpoint: ``<record stem>.ckpt``."""
    scenario = make_scenario(spec.scenario)
    method = _make_method(spec)
    names = {"scenario": {"name": scenario.name, "version": scenario.version, "tier": spec.tier},
             "learner": {"name": spec.learner}, "method": method_block(spec.algo, method), "seed": spec.seed}
    return checkpoint_file(Path(out) / record_filename(names))


def _make_method(spec: RunSpec):
    """Method ``spec.algo`` with its shipped defaults and ``spec.method_config``'s overrides."""
    overrides = None if spec.method_config is None else load_method_config(spec.method_config)
    return make_method(spec.algo, overrides, where=spec.method_config or "method config")


def method_block(algo: str, method) -> dict[str, Any]:
    """The record's ``method`` block. A config other than the method's shipped defaults (a
    ``--method-config`` that changes something) adds ``variant``, the first 8 hex digits of the
    config's hash: the record's file name carries it, so a variant never overwrites the default
    run's record (or another variant's) in the same folder."""
    algo = canonical_method_name(algo)
    config = to_plain(method.config)
    block = {"name": algo, "entry_point": METHODS.entry_point(algo), "config": config}
    if config != to_plain(make_method(algo).config):
        block["variant"] = stable_hash(config)[:8]
    return block


def _prepare_checkpoints(prepared: PreparedRun, resume: bool, checkpoint_every: int | None) -> None:
    spec, scenario = prepared.spec, prepared.scenario
    if checkpoint_every is not None and checkpoint_every < 0:
        raise CtmarlError(f"--checkpoint-every must be >= 0 env steps (0 = no checkpoints), got {checkpoint_every}")
    block = run_identity(spec, scenario, prepared.learner, prepared.method)
    path = checkpoint_file(Path(prepared.out) / record_filename(block))
    prepared.checkpoint_path, prepared.checkpoint_every = path, checkpoint_every
    # What else changes the record's numbers besides config_hash: neuron logging, CPU vs CUDA.
    prepared.identity = {
        "config_hash": config_hash(block), "scenario_definition_hash": block["scenario"]["definition_hash"],
        "learner_config": block["learner"]["config"], "method_config": block["method"]["config"],
        "seed": spec.seed, "neuron_every_updates": spec.neuron_every_updates, "device": prepared.learner.device.type,
    }
    family = scenario.tasks(spec.tier)[0].family
    if (checkpoint_every != 0 or resume) and family.state_dict is BatchedEnv.state_dict:
        raise CheckpointError(f"env family {family.__name__} cannot be checkpointed (it has no state_dict); "
                              "run with --checkpoint-every 0 and without --resume")
    remove_stale_temporaries(path)
    if not path.exists():
        return
    if not resume:
        raise CheckpointError(f"{path} holds a checkpoint of this run, left by an interrupted run: pass "
                              "--resume to continue it, or delete it to start over")
    payload = read_checkpoint(path)
    check_identity(payload, prepared.identity, path)
    try:
        prepared.training.load_state_dict(payload["state"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {reason}); it "
                              "was left as it is: was it written by another ctmarl version? Delete it to "
                              "start over") from None
    prepared.resumed_env_steps = int(payload["env_steps"])


def execute(prepared: PreparedRun, progress: ProgressFn | None = None) -> tuple[dict[str, Any], Path | None]:
    """Train (on from the checkpoint being resumed, if any), build the record, write it into
    ``prepared.out`` (if any), then delete the run's checkpoint. Returns (record, path).

    Raises :class:`~ctmarl.errors.RunInterrupted` on Ctrl-C (after writing a checkpoint) and
    :class:`~ctmarl.errors.NonFiniteLossError` on a NaN/inf loss (keeping the last checkpoint).
    """
    spec, training = prepared.spec, prepared.training
    writer = None
    if prepared.checkpoint_path is not None and prepared.checkpoint_every != 0:
        writer = CheckpointWriter(prepared.checkpoint_path, prepared.identity, prepared.checkpoint_every,
                                  last_env_steps=prepared.resumed_env_steps or None)
    try:
        with deferred_interrupts() if writer is not None else contextlib.nullcontext() as interrupt:
            result = training.train(progress, writer, interrupt)
    finally:
        if training.log is not None:
            training.log.close()
    record = build_record(spec, prepared.scenario, prepared.learner, prepared.method, result)
    if prepared.out is None:
        return record, None
    try:
        path = write_record(record, prepared.out)
    except OutputError as exc:
        raise OutputError(f"{exc}; {_checkpoint_finished_run(training, writer)}") from None
    if prepared.checkpoint_path is not None:
        prepared.checkpoint_path.unlink(missing_ok=True)
    return record, path


def _checkpoint_finished_run(training: Training, writer: CheckpointWriter | None) -> str:
    """After a failed record write: keep the finished training in a checkpoint if at all possible."""
    if writer is None:
        return "the run was not checkpointed, so it must be run again"
    try:
        writer.write(training.state_dict(), training.result.env_steps, training.result.updates)
    except OutputError:
        return f"{writer.describe()}: make room and run the same command with --resume"
    return (f"the finished run was checkpointed to {writer.path}: make room and run the same command "
            "with --resume to write its record without training again")


def evaluate(
    spec: RunSpec,
    out: Path | None,
    progress: ProgressFn | None = None,
    *,
    resume: bool = False,
    checkpoint_every: int | None = None,
    log: tuple[str, ...] = DEFAULT_LOGGERS,
) -> tuple[dict[str, Any], Path | None]:
    """Run ``spec`` and write its record into ``out`` (if given). Returns (record, path).

    Checkpoints (``checkpoint_every`` env steps), ``resume`` and live logs (``log``): see :func:`prepare`.
    """
    return execute(prepare(spec, out, resume=resume, checkpoint_every=checkpoint_every, log=log), progress)


def run_identity(spec: RunSpec, scenario, learner, method) -> dict[str, Any]:
    """The record fields that define a run, which ``config_hash`` covers: scenario (with the hash
    of its definition) and tier, learner and method with their resolved configs, seed."""
    first_task = scenario.tasks(spec.tier)[0]
    family = first_task.family
    notes_for = getattr(family, "notes_for", None)  # notes that depend on the settings (backend)
    notes = notes_for(first_task.settings) if notes_for else getattr(family, "record_notes", None)
    return {
        "scenario": {
            "name": scenario.name,
            "version": scenario.version,
            "tier": spec.tier,
            "definition_hash": scenario.definition_hash,
            "env_family": scenario.spec.env.family,
            "score": family.score_meaning,
            "notes": notes,
        },
        "learner": {"name": spec.learner, "entry_point": LEARNERS.entry_point(spec.learner),
                    "config": to_plain(learner.config)},
        "method": method_block(spec.algo, method),
        "seed": spec.seed,
    }


def build_record(spec: RunSpec, scenario, learner, method, result: RunResult) -> dict[str, Any]:
    wall_time_s = result.wall_time_s
    identity = run_identity(spec, scenario, learner, method)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        **identity,
        "config_hash": None,
        # resumed_at_env_steps: where a checkpointed run was continued ([] = one uninterrupted
        # segment); wall_time_s sums the segments.
        # provenance.method: the method's own code (ctmarl.source); outside config_hash.
        "provenance": {**provenance(str(learner.device)), "resumed_at_env_steps": result.resumed_at_env_steps,
                       "method": method_source(identity["method"]["entry_point"])},
        "timing": {
            "wall_time_s": round(wall_time_s, 3),
            "env_steps": result.env_steps,
            "env_steps_per_s": round(result.env_steps / max(wall_time_s, 1e-9), 1),
            "updates": result.updates,
        },
        "tasks": result.task_names,
        "task_definition": result.task_definition,
        "curves": rounded(result.curves),
        "R": rounded(result.R),
        "R_return": rounded(result.R_return),
        "metrics": rounded({**result.summary(), "q_tot_mse_per_task": result.q_tot_mse or None}),
        "neurons": rounded(result.neurons),
        # Trainability at each task end (ctmarl.probe): a measurement, never part of config_hash.
        "plasticity_probe": rounded(result.plasticity_probe),
        # What the method did (not part of config_hash: it is an outcome, not a setting).
        "method_summary": rounded(call_method(method, "summary", "at the end of the run")),
        # The method contract as the run checked it (ctmarl.contract); an outcome too.
        "contract": result.contract or None,
        "content_hash": None,
    }
    return seal(record)


#: Decimal places kept for measured numbers in records: scores are computed in float32, whose
#: trailing digits are noise; rounding keeps records readable and hashes stable across dumps.
RECORD_DECIMALS = 6


def rounded(data: Any, decimals: int = RECORD_DECIMALS) -> Any:
    """Floats in nested dicts/lists rounded to ``decimals`` places."""
    if isinstance(data, float):
        return round(data, decimals)
    if isinstance(data, dict):
        return {k: rounded(v, decimals) for k, v in data.items()}
    if isinstance(data, list):
        return [rounded(v, decimals) for v in data]
    return data
