"""One run, end to end: resolve names -> seed -> build learner and method -> run -> record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctmarl.config import stable_hash, to_plain
from ctmarl.errors import CtmarlError
from ctmarl.learner import make_learner
from ctmarl.method import make_method
from ctmarl.protocol import ProgressFn, RunResult, run
from ctmarl.record import SCHEMA_VERSION, ensure_writable, provenance, seal, write_record
from ctmarl.registry import LEARNERS, METHODS
from ctmarl.scenario import make_scenario


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

    @property
    def total_env_steps(self) -> int:
        return self.scenario.tier(self.spec.tier).env_steps_per_task * len(self.scenario.spec.tasks)


def prepare(spec: RunSpec, out: Path | None) -> PreparedRun:
    """Resolve names, check configs, device and output folder, seed, and build learner and method."""
    scenario = make_scenario(spec.scenario)
    tier = scenario.tier(spec.tier)
    device = resolve_device(spec.device)
    method = make_method(spec.algo)
    if out is not None:
        ensure_writable(out)
    torch.manual_seed(spec.seed)
    learner = make_learner(
        spec.learner, scenario.env_info(spec.tier), dict(tier.learner), device=device, seed=spec.seed,
        where=f"{scenario.source}: tiers.{spec.tier}.learner",
    )
    return PreparedRun(spec, scenario, learner, method, out)


def execute(prepared: PreparedRun, progress: ProgressFn | None = None) -> tuple[dict[str, Any], Path | None]:
    """Train, build the record, write it into ``prepared.out`` (if any). Returns (record, path)."""
    spec = prepared.spec
    result = run(prepared.scenario, spec.tier, prepared.learner, prepared.method, spec.seed,
                 progress=progress, neuron_every_updates=spec.neuron_every_updates)
    record = build_record(spec, prepared.scenario, prepared.learner, prepared.method, result)
    path = write_record(record, prepared.out) if prepared.out is not None else None
    return record, path


def evaluate(spec: RunSpec, out: Path | None, progress: ProgressFn | None = None) -> tuple[dict[str, Any], Path | None]:
    """Run ``spec`` and write its record into ``out`` (if given). Returns (record, path)."""
    return execute(prepare(spec, out), progress)


def build_record(spec: RunSpec, scenario, learner, method, result: RunResult) -> dict[str, Any]:
    wall_time_s = result.wall_time_s
    family = scenario.tasks(spec.tier)[0].family
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scenario": {
            "name": scenario.name,
            "version": scenario.version,
            "tier": spec.tier,
            "definition_hash": stable_hash(scenario.spec),
            "env_family": scenario.spec.env.family,
            "score": family.score_meaning,
            "notes": getattr(family, "record_notes", None),
        },
        "learner": {"name": spec.learner, "entry_point": LEARNERS.entry_point(spec.learner),
                    "config": to_plain(learner.config)},
        "method": {"name": spec.algo, "entry_point": METHODS.entry_point(spec.algo),
                   "config": to_plain(method.config)},
        "seed": spec.seed,
        "config_hash": None,
        "provenance": provenance(str(learner.device)),
        "timing": {
            "wall_time_s": round(wall_time_s, 3),
            "env_steps": result.env_steps,
            "env_steps_per_s": round(result.env_steps / max(wall_time_s, 1e-9), 1),
            "updates": result.updates,
        },
        "tasks": result.task_names,
        "curves": rounded(result.curves),
        "R": rounded(result.R),
        "R_return": rounded(result.R_return),
        "metrics": rounded({**result.summary(), "q_tot_mse_per_task": result.q_tot_mse or None}),
        "neurons": rounded(result.neurons),
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
