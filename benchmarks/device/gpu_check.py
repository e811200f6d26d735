"""The GPU machine's check of ``--device cuda`` (issue #19): correctness end to end, then speed.

Run in one device call by ``benchmarks/device/run.sh`` (which installs ctmarl and the wheels the
machine lacks first), or here, on the CPU, as a dry run of every code path at tiny sizes::

    python benchmarks/device/gpu_check.py --device cuda --out "$OUT"                  # GPU machine
    python benchmarks/device/gpu_check.py --device cpu --quick --out /tmp/gpu_check   # dry run

Checks, in this order; each runs in its own process under a time budget (its share of the whole
``--budget``, never more than what is left). A check stops its own steps when its time is up and
says which it skipped; one that overruns anyway is killed, and its section says so. Every check
writes its part of the report as it goes, so a killed run still leaves a partial report.

``info``         versions, the GPU, JAX's devices; SMAX's zero-copy hand-over; torch's RNG states on
                 the device round-trip (what checkpoints rely on)
``smoke``        every shipped scenario x {qmix, qplex} x {none, knife, redo, injection} at the smoke
                 tier on the device, as one ``ctmarl evaluate`` sweep (a process pool); every record
                 must load with :func:`ctmarl.record.load_record`
``resume``       smoke runs crashed between two collections after some periodic checkpoints, then
                 continued with ``--resume``, against the same runs uninterrupted: curves, R,
                 metrics and neuron logs equal? (CUDA: with deterministic cuBLAS settings)
``matrix``       ``matrix_drift`` quick on the device and on the CPU, same seed: final score per task
                 equal? max |difference| of the score curves and of R. The CPU and CUDA generators
                 draw different numbers, so exploration differs: this compares outcomes, not bits
``envs``         env steps/s of predator-prey's standard world and the SMACv2-like 5v5 world
                 (``benchmarks/bench_envs.py``) at several ``num_envs``
``learners``     QMIX/QPLEX updates/s at predator-prey standard size (8 agents, 200 steps, batch 32)
                 and smacv2_drift standard size, as trained (cuDNN's fused GRU on CUDA) and with the
                 GRUCell loop (``benchmarks/bench_learners.py``); the agent unroll alone (forward +
                 backward), fused vs loop
``concurrency``  N = 1, 2, 4, 8 runs at once (``--workers N --device cuda``) of predator-prey's
                 standard tier cut to one short task: aggregate env steps/s, GPU memory and use

``--out`` receives ``report.md`` (the report), ``results.json`` (every number) and
``records.tar.gz`` (every record written); ``run.sh`` adds ``log.txt``. Runs and scratch go to
``--work`` (default ``/tmp/gpu_check_work_<out name>``), emptied at the start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the sibling bench_* scripts and suite.py

CHECKS = ("info", "smoke", "resume", "matrix", "envs", "learners", "concurrency")
#: Seconds each check may take on the GPU machine: 510 in all, so that with the install and a kill's
#: grace the call ends inside the device's 600 s per command.
BUDGETS = {"info": 40, "smoke": 150, "resume": 60, "matrix": 70, "envs": 45, "learners": 40, "concurrency": 105}
#: The same for the CPU dry run (--quick): caps, not estimates.
QUICK_BUDGETS = {"info": 60, "smoke": 240, "resume": 150, "matrix": 120, "envs": 90, "learners": 90,
                 "concurrency": 150}
#: A check with less than this left is not started ("skipped: out of time").
MIN_CHECK_S = 8.0
#: A check process that outlives its budget by this much is killed.
KILL_GRACE_S = 15.0
LEARNERS = ("qmix", "qplex")
SMOKE_METHODS = ("none", "knife", "redo", "injection")


# --- the plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What to run, at which sizes: :func:`make_plan` gives the GPU run's and the dry run's."""

    device: str
    quick: bool
    out: Path
    work: Path
    budget_s: float
    budgets: dict[str, float]
    cpu_threads: int
    smoke_scenarios: tuple[str, ...] | None  # None: every shipped scenario
    smoke_methods: tuple[str, ...]
    smoke_workers: int
    #: (scenario, learner, method) of the resume checks, in order of priority
    resume_runs: tuple[tuple[str, str, str], ...]
    matrix_tier: str
    pp_num_envs: tuple[int, ...]
    smax_num_envs: tuple[int, ...]
    env_steps: int
    env_repeats: int
    learner_rows: tuple[tuple[str, str], ...]  # (scenario, tier) sizes of the learner benchmark
    learner_updates: int
    learner_repeats: int
    concurrency_ns: tuple[int, ...]
    concurrency_tier: str
    concurrency_env_steps: int
    extra: dict[str, Any] = field(default_factory=dict)


def make_plan(device: str, quick: bool, out: Path, work: Path, budget_s: float | None = None) -> Plan:
    cores = os.cpu_count() or 1
    budgets = dict(QUICK_BUDGETS if quick else BUDGETS)
    if quick:
        return Plan(
            device=device, quick=True, out=out, work=work, budget_s=budget_s or sum(budgets.values()),
            budgets=budgets, cpu_threads=1, smoke_scenarios=("matrix_drift",), smoke_methods=("none", "knife"),
            smoke_workers=2, resume_runs=(("matrix_drift", "qmix", "knife"),), matrix_tier="smoke",
            pp_num_envs=(8, 64), smax_num_envs=(8,), env_steps=10, env_repeats=1,
            learner_rows=(("predator_prey_penalty", "standard"),), learner_updates=1, learner_repeats=1,
            concurrency_ns=(1, 2), concurrency_tier="smoke", concurrency_env_steps=400,
        )
    return Plan(
        device=device, quick=False, out=out, work=work, budget_s=budget_s or 510.0, budgets=budgets,
        cpu_threads=min(4, cores), smoke_scenarios=None, smoke_methods=SMOKE_METHODS,
        smoke_workers=max(1, min(12, cores - 2)),
        resume_runs=(("predator_prey_penalty", "qmix", "knife"), ("smacv2_drift", "qplex", "redo"),
                     ("matrix_drift", "qplex", "injection")),
        matrix_tier="quick", pp_num_envs=(8, 64, 1024, 4096), smax_num_envs=(8, 1024, 64), env_steps=100,
        env_repeats=2, learner_rows=(("predator_prey_penalty", "standard"), ("smacv2_drift", "standard")),
        learner_updates=5, learner_repeats=2, concurrency_ns=(1, 2, 4, 8), concurrency_tier="standard",
        concurrency_env_steps=12000,
    )


def allot(check: str, plan: Plan, seconds_left: float) -> float | None:
    """Seconds for ``check``: its budget, cut to what is left of the whole run; None when too little
    is left to start it."""
    budget = min(plan.budgets[check], seconds_left)
    return budget if budget >= MIN_CHECK_S else None


class TimeBox:
    """A deadline: ``left()`` seconds remain; ``has(s)`` whether ``s`` more fit."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def has(self, seconds: float) -> bool:
        return self.left() >= seconds


# --- output ---------------------------------------------------------------------------------------

class Markdown:
    """The report, appended to and flushed to disk line by line (a killed run keeps what it wrote)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def line(self, text: str = "") -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        print(text, flush=True)

    def para(self, text: str) -> None:
        self.line(text)
        self.line()

    def table(self, *columns: str) -> None:
        self.line("| " + " | ".join(columns) + " |")
        self.line("|" + " --- |" * len(columns))

    def row(self, *cells: Any) -> None:
        self.line("| " + " | ".join(_cell(c) for c in cells) + " |")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


class Results:
    """One check's numbers, rewritten to ``path`` (JSON) after every change."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def pack_records(plan: Plan) -> None:
    """Every record written so far (``work/records/**.yaml``) into ``out/records.tar.gz``."""
    folder = plan.work / "records"
    if not folder.exists():
        return
    tmp = plan.out / "records.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as archive:
        for path in sorted(folder.rglob("*.yaml")):
            archive.add(path, arcname=str(path.relative_to(folder)))
    os.replace(tmp, plan.out / "records.tar.gz")


# --- processes ------------------------------------------------------------------------------------

_GROUPS: list[int] = []  # process groups this process started (killed with it)


def start_group(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (a sweep's pool workers join it), output captured."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    _GROUPS.append(process.pid)
    return process


def finish_group(process: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """Wait for a :func:`start_group` process; kill its whole group after ``timeout`` seconds.
    Returns (exit status, or None if it was killed; its output)."""
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        output, _ = process.communicate()
        return None, output
    finally:
        _GROUPS.remove(process.pid)


def run_group(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """:func:`start_group` then :func:`finish_group`."""
    return finish_group(start_group(cmd, env), timeout)


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _on_term(signum, frame) -> None:
    for pid in list(_GROUPS):
        _kill_group(pid)
    os._exit(124)


def ctmarl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctmarl.cli", *args]


def tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def code_block(text: str) -> str:
    return "```\n" + (text or "(no output)") + "\n```"


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GpuSampler:
    """Polls nvidia-smi (memory used, utilisation) every ``interval`` s in a thread while active."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def query() -> tuple[float, float] | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            memory, use = out.stdout.strip().splitlines()[0].split(",")
            return float(memory), float(use)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def __enter__(self) -> GpuSampler:
        if self.query() is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self.query()
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> tuple[float, float]:
        """(peak memory used MiB, mean utilisation %), NaN without samples."""
        if not self.samples:
            return math.nan, math.nan
        return max(m for m, _ in self.samples), sum(u for _, u in self.samples) / len(self.samples)


# --- comparing records ------------------------------------------------------------------------------

#: Record fields holding what a run measured (wall time and provenance legitimately differ).
MEASURED = ("tasks", "config_hash", "curves", "R", "R_return", "metrics", "neurons", "method_summary",
            "plasticity_probe")


def measured(record: dict) -> dict:
    return {**{key: record.get(key) for key in MEASURED},
            "env_steps": record["timing"]["env_steps"], "updates": record["timing"]["updates"]}


def max_abs_difference(a: Any, b: Any) -> float:
    """Largest |a - b| over the numbers of two nested structures (inf where their shapes differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return math.inf
        return max((max_abs_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return math.inf
        return max((max_abs_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        return 0.0 if a == b else math.inf
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf


# --- checks -----------------------------------------------------------------------------------------

def check_info(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    import numpy as np
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    smi = GpuSampler.query()
    info["nvidia_smi"] = None if smi is None else {"memory_used_mib": smi[0], "utilisation": smi[1]}
    try:
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        info["jax"] = f"unavailable: {type(exc).__name__}: {exc}"
    for package in ("jaxmarl", "gymnax", "gymnasium", "pettingzoo", "flax", "chex"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:  # noqa: BLE001
            info[package] = None
    res.set("versions", info)
    md.table("what", "value")
    for key, value in info.items():
        md.row(key, value)
    md.line()

    # torch's generators on the device: a state saved and set back replays the same draws.
    from ctmarl.checkpoint import global_rng_state, set_global_rng_state

    device = torch.device(plan.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(1)
    saved = generator.get_state()
    first = torch.rand(1000, generator=generator, device=device)
    generator.set_state(saved)
    again = torch.rand(1000, generator=generator, device=device)
    state = global_rng_state(device)
    drawn = torch.rand(1000, device=device)
    set_global_rng_state(state, device)
    redrawn = torch.rand(1000, device=device)
    rng_ok = bool(torch.equal(first, again)) and bool(torch.equal(drawn, redrawn))
    res.set("rng_roundtrip", rng_ok)
    md.para(f"- torch.Generator(device={plan.device}) and the global generators: state saved and restored "
            f"replays the same draws: **{'yes' if rng_ok else 'NO'}** (state is a {saved.dtype} tensor on "
            f"{saved.device}, as checkpoints store it)")

    # SMAX's hand-over: zero-copy where JAX runs on the same device, and the values match JAX's.
    if not box.has(5):
        md.para("- SMAX hand-over: skipped: out of time")
        return
    try:
        from ctmarl.envs.smax import SMAXEnv, SMAXSettings

        # 32 copies, 30 steps: the smoke tier's batch, so this compile is the one the later checks reuse
        settings = SMAXSettings(unit_weights={"stalker": 0.8, "zealot": 0.2}, episode_limit=30)
        env = SMAXEnv(settings, 32, device=plan.device, seed=0)
        started = time.perf_counter()
        first = env.reset()
        step = env.step(first.avail_actions.float().argmax(-1))
        runner = env.backend.runner
        synchronise(plan.device)
        jax_obs = np.asarray(runner.outputs[2])
        same = bool(np.array_equal(step.obs.cpu().numpy(), jax_obs))
        smax = {"jax_device": str(runner.jax_device), "zero_copy": runner._shared,
                "obs_device": str(step.obs.device), "values_match_jax": same,
                "reset_and_step_with_compile_s": round(time.perf_counter() - started, 2)}
    except Exception as exc:  # noqa: BLE001 - reported
        smax = {"error": f"{type(exc).__name__}: {exc}"}
    res.set("smax_handover", smax)
    md.para(f"- SMAX (JAX) -> torch hand-over: {smax}")


def check_smoke(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    from ctmarl.errors import CtmarlError
    from ctmarl.record import load_record
    from ctmarl.scenario import scenario_names

    scenarios = plan.smoke_scenarios or tuple(scenario_names())
    out = plan.work / "records" / "smoke"
    args = ["evaluate", "--tier", "smoke", "--seed", "0", "--device", plan.device, "--executor", "pool",
            "--workers", str(plan.smoke_workers), "--out", str(out)]
    for flag, values in (("--scenario", scenarios), ("--learner", LEARNERS), ("--algo", plan.smoke_methods)):
        for value in values:
            args += [flag, value]
    expected = [(s, learner, m) for s in scenarios for learner in LEARNERS for m in plan.smoke_methods]
    md.para(f"{len(expected)} runs ({len(scenarios)} scenarios x {len(LEARNERS)} learners x "
            f"{len(plan.smoke_methods)} methods), {plan.smoke_workers} workers, `ctmarl "
            + " ".join(args[:12]) + " ...`")
    started = time.perf_counter()
    status, output = run_group(ctmarl_cmd(*args), box.left() - 5)
    wall = time.perf_counter() - started
    found: dict[tuple[str, str, str], tuple[str, dict | None]] = {}
    for path in sorted(out.glob("*.yaml")):
        try:
            record = load_record(path)
        except CtmarlError as exc:
            found[(path.stem, "?", "?")] = (f"INVALID: {exc}", None)
            continue
        key = (record["scenario"]["name"], record["learner"]["name"], record["method"]["name"])
        found[key] = ("ok", record)
    failures = [line for line in output.splitlines()
                if any(word in line for word in ("FAILED", "INTERRUPTED", "failed:", "Error"))][:20]
    md.table("scenario", *[f"{learner}+{m}" for learner in LEARNERS for m in plan.smoke_methods])
    for scenario in scenarios:
        cells = []
        for learner in LEARNERS:
            for method in plan.smoke_methods:
                state, record = found.get((scenario, learner, method), ("missing", None))
                if record is not None:
                    device_ok = str(record["provenance"]["device"]).split(":")[0] == plan.device.split(":")[0]
                    cells.append(f"ok {record['timing']['wall_time_s']:.0f}s" + ("" if device_ok else " (device?)"))
                else:
                    cells.append(state)
        md.row(scenario, *cells)
    md.line()
    valid = sum(1 for key in expected if found.get(key, ("", None))[1] is not None)
    invalid = [key for key, (state, _) in found.items() if state.startswith("INVALID")]
    verdict = "killed: out of time" if status is None else f"exit status {status}"
    md.para(f"**{valid}/{len(expected)}** runs finished with a valid record in {wall:.0f} s ({verdict}); "
            f"{len(invalid)} invalid records.")
    if failures or status not in (0,):
        md.para("Sweep output (failures, last lines):\n\n" + code_block("\n".join(failures) or tail(output)))
    res.set("smoke", {"expected": len(expected), "valid": valid, "invalid": [list(k) for k in invalid],
                      "missing": [list(k) for k in expected if found.get(k, ("", None))[1] is None],
                      "wall_s": round(wall, 1), "exit_status": status,
                      "run_wall_s": {"/".join(k): v[1]["timing"]["wall_time_s"] for k, v in found.items() if v[1]}})


class Crash(Exception):
    """Stands in for a kill between two collections (after the periodic checkpoints before it)."""


def check_resume(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    import torch

    from ctmarl.checkpoint import read_checkpoint
    from ctmarl.evaluate import RunSpec, checkpoint_path, evaluate
    from ctmarl.scenario import make_scenario

    if plan.device.startswith("cuda"):
        # cuBLAS's deterministic workspace (set by the parent before CUDA started) and deterministic
        # kernels where torch has them; ops without one only warn, and are listed below.
        torch.use_deterministic_algorithms(True, warn_only=True)
    md.para("Each run: the uninterrupted run, then the same run crashed (an exception from the progress "
            "callback, i.e. a kill between two collections) once it passed 45% of its env steps and a checkpoint "
            "existed, with checkpoints every 10% of them, then `--resume`d to the end. Compared: curves, R, "
            "metrics, neuron logs, method summary, probe, env steps, updates (records round to 6 decimals). CUDA env: "
            f"`CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}`, "
            "`torch.use_deterministic_algorithms(True, warn_only=True)`.")
    md.table("scenario", "learner+method", "crashed at / checkpoint at (env steps)", "resumed record equal",
             "max abs difference", "seconds")
    rows = []
    for scenario_name, learner, method in plan.resume_runs:
        if not box.has(20 if not plan.quick else 5):
            md.row(scenario_name, f"{learner}+{method}", "skipped: out of time", "", "", "")
            continue
        started = time.perf_counter()
        spec = RunSpec(scenario=scenario_name, algo=method, tier="smoke", learner=learner, seed=0, device=plan.device)
        scenario = make_scenario(scenario_name)
        total = scenario.tier("smoke").env_steps_per_task * scenario.n_tasks
        every = max(1, total // 10)
        out = plan.work / "records" / "resume" / f"{scenario_name}_{learner}_{method}"
        reference_out = out / "uninterrupted"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")  # once per place: a warning per op call would pile up
                reference, _ = evaluate(spec, reference_out, checkpoint_every=0)
                seen = [0]

                def crash(steps: int, *_: Any) -> None:
                    seen[0] += steps
                    # past 45%, once a checkpoint exists (one collection can cross several of them)
                    if seen[0] >= 0.45 * total and checkpoint_path(spec, out).exists():
                        raise Crash

                try:
                    evaluate(spec, out, crash, checkpoint_every=every)
                    crashed = "never (run too short)"
                except Crash:
                    ckpt = read_checkpoint(checkpoint_path(spec, out))
                    crashed = f"{seen[0]} / {ckpt['env_steps']}"
                record, _ = evaluate(spec, out, resume=True, checkpoint_every=every)
            nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0][:80]
                                       for w in caught if "deterministic" in str(w.message)})
            a, b = measured(reference), measured(record)
            equal = a == b
            diff = max_abs_difference(a, b)
            row = {"scenario": scenario_name, "learner": learner, "method": method, "crashed": crashed,
                   "equal": equal, "max_abs_difference": diff,
                   "resumed_at": record["provenance"]["resumed_at_env_steps"],
                   "differing_fields": [k for k in a if a[k] != b[k]], "nondeterministic_ops": nondeterministic}
            md.row(scenario_name, f"{learner}+{method}", crashed, "**yes**" if equal else
                   f"NO ({', '.join(row['differing_fields'])})", f"{diff:.3g}", f"{time.perf_counter() - started:.0f}")
        except Exception as exc:  # noqa: BLE001 - reported, the next run goes on
            row = {"scenario": scenario_name, "learner": learner, "method": method,
                   "error": f"{type(exc).__name__}: {exc}"}
            md.row(scenario_name, f"{learner}+{method}", f"ERROR {type(exc).__name__}: {str(exc)[:200]}", "", "",
                   f"{time.perf_counter() - started:.0f}")
        rows.append(row)
        res.set("resume", rows)
    md.line()
    ops = sorted({op for row in rows for op in row.get("nondeterministic_ops", [])})
    if ops:
        md.para("Ops torch reports as nondeterministic on this device: " + "; ".join(ops))


def check_matrix(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    from ctmarl.errors import CtmarlError
    from ctmarl.record import load_record

    threads = max(1, plan.cpu_threads)
    md.para(f"`matrix_drift` {plan.matrix_tier}, seed 0, `none`, QMIX and QPLEX: one sweep on `{plan.device}` and "
            f"one on `cpu` ({threads} threads per run), side by side. The networks start equal (built on the "
            "CPU, then moved), but the CPU and CUDA generators draw different exploration and replay "
            "samples: the runs can only agree in outcome.")
    if not box.has(5 if plan.quick else 20):
        md.para("skipped: out of time")
        return
    started = time.perf_counter()
    processes = {}
    for role, device in (("device", plan.device), ("cpu", "cpu")):  # two sweeps, also in a CPU dry run
        out = plan.work / "records" / "matrix" / role
        args = ["evaluate", "--scenario", "matrix_drift", "--tier", plan.matrix_tier, "--algo", "none", "--seed",
                "0", "--device", device, "--executor", "pool", "--workers", str(len(LEARNERS)), "--threads",
                str(threads), "--out", str(out), "--quiet", "--checkpoint-every", "0"]
        for learner in LEARNERS:
            args += ["--learner", learner]
        processes[role] = (start_group(ctmarl_cmd(*args)), out)
    records: dict[tuple[str, str], dict] = {}
    for role, (process, out) in processes.items():
        status, output = finish_group(process, box.left() - 2)
        if status != 0:
            md.para(f"{role} sweep: {'killed: out of time' if status is None else f'exit status {status}'}\n\n"
                    + code_block(tail(output)))
        for path in sorted(out.glob("*.yaml")):
            try:
                record = load_record(path)
            except CtmarlError:
                continue
            records[(role, record["learner"]["name"])] = record
    md.para(f"Both sweeps: {time.perf_counter() - started:.0f} s.")
    md.table("learner", f"final score per task ({plan.device})", "final score per task (cpu)", "equal",
             "max abs diff of score curves", "max abs diff of R", f"run seconds {plan.device} / cpu")
    rows = []
    for learner in LEARNERS:
        dev, cpu = records.get(("device", learner)), records.get(("cpu", learner))
        if dev is None or cpu is None:
            md.row(learner, "no record" if dev is None else "", "no record" if cpu is None else "", "", "", "", "")
            rows.append({"learner": learner, "device_record": dev is not None, "cpu_record": cpu is not None})
            continue
        final_dev = dev["metrics"]["final_score_per_task"]
        final_cpu = cpu["metrics"]["final_score_per_task"]
        row = {"learner": learner, "final_device": final_dev, "final_cpu": final_cpu,
               "equal": final_dev == final_cpu,
               "curve_diff": max_abs_difference(dev["curves"]["score"], cpu["curves"]["score"]),
               "R_diff": max_abs_difference(dev["R"], cpu["R"]),
               "run_seconds": {"device": dev["timing"]["wall_time_s"], "cpu": cpu["timing"]["wall_time_s"]}}
        rows.append(row)
        md.row(learner, [round(x, 3) for x in final_dev], [round(x, 3) for x in final_cpu],
               "**yes**" if row["equal"] else "NO", f"{row['curve_diff']:.3g}", f"{row['R_diff']:.3g}",
               f"{dev['timing']['wall_time_s']:.0f} / {cpu['timing']['wall_time_s']:.0f}")
    res.set("matrix", rows)
    md.line()


def check_envs(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    from bench_envs import bench_predator_prey, bench_smax, time_env

    md.para(f"Random available actions drawn on the device, {plan.env_steps} timed steps after 10 untimed, "
            f"best of {plan.env_repeats} (`benchmarks/bench_envs.py`); SMAX's jit compile is timed apart.")
    md.table("world", "num_envs", "env steps/s", "us/step", "compile s")
    rows = []
    # (SMAX first compiles, which cannot be cut short: it starts only with room for a slow compile)
    cells = [("predator-prey standard (10x10, 8 agents, 8 prey)", bench_predator_prey, n, 3)
             for n in plan.pp_num_envs]
    cells += [("SMACv2-like 5v5 (SMAX, stalker/zealot)", bench_smax, n, 5 if plan.quick else 25)
              for n in plan.smax_num_envs]
    for name, make, num_envs, needs in cells:
        if not box.has(needs):
            md.row(name, num_envs, "skipped: out of time", "", "")
            continue
        try:
            env = make(num_envs, plan.device)
            compile_s = env.warm_up() if hasattr(env, "warm_up") else None
            seconds = min(time_env(env, plan.env_steps, 10) for _ in range(plan.env_repeats))
        except Exception as exc:  # noqa: BLE001
            md.row(name, num_envs, f"ERROR {type(exc).__name__}: {str(exc)[:200]}", "", "")
            rows.append({"world": name, "num_envs": num_envs, "error": str(exc)})
            res.set("envs", rows)
            continue
        rate = num_envs * plan.env_steps / seconds
        rows.append({"world": name, "num_envs": num_envs, "env_steps_per_s": rate,
                     "us_per_step": 1e6 * seconds / plan.env_steps, "compile_s": compile_s})
        res.set("envs", rows)
        md.row(name, num_envs, rate, 1e6 * seconds / plan.env_steps,
               "" if compile_s is None else f"{compile_s:.1f}")
    md.line()


def check_learners(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    import torch
    from bench_learners import updates_per_second
    from ctmarl_baselines.reference import loop_unroll

    from ctmarl.learner import make_learner
    from ctmarl.scenario import make_scenario
    from ctmarl.testing import random_episodes

    md.para(f"Full-length random episodes; one update = sample, loss, backward, clip, step (ends in a host "
            f"sync: the loss is read). {plan.learner_updates} timed updates after 2 untimed, best of "
            f"{plan.learner_repeats}. *Fused*: the learner as trained (on CUDA cuDNN's GRU over the whole "
            "episode; on CPU the hand-written BPTT); *loop*: PyMARL's GRUCell loop. *Unroll*: the agent alone "
            "over the batch, forward + backward of the sum of Q-values.")
    md.table("size (N agents, T steps, B episodes)", "learner", "fused upd/s", "loop upd/s", "fused / loop",
             "unroll fused ms", "unroll loop ms", "unroll speed-up")
    rows = []
    flat_warnings: list[str] = []
    for scenario_name, tier in plan.learner_rows:
        scenario = make_scenario(scenario_name)
        info = scenario.env_info(tier)
        overrides = dict(scenario.tier(tier).learner)
        batch_size = overrides.get("batch_size", 32)
        overrides["buffer_episodes"] = batch_size
        label = f"{scenario_name} {tier} ({info.n_agents}, {info.episode_limit}, {batch_size})"
        for name in LEARNERS:
            if not box.has(8 if not plan.quick else 3):
                md.row(label, name, "skipped: out of time", "", "", "", "", "")
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("default")
                    torch.manual_seed(0)
                    learner = make_learner(name, info, overrides, device=plan.device)
                    learner.add_episodes(random_episodes(info, batch_size, full_length=True))
                    fused = updates_per_second(learner, False, plan.learner_updates, 2, plan.learner_repeats)
                    loop = updates_per_second(learner, True, plan.learner_updates, 2, plan.learner_repeats)
                    batch = learner.replay.sample(batch_size, learner.sample_generator)
                    unroll = {}
                    for path, fn in (("fused", learner.unroll), ("loop", lambda a, b: loop_unroll(learner, a, b))):
                        best = math.inf
                        for attempt in range(plan.learner_repeats + 1):  # the first is a warm-up
                            learner.zero_grad(set_to_none=True)
                            synchronise(plan.device)
                            started = time.perf_counter()
                            fn(learner.agent, batch).sum().backward()
                            synchronise(plan.device)
                            if attempt:
                                best = min(best, time.perf_counter() - started)
                        unroll[path] = best
                flat_warnings += [str(w.message)[:160] for w in caught if "contiguous chunk" in str(w.message)]
            except Exception as exc:  # noqa: BLE001
                md.row(label, name, f"ERROR {type(exc).__name__}: {str(exc)[:200]}", "", "", "", "", "")
                rows.append({"size": label, "learner": name, "error": str(exc)})
                res.set("learners", rows)
                continue
            row = {"size": label, "learner": name, "fused_updates_per_s": fused, "loop_updates_per_s": loop,
                   "unroll_fused_ms": 1e3 * unroll["fused"], "unroll_loop_ms": 1e3 * unroll["loop"]}
            rows.append(row)
            res.set("learners", rows)
            md.row(label, name, fused, loop, f"{fused / loop:.2f}x", 1e3 * unroll["fused"], 1e3 * unroll["loop"],
                   f"{unroll['loop'] / unroll['fused']:.2f}x")
    md.line()
    res.set("gru_flat_weight_warnings", sorted(set(flat_warnings)))
    md.para("cuDNN warnings about GRU weights outside one flat buffer (target networks are deep copies): "
            + ("none" if not flat_warnings else "; ".join(sorted(set(flat_warnings)))))


def check_concurrency(plan: Plan, box: TimeBox, md: Markdown, res: Results) -> None:
    from suite import trimmed_scenario

    from ctmarl.errors import CtmarlError
    from ctmarl.record import load_record

    folder = plan.work / "scenarios"
    folder.mkdir(parents=True, exist_ok=True)
    path = trimmed_scenario("predator_prey_penalty", folder, tasks=1, tier=plan.concurrency_tier,
                            env_steps_per_task=plan.concurrency_env_steps)
    md.para(f"`predator_prey_penalty` {plan.concurrency_tier} tier cut to one task of "
            f"{plan.concurrency_env_steps} env steps, QMIX + `none`, N seeds at once: `ctmarl evaluate "
            f"--scenario <cut> --tier {plan.concurrency_tier} --seed 0..N-1 --executor pool --workers N "
            f"--device {plan.device}` (1 torch thread per worker). Aggregate = the runs' env steps over the "
            "longest run's wall time (training only, records' `timing`); sweep wall includes process start-up.")
    md.table("N", "sweep wall s", "run wall s (max)", "env steps/s per run (mean)", "aggregate env steps/s",
             "vs N=1", "peak GPU memory MiB", "mean GPU use %")
    rows, single = [], None
    for n in plan.concurrency_ns:
        # a sweep cut short leaves nothing to measure: start one only with room for its start-up and runs
        if not box.has(5 if plan.quick else 15 + 3 * n):
            md.row(n, "skipped: out of time", "", "", "", "", "", "")
            continue
        out = plan.work / "records" / "concurrency" / f"n{n}"
        args = ["evaluate", "--scenario", path, "--tier", plan.concurrency_tier, "--learner", "qmix", "--algo",
                "none", "--device", plan.device, "--executor", "pool", "--workers", str(n), "--out", str(out),
                "--quiet", "--checkpoint-every", "0"]
        for seed in range(n):
            args += ["--seed", str(seed)]
        started = time.perf_counter()
        with GpuSampler() as sampler:
            status, output = run_group(ctmarl_cmd(*args), box.left() - 3)
        wall = time.perf_counter() - started
        records = []
        for record_path in sorted(out.glob("*.yaml")):
            try:
                records.append(load_record(record_path))
            except CtmarlError:
                pass
        peak, use = sampler.summary()
        if len(records) < n:
            note = "killed: out of time" if status is None else f"exit status {status}"
            md.row(n, f"{wall:.0f}", f"only {len(records)}/{n} runs finished ({note})", "", "", "", peak, use)
            rows.append({"n": n, "finished": len(records), "status": status, "output": tail(output)})
            res.set("concurrency", rows)
            continue
        run_wall = max(r["timing"]["wall_time_s"] for r in records)
        steps = sum(r["timing"]["env_steps"] for r in records)
        per_run = sum(r["timing"]["env_steps_per_s"] for r in records) / n
        aggregate = steps / run_wall
        single = aggregate if n == 1 else single
        rows.append({"n": n, "sweep_wall_s": wall, "run_wall_s": run_wall, "per_run_env_steps_per_s": per_run,
                     "aggregate_env_steps_per_s": aggregate, "peak_gpu_memory_mib": peak, "mean_gpu_use": use})
        res.set("concurrency", rows)
        md.row(n, f"{wall:.0f}", f"{run_wall:.1f}", per_run, aggregate,
               f"{aggregate / single:.2f}x" if single else "", peak, use)
    md.line()


CHECK_FUNCTIONS: dict[str, Callable[[Plan, TimeBox, Markdown, Results], None]] = {
    "info": check_info, "smoke": check_smoke, "resume": check_resume, "matrix": check_matrix,
    "envs": check_envs, "learners": check_learners, "concurrency": check_concurrency,
}
TITLES = {
    "info": "Machine and hand-over", "smoke": "1. Smoke tier on the device: every scenario x learner x method",
    "resume": "1b. A checkpoint written mid-run resumes", "matrix": "2. matrix_drift on the device against the CPU",
    "envs": "3a. Env steps/s", "learners": "3b. Learner updates/s and the fused GRU unroll",
    "concurrency": "3c. Standard-tier runs at once on one device",
}


# --- driving ------------------------------------------------------------------------------------------

def child_env(check: str, plan: Plan) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if check == "resume":
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA start)
    return env


def launch_child(check: str, plan: Plan, budget: float, argv: list[str]) -> tuple[str, float]:
    """Run ``check`` in a child process under ``budget`` seconds (killed after KILL_GRACE_S more).
    Returns (status, seconds)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--check", check, "--check-budget", f"{budget:.1f}", *argv]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=child_env(check, plan), start_new_session=True)
    try:
        code = process.wait(timeout=budget + KILL_GRACE_S)
        status = "ok" if code == 0 else f"failed (exit status {code})"
    except subprocess.TimeoutExpired:
        stragglers = descendants(process.pid)  # its sweeps live in process groups of their own
        _kill_group(process.pid, signal.SIGTERM)  # it kills the sweeps it started, then exits
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(process.pid)  # stuck in native code (a compile), it could not take SIGTERM
        for pid in stragglers:
            _kill_group(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        process.wait()
        status = f"killed: out of time (budget {budget:.0f} s)"
    return status, time.perf_counter() - started


def run_all(plan: Plan, checks: tuple[str, ...], argv: list[str], launch=launch_child) -> dict[str, str]:
    """Every check in turn within the whole budget; the report's header, sections and summary."""
    plan.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(plan.work, ignore_errors=True)  # scratch of an earlier run: a sweep would skip its runs
    (plan.work / "results").mkdir(parents=True)
    for stale in ("report.md", "results.json", "records.tar.gz"):
        (plan.out / stale).unlink(missing_ok=True)
    md = Markdown(plan.out / "report.md")
    md.para(f"# GPU check ({'dry run, ' if plan.quick else ''}device `{plan.device}`)")
    md.para(f"`python benchmarks/device/gpu_check.py {' '.join(argv)}`; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
            f"budget {plan.budget_s:.0f} s; checks: {', '.join(checks)}. Each check is time-boxed; a section that "
            "ends early says why.")
    box = TimeBox(plan.budget_s)
    statuses: dict[str, str] = {}
    for check in checks:
        md.para(f"## {TITLES[check]}")
        budget = allot(check, plan, box.left())
        if budget is None:
            statuses[check] = "skipped: out of time"
            md.para(f"skipped: out of time ({max(box.left(), 0):.0f} s left of the whole budget)")
            continue
        status, seconds = launch(check, plan, budget, argv)
        statuses[check] = status
        md.para(f"_{check}: {status}, {seconds:.0f} s of a {budget:.0f} s budget_")
        merge_results(plan)
        pack_records(plan)
    md.para("## Summary")
    md.table("check", "status")
    for check in checks:
        md.row(check, statuses[check])
    md.line()
    return statuses


def merge_results(plan: Plan) -> None:
    merged = {}
    for path in sorted((plan.work / "results").glob("*.json")):
        try:
            merged[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            merged[path.stem] = "unreadable"
    (plan.out / "results.json").write_text(json.dumps(merged, indent=1, default=str))


def run_check(check: str, plan: Plan, budget: float) -> None:
    """In a child process: run one check, writing its report lines and results as it goes."""
    import torch

    from ctmarl.sweep import configure_process

    signal.signal(signal.SIGTERM, _on_term)
    configure_process(plan.cpu_threads)
    box = TimeBox(budget - 3)  # leave a moment to write what was measured
    md = Markdown(plan.out / "report.md")
    res = Results(plan.work / "results" / f"{check}.json")
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        md.para("ERROR: CUDA is not available in this process")
        raise SystemExit(2)
    try:
        CHECK_FUNCTIONS[check](plan, box, md, res)
    except Exception as exc:  # noqa: BLE001 - the report says what broke; the next check runs
        import traceback

        md.para(f"ERROR in {check}: {type(exc).__name__}: {exc}\n\n" + code_block(tail(traceback.format_exc(), 25)))
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device of the checks (cpu for a dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and CPU-sized budgets (the dry run)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")),
                        help="report.md, results.json, records.tar.gz go here (default: $OUT)")
    parser.add_argument("--work", type=Path, default=None, help="runs and scratch (default: a folder in /tmp)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all checks together (default 510 on the device)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=None, help="run only these checks")
    parser.add_argument("--check", choices=CHECKS, default=None, help=argparse.SUPPRESS)  # in a child
    parser.add_argument("--check-budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # For this process and the checks' (inherited): JAX must not take 75% of the card at its start
    # (see ctmarl.envs.smax_jax), and SMAX's programs, once compiled, are reused by later checks.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/gpu_check_jax_cache")
    out = args.out.resolve()
    work = (args.work or Path("/tmp") / f"gpu_check_work_{out.name}").resolve()
    plan = make_plan(args.device, args.quick, out, work, args.budget)
    if args.check is not None:
        run_check(args.check, plan, args.check_budget or plan.budgets[args.check])
        return 0
    checks = tuple(args.only) if args.only else CHECKS
    parent_argv = [a for a in argv]
    if args.work is None:
        parent_argv += ["--work", str(work)]
    statuses = run_all(plan, checks, parent_argv)
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
