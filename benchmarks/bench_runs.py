"""End-to-end run benchmark: wall time and env steps/s of whole `ctmarl evaluate` runs.

Compares configurations on the same scenario tier: neuron metrics on (at the default interval)
vs off, and methods vs ``none``. Prints a stable markdown table. Not a test: timings depend on
the machine; run it alone on an idle machine.

    python benchmarks/bench_runs.py --scenario matrix_drift --tier quick --repeats 3
    python benchmarks/bench_runs.py --algo none --algo reset --neuron-every 0 --neuron-every 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ctmarl.evaluate import RunSpec, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="matrix_drift")
    parser.add_argument("--tier", default="quick")
    parser.add_argument("--learner", default="qmix")
    parser.add_argument("--algo", action="append", help="methods to time (default: none)")
    parser.add_argument("--neuron-every", type=int, action="append",
                        help="neuron-metrics intervals to time (default: 0 and 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    algos = args.algo or ["none"]
    intervals = args.neuron_every or [0, 50]

    print(f"# {args.scenario} {args.tier} {args.learner}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; median of {args.repeats}")
    print("| method | neuron metrics every | wall s (median) | env steps/s | overhead vs first row |")
    print("| --- | --- | --- | --- | --- |")
    baseline = None
    for algo in algos:
        for every in intervals:
            walls, env_steps = [], 0
            for _ in range(args.repeats):
                spec = RunSpec(args.scenario, algo=algo, tier=args.tier, learner=args.learner, seed=args.seed,
                               neuron_every_updates=every)
                started = time.perf_counter()
                record, _ = evaluate(spec, None)
                walls.append(time.perf_counter() - started)
                env_steps = record["timing"]["env_steps"]
            wall = statistics.median(walls)
            rate = env_steps / wall
            baseline = baseline or wall
            label = "off" if every == 0 else f"{every} updates"
            print(f"| {algo} | {label} | {wall:.2f} | {rate:.0f} | {100 * (wall / baseline - 1):+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
