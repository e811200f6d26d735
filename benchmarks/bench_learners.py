"""Learner throughput: TD updates/s of each learner, the training unroll vs the GRUCell loop.

    python benchmarks/bench_learners.py [--quick] [--updates 5] [--repeats 3] [--threads 1]
                                        [--scenario NAME ...] [--tier quick|standard|pymarl2 ...]

For every standard scenario and the ``quick`` and ``standard`` tiers, each registered reference
learner (QMIX, QPLEX) is built at the tier's sizes (``scenario.env_info(tier)``) with the tier's
learner overrides (batch size, hidden width, TD(λ), ...), and its replay is filled with random
full-length episodes (every step valid, so each update unrolls ``episode_limit + 1`` steps). One
update is ``learner.update()``: sample, loss, backward, clip, step. The *fused* column is the
learner as trained (the whole-episode unroll of :func:`ctmarl_baselines.gru.gru_sequence`: on CPU a
hand-written BPTT, on CUDA cuDNN's GRU); the *loop* column is the same update with the agent unrolled by the classic
PyMARL GRUCell loop (:mod:`ctmarl_baselines.reference`), everything else identical. Updates/s is
``--updates`` / seconds after untimed warm-up updates, best of ``--repeats`` (the stable statistic on
a shared machine). The replay holds just one batch of episodes (``buffer_episodes`` = batch size), so
memory stays small; the sampling cost per update is the same as with a full buffer.

The *matmul-only* column bounds what any unroll can reach on this machine: the matrix products of
one training update (every ``mm``/``addmm``/``bmm`` the profiler sees, with their shapes, in their
order) are replayed back to back on random operands, as if everything else in the update (gate
arithmetic, activations, the optimizer, Python) took no time. Products of the same shapes share
operands, so the replay finds more of them in cache than the update does: it errs fast. *bound* is
that rate over the loop's: no implementation that does the update's products with torch's own GEMM
can be faster than the loop by more than this. CPU only.

If the ``predator_prey_penalty`` scenario is not installed, a row of its standard size is benchmarked
from an :class:`~ctmarl.envs.base.EnvInfo` directly (8 agents, 200 steps, 5x5x3 view, 6 actions).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from ctmarl_baselines.reference import loop_path
from torch.profiler import ProfilerActivity, profile

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import make_learner
from ctmarl.scenario import make_scenario, scenario_names
from ctmarl.sweep import configure_process
from ctmarl.testing import random_episodes

LEARNERS = ("qmix", "qplex")
TIERS = ("quick", "standard")  # plus a 'pymarl2' row: the standard world at batch 128
#: predator_prey_penalty's standard world, used when that scenario is not installed.
PREDATOR_PREY_STANDARD = EnvInfo(n_agents=8, obs_dim=75, state_dim=48, n_actions=6, episode_limit=200)


def cases() -> Iterator[tuple[str, str, EnvInfo, dict[str, Any]]]:
    """(scenario, tier, sizes, learner overrides) for every benchmarked cell."""
    names = scenario_names()
    for name in names:
        scenario = make_scenario(name)
        for tier in TIERS:
            yield name, tier, scenario.env_info(tier), dict(scenario.tier(tier).learner)
    if "predator_prey_penalty" not in names:
        yield "predator_prey (EnvInfo)", "standard", PREDATOR_PREY_STANDARD, {"batch_size": 32}
    # The throughput comparison's size (benchmarks/suite.py, pymarl2 section): PyMARL2's batch of 128.
    info = make_scenario("predator_prey_penalty").env_info("standard") if "predator_prey_penalty" in names \
        else PREDATOR_PREY_STANDARD
    yield "predator_prey_penalty", "pymarl2", info, {"batch_size": 128, "td_lambda": 0.5}


def best_rate(step, updates: int, warmup: int, repeats: int) -> float:
    """Calls of ``step`` per second: ``updates`` calls timed after ``warmup`` untimed ones, best of
    ``repeats``."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(updates):
            step()
        best = min(best, time.perf_counter() - started)
    return updates / best


def updates_per_second(learner, loop: bool, updates: int, warmup: int, repeats: int) -> float:
    with loop_path(learner) if loop else nullcontext():
        return best_rate(learner.update, updates, warmup, repeats)


#: Matrix-product ops and the positions of their two factors among the op's inputs.
MATMUL_OPS = {"aten::mm": (0, 1), "aten::bmm": (0, 1), "aten::addmm": (1, 2), "aten::addmm_": (1, 2),
              "aten::baddbmm": (1, 2), "aten::baddbmm_": (1, 2)}


def matrix_products(learner) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The factor shapes of every matrix product in one ``learner.update()``, in order (from the
    profiler; an op inside another matrix-product op is not counted twice)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        learner.update()
    products = []
    for event in prof.events():
        if event.name not in MATMUL_OPS:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in MATMUL_OPS:
            parent = parent.cpu_parent
        if parent is None:
            first, second = MATMUL_OPS[event.name]
            products.append((tuple(event.input_shapes[first]), tuple(event.input_shapes[second])))
    return products


def matmul_only_per_second(products, updates: int, repeats: int) -> float:
    """Updates/s if an update were only its matrix products: they are replayed back to back on
    random operands of their shapes (allocated once, outputs preallocated), best of ``repeats``."""
    operands = {shape: torch.randn(shape) for pair in products for shape in pair}
    outputs = {pair: torch.empty(*pair[0][:-1], pair[1][-1]) for pair in products}
    calls = [(operands[a], operands[b], outputs[(a, b)]) for a, b in products]

    def replay() -> None:
        for a, b, out in calls:
            (torch.mm if a.dim() == 2 else torch.bmm)(a, b, out=out)

    return best_rate(replay, updates, 1, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 timed update, 2 repeats, 1 warm-up (< 1 min)")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best is kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, fixed for the whole run (default 1: stable on shared machines)")
    parser.add_argument("--scenario", action="append", default=None, metavar="NAME",
                        help="only this scenario's rows (repeatable; 'predator_prey_penalty' includes its pymarl2 row)")
    parser.add_argument("--tier", action="append", default=None, choices=(*TIERS, "pymarl2"),
                        help="only this tier's rows (repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.updates, args.warmup, args.repeats = 1, 1, 2
    configure_process(args.threads)  # as in training processes: the thread count, huge-page allocation

    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, {args.updates} timed "
          f"updates after {args.warmup} warm-up, best of {args.repeats}")
    header = (f"{'scenario':<24} {'tier':<9} {'learner':<7} {'N':>3} {'T':>4} {'B':>4} {'obs':>4} "
              f"{'fused upd/s':>12} {'loop upd/s':>11} {'speed-up':>9} {'matmul-only':>12} {'bound':>7}")
    print(header)
    print("-" * len(header))
    for scenario, tier, info, overrides in cases():
        if (args.scenario and scenario not in args.scenario) or (args.tier and tier not in args.tier):
            continue
        batch_size = overrides.get("batch_size", 32)
        overrides = {**overrides, "buffer_episodes": batch_size}
        for name in LEARNERS:
            torch.manual_seed(0)
            learner = make_learner(name, info, overrides)
            learner.add_episodes(random_episodes(info, batch_size, full_length=True))
            fused = updates_per_second(learner, False, args.updates, args.warmup, args.repeats)
            loop = updates_per_second(learner, True, args.updates, args.warmup, args.repeats)
            matmul = matmul_only_per_second(matrix_products(learner), args.updates, args.repeats)
            print(f"{scenario:<24} {tier:<9} {name:<7} {info.n_agents:>3} {info.episode_limit:>4} "
                  f"{batch_size:>4} {info.obs_dim:>4} {fused:>12.2f} {loop:>11.2f} {fused / loop:>8.2f}x "
                  f"{matmul:>12.2f} {matmul / loop:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
