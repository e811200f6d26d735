"""The benchmark suite: one entry point, one stable markdown table (a script, not a test).

    python benchmarks/suite.py                          # every section (about an hour on 2 cores)
    python benchmarks/suite.py --quick                  # every section, tiny sizes: checks it runs
    python benchmarks/suite.py --sections envs learners --threads 1 --out bench.md
    python benchmarks/suite.py --sections tiers --scenarios matrix_drift_long   # one tier's wall time

Sections (``--sections``, in this order):

``envs``       env steps/s of every scenario's training world (each distinct tier world) at several
               ``num_envs``, random available actions (:func:`bench_envs.time_env`), best of repeats
``learners``   TD updates/s of each reference learner at each scenario's quick and standard sizes
               (full-length episodes; :mod:`bench_learners`), best of repeats
``runs``       end-to-end env steps/s of a training run: ``ctmarl evaluate`` (QMIX and QPLEX,
               ``none``) on each scenario's quick tier, first task only
``methods``    wall time of every registered method against ``none`` on matrix_drift's quick tier
               and predator_prey_penalty's quick tier cut to two tasks of 50 000 env steps
               (neuron metrics off, so only the method's own cost is timed)
``tiers``      wall time of each scenario's whole quick tier (QMIX, ``none``, default settings;
               ``matrix_drift_long``'s 100 tasks are meant to take at most 10 minutes on 2 cores)
``pymarl2``    the throughput target: QMIX on predator_prey_penalty's standard world (10x10, 8 agents,
               8 prey, 200-step episodes) with PyMARL2's settings (8 envs, batch 128 episodes, one
               update per 8 episodes collected, replay 1000, lr 1e-3, TD(λ 0.5), greedy tests of 16
               episodes every 10 000 env steps), against PyMARL2's QMIX on its stag_hunt env with the
               same settings on a 2-core machine (about 320 env steps/s); with the share of wall
               time in each phase (updates, acting, env steps, evaluation, the rest)

Runs go through :func:`ctmarl.evaluate.evaluate`, the code path of ``ctmarl evaluate``, in this
process, after the same process set-up (:func:`ctmarl.sweep.configure_process`). Shortened
scenarios are trimmed copies of the scenario YAMLs written to a temporary folder. Timings depend on
the machine: run the suite alone on an idle machine. Every row is printed in a fixed order with a
fixed format, so two tables diff cleanly; ``n/a`` with a note marks a cell that could not run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* scripts

from ctmarl.evaluate import RunSpec, evaluate  # noqa: E402
from ctmarl.learner import make_learner  # noqa: E402
from ctmarl.protocol import Evaluator  # noqa: E402
from ctmarl.registry import ENVS, LEARNERS, METHODS  # noqa: E402
from ctmarl.scenario import make_scenario, scenario_names  # noqa: E402
from ctmarl.sweep import configure_process  # noqa: E402
from ctmarl.testing import random_episodes  # noqa: E402

SECTIONS = ("envs", "learners", "runs", "methods", "tiers", "pymarl2")
#: PyMARL2's QMIX on its stag_hunt env with the settings of the pymarl2 section, on a 2-core
#: machine (the reference figure of issue #9); override with --pymarl2-reference after measuring it
#: side by side on your machine.
PYMARL2_ENV_STEPS_PER_S = 320.0
#: PyMARL2's qmix_prey.yaml + stag_hunt.yaml, as ctmarl learner and protocol settings.
PYMARL2_LEARNER = {"batch_size": 128, "buffer_episodes": 1000, "updates_per_collect": 1, "lr": 0.001,
                   "td_lambda": 0.5, "optimizer": "adam", "epsilon_anneal_steps": 100_000,
                   "target_update_interval_episodes": 200}
PYMARL2_NUM_ENVS = 8
PYMARL2_TEST_INTERVAL = 10_000
PYMARL2_TEST_EPISODES = 16


@dataclass(frozen=True)
class Row:
    section: str
    benchmark: str
    setting: str
    value: float | None
    unit: str
    note: str = ""

    def cells(self) -> list[str]:
        return [self.section, self.benchmark, self.setting, _format(self.value, self.unit), self.unit, self.note]


def _format(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "% vs none":
        return f"{value:+.1f}"
    if unit.startswith("%"):
        return f"{value:.1f}"
    if unit in ("s", "x"):
        return f"{value:.2f}"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def print_table(rows: list[Row], file=sys.stdout) -> None:
    print("| section | benchmark | setting | value | unit | note |", file=file)
    print("| --- | --- | --- | ---: | --- | --- |", file=file)
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |", file=file, flush=True)


@dataclass
class Options:
    quick: bool
    threads: int
    device: str
    repeats: int
    pymarl2_env_steps: int
    pymarl2_reference: float
    folder: Path
    methods: tuple[str, ...] = ()
    """Methods of the methods section (empty: every registered method)."""
    scenarios: tuple[str, ...] = ()
    """Scenarios of the envs, runs and tiers sections (empty: every shipped scenario)."""

    def scenario_names(self) -> list[str]:
        return [name for name in scenario_names() if not self.scenarios or name in self.scenarios]


# --- helpers -------------------------------------------------------------------------------------

def trimmed_scenario(name: str, folder: Path, tasks: int | None = None, tier: str | None = None,
                     env_steps_per_task: int | None = None, protocol: dict[str, Any] | None = None,
                     tier_changes: dict[str, Any] | None = None) -> str:
    """Path of a copy of scenario ``name``'s YAML: its first ``tasks`` tasks, ``tier``'s budget set to
    ``env_steps_per_task`` and ``tier_changes`` applied, ``protocol`` keys replaced."""
    source = Path(make_scenario(name).source)
    data = yaml.safe_load(source.read_text())
    if tasks is not None:  # the first tasks of the list, and one visit of it
        if "task_generator" in data:
            data["task_generator"]["count"] = min(tasks, data["task_generator"]["count"])
        else:
            data["tasks"] = data["tasks"][:tasks]
        data["protocol"].pop("repeat", None)
    if tier is not None:
        spec = data["tiers"][tier]
        if env_steps_per_task is not None:
            spec["env_steps_per_task"] = env_steps_per_task
        spec.update(tier_changes or {})
    data["protocol"].update(protocol or {})
    path = folder / f"{len(list(folder.iterdir()))}" / source.name
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def timed_run(spec: RunSpec, progress=None) -> tuple[float, dict]:
    started = time.perf_counter()
    record, _ = evaluate(spec, None, progress)
    return time.perf_counter() - started, record


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


# --- sections ------------------------------------------------------------------------------------

def section_envs(opts: Options) -> Iterator[Row]:
    from bench_envs import time_env

    sizes = [1, 8] if opts.quick else [1, 8, 64, 1024]
    steps, warmup = (20, 2) if opts.quick else (200, 20)
    for name in opts.scenario_names():
        seen: dict[str, str] = {}
        for tier in ("quick",) if opts.quick else ("quick", "standard"):
            try:
                scenario = make_scenario(name)
                task = scenario.tasks(tier)[0]
                info = scenario.env_info(tier)
            except Exception as exc:
                yield Row("envs", name, tier, None, "env steps/s", _error(exc))
                continue
            if repr(task.settings) in seen:
                continue  # the same world as an earlier tier
            seen[repr(task.settings)] = tier
            label = f"{name} {tier} ({info.n_agents} agents, {info.episode_limit} steps)"
            for num_envs in sizes:
                try:
                    env = task.make_env(num_envs, opts.device, seed=0)
                    compile_s = env.warm_up() if hasattr(env, "warm_up") else None
                    seconds = min(time_env(env, steps, warmup) for _ in range(opts.repeats))
                except Exception as exc:
                    yield Row("envs", label, f"num_envs={num_envs}", None, "env steps/s", _error(exc))
                    continue
                note = "" if compile_s is None else f"compile {compile_s:.1f} s (not timed)"
                yield Row("envs", label, f"num_envs={num_envs}", num_envs * steps / seconds, "env steps/s", note)


def section_learners(opts: Options) -> Iterator[Row]:
    from bench_learners import LEARNERS as REFERENCE_LEARNERS
    from bench_learners import cases, updates_per_second

    updates, warmup = (1, 1) if opts.quick else (5, 2)
    for scenario, tier, info, overrides in cases():
        if opts.quick and tier != "quick":
            continue
        batch_size = overrides.get("batch_size", 32)
        setting = f"{scenario} {tier} (B={batch_size}, T={info.episode_limit}, N={info.n_agents})"
        for name in REFERENCE_LEARNERS:
            try:
                torch.manual_seed(0)
                learner = make_learner(name, info, {**overrides, "buffer_episodes": batch_size}, device=opts.device)
                learner.add_episodes(random_episodes(info, batch_size, full_length=True).to(learner.device))
                rate = updates_per_second(learner, False, updates, warmup, opts.repeats)
            except Exception as exc:
                yield Row("learners", f"{name} update", setting, None, "updates/s", _error(exc))
                continue
            yield Row("learners", f"{name} update", setting, rate, "updates/s")


def section_runs(opts: Options) -> Iterator[Row]:
    tier = "smoke" if opts.quick else "quick"
    for name in opts.scenario_names():
        for learner in ("qmix", "qplex"):
            try:
                path = trimmed_scenario(name, opts.folder, tasks=1)
                wall, record = timed_run(RunSpec(path, algo="none", tier=tier, learner=learner, device=opts.device))
            except Exception as exc:
                yield Row("runs", f"{learner} none", f"{name} {tier}, first task", None, "env steps/s", _error(exc))
                continue
            timing = record["timing"]
            yield Row("runs", f"{learner} none", f"{name} {tier}, first task", timing["env_steps"] / wall,
                      "env steps/s", f"{timing['env_steps']} env steps, {timing['updates']} updates, {wall:.1f} s")


def method_did(summary: dict) -> str:
    """The top-level numbers of a record's ``method_summary`` (what the method did), e.g. ``replaced 40``."""
    totals = [f"{key} {value:.4g}" for key, value in summary.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return ", ".join(totals[:3]) or "-"


def section_methods(opts: Options) -> Iterator[Row]:
    if opts.quick:
        cases = [("matrix_drift", "smoke", None, None), ("predator_prey_penalty", "smoke", 2, None)]
    else:
        cases = [("matrix_drift", "quick", None, None), ("predator_prey_penalty", "quick", 2, 50_000)]
    algos = ["none"] + [name for name in (opts.methods or METHODS.names()) if name != "none"]
    for name, tier, tasks, budget in cases:
        setting = f"{name} {tier}" + ("" if tasks is None else f", {tasks} tasks") + (
            "" if budget is None else f" of {budget} env steps")
        try:
            path = trimmed_scenario(name, opts.folder, tasks, tier, budget)
            timed_run(RunSpec(path, algo="none", tier=tier, neuron_every_updates=0, device=opts.device))  # warm-up
        except Exception as exc:
            yield Row("methods", "none", setting, None, "% vs none", _error(exc))
            continue
        # Round robin over the methods, repeat after repeat, so a drift of the machine's speed
        # spreads over every method instead of landing on the last ones.
        walls: dict[str, list[float]] = {algo: [] for algo in algos}
        did: dict[str, str] = {}
        errors: dict[str, str] = {}
        for _ in range(opts.repeats):
            for algo in algos:
                if algo in errors:
                    continue
                try:
                    wall, record = timed_run(RunSpec(path, algo=algo, tier=tier, neuron_every_updates=0,
                                                     device=opts.device))
                except Exception as exc:
                    errors[algo] = _error(exc)
                    continue
                walls[algo].append(wall)
                did[algo] = method_did(record.get("method_summary") or {})
        baseline = statistics.median(walls["none"]) if walls["none"] else None
        for algo in algos:
            if algo in errors or baseline is None:
                yield Row("methods", algo, setting, None, "% vs none", errors.get(algo, "none failed"))
                continue
            wall = statistics.median(walls[algo])
            yield Row("methods", algo, setting, 100 * (wall / baseline - 1), "% vs none", f"{wall:.2f} s; {did[algo]}")


def section_tiers(opts: Options) -> Iterator[Row]:
    tier = "smoke" if opts.quick else "quick"
    for name in opts.scenario_names():
        try:
            wall, record = timed_run(RunSpec(name, algo="none", tier=tier, device=opts.device))
        except Exception as exc:
            yield Row("tiers", f"{name} {tier}", "qmix none", None, "s", _error(exc))
            continue
        timing = record["timing"]
        yield Row("tiers", f"{name} {tier}", "qmix none", wall, "s",
                  f"{timing['env_steps']} env steps ({timing['env_steps'] / wall:,.0f}/s), {timing['updates']} updates")


@contextmanager
def phase_timer(learner_name: str, family_name: str) -> Iterator[dict[str, float]]:
    """Seconds spent in learner updates, acting, env steps and greedy evaluation (acting and env
    steps inside evaluations count as evaluation), by wrapping those methods for the block."""
    spent = {"update": 0.0, "act": 0.0, "env step": 0.0, "evaluation": 0.0, "replay add": 0.0}
    inside_evaluation = [False]
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attribute: str, phase: str | Callable[[], str]) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = phase() if callable(phase) else phase
                if key is not None:
                    spent[key] += time.perf_counter() - started
        patched.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    def evaluation_or(phase: str) -> Callable[[], str | None]:
        return lambda: None if inside_evaluation[0] else phase

    original_call = Evaluator.__call__

    def evaluate_call(self, *args, **kwargs):
        inside_evaluation[0] = True
        started = time.perf_counter()
        try:
            return original_call(self, *args, **kwargs)
        finally:
            inside_evaluation[0] = False
            spent["evaluation"] += time.perf_counter() - started

    learner_cls, family = LEARNERS.load(learner_name), ENVS.load(family_name)
    wrap(learner_cls, "update", "update")
    wrap(learner_cls, "act", evaluation_or("act"))
    wrap(learner_cls, "add_episodes", "replay add")
    wrap(family, "step", evaluation_or("env step"))
    patched.append((Evaluator, "__call__", original_call))
    Evaluator.__call__ = evaluate_call
    try:
        yield spent
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


def section_pymarl2(opts: Options) -> Iterator[Row]:
    env_steps = opts.pymarl2_env_steps
    evals = max(1, env_steps // PYMARL2_TEST_INTERVAL)
    path = trimmed_scenario("predator_prey_penalty", opts.folder, tasks=1, tier="standard",
                            env_steps_per_task=env_steps,
                            protocol={"evals_per_task": evals, "eval_episodes": PYMARL2_TEST_EPISODES},
                            tier_changes={"num_envs": PYMARL2_NUM_ENVS, "learner": PYMARL2_LEARNER})
    warmup_collects = math.ceil(PYMARL2_LEARNER["batch_size"] / PYMARL2_NUM_ENVS)
    threads_list = [opts.threads] + ([os.cpu_count()] if os.cpu_count() and os.cpu_count() != opts.threads else [])
    setting = (f"10x10, 8 agents, 8 prey, 200 steps; {env_steps} env steps, tests every "
               f"{PYMARL2_TEST_INTERVAL} ({evals} x {PYMARL2_TEST_EPISODES} episodes)")
    reference = opts.pymarl2_reference
    before = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            marks: list[tuple[float, int]] = []

            def progress(steps: int, *_: Any) -> None:
                previous = marks[-1][1] if marks else 0
                marks.append((time.perf_counter(), previous + steps))

            try:
                with phase_timer("qmix", "predator_prey") as spent:
                    wall, record = timed_run(RunSpec(path, algo="none", tier="standard", learner="qmix",
                                                     device=opts.device), progress)
            except Exception as exc:
                yield Row("pymarl2", f"QMIX, {threads} thread(s)", setting, None, "env steps/s", _error(exc))
                continue
            total = record["timing"]["env_steps"]
            yield Row("pymarl2", f"QMIX, {threads} thread(s)", setting, total / wall, "env steps/s",
                      f"whole run incl. {warmup_collects} collects before the first update")
            if len(marks) > warmup_collects + 1:
                (t0, s0), (t1, s1) = marks[warmup_collects - 1], marks[-1]
                steady = (s1 - s0) / (t1 - t0)
                target = f"target >= {5 * reference:.0f} (5x), aim {10 * reference:.0f} (10x)"
                yield Row("pymarl2", f"QMIX, {threads} thread(s)", "steady state (after the replay holds a batch)",
                          steady, "env steps/s", f"{record['timing']['updates']} updates; {target}")
                yield Row("pymarl2", f"QMIX, {threads} thread(s)", f"vs PyMARL2 QMIX ({reference:.0f} env steps/s)",
                          steady / reference, "x", "steady state / PyMARL2 on a 2-core machine")
            for phase in ("update", "act", "env step", "evaluation", "replay add"):
                yield Row("pymarl2", f"QMIX, {threads} thread(s)", f"time share: {phase}",
                          100 * spent[phase] / wall, "% of wall")
            other = wall - sum(spent.values())
            yield Row("pymarl2", f"QMIX, {threads} thread(s)", "time share: other (rollout loop, record)",
                      100 * other / wall, "% of wall")
    finally:
        torch.set_num_threads(before)


SECTION_FUNCTIONS: dict[str, Callable[[Options], Iterator[Row]]] = {
    "envs": section_envs, "learners": section_learners, "runs": section_runs,
    "methods": section_methods, "tiers": section_tiers, "pymarl2": section_pymarl2,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budgets: check that every section runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/OpenMP/MKL threads (default 1; pymarl2 also runs at every core)")
    parser.add_argument("--device", default="cpu", help="torch device for envs, learners and runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 3; --quick 1)")
    parser.add_argument("--pymarl2-env-steps", type=int, default=None,
                        help="env steps of the pymarl2 run (default 100000; --quick 30000)")
    parser.add_argument("--pymarl2-reference", type=float, default=PYMARL2_ENV_STEPS_PER_S,
                        help="PyMARL2's env steps/s to compare with (default: %(default)s, 2-core machine)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="methods of the methods section, each timed against none (default: all registered)")
    parser.add_argument("--scenarios", nargs="+", default=None, metavar="SCENARIO",
                        help="scenarios of the envs, runs and tiers sections (default: every shipped one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    unknown = sorted(set(args.methods or ()) - set(METHODS.names()))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(METHODS.names())}")
    unknown = sorted(set(args.scenarios or ()) - set(scenario_names()))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; shipped: {', '.join(scenario_names())}")

    configure_process(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        opts = Options(
            quick=args.quick, threads=args.threads, device=args.device,
            repeats=args.repeats or (1 if args.quick else 3),
            pymarl2_env_steps=args.pymarl2_env_steps or (30_000 if args.quick else 100_000),
            pymarl2_reference=args.pymarl2_reference, folder=Path(folder),
            methods=tuple(args.methods or ()), scenarios=tuple(args.scenarios or ()),
        )
        print(f"<!-- ctmarl benchmark suite{' (--quick)' if args.quick else ''}: torch {torch.__version__}, "
              f"{platform.machine()} {os.cpu_count()} CPUs, {args.threads} thread(s), device {args.device}, "
              f"best/median of {opts.repeats} -->", flush=True)
        rows: list[Row] = []
        print_table([])
        for section in SECTIONS:
            if section not in args.sections:
                continue
            for row in SECTION_FUNCTIONS[section](opts):
                rows.append(row)
                print("| " + " | ".join(row.cells()) + " |", flush=True)
    if args.out is not None:
        with args.out.open("w") as handle:
            print_table(rows, handle)


if __name__ == "__main__":
    main()
