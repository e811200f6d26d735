"""The main command on a shared machine: env steps/s of ``ctmarl evaluate`` alone and beside
CPU-bound processes (a script, not a test; run it on an otherwise idle machine).

    python benchmarks/bench_shared.py                       # the README's main command, first task
    python benchmarks/bench_shared.py --scenario matrix_drift --algo none --max-seconds 60
    python benchmarks/bench_shared.py --configs default threads2-active --others 1 2

Each configuration runs the command as a user would (a ``ctmarl evaluate`` subprocess with
``--progress-every 0``), reads its progress lines, and stops it at the end of the first task (or
after ``--max-seconds``); env steps/s = env steps between the first and the last line over the time
between them (so start-up is not counted). It does so alone, then beside ``--others`` busy-loop
processes (``python -c "while True: pass"``), and reports the slowdown: shared time / quiet time.
A fair share of 2 cores with one other CPU-bound process costs about 2x.

Configurations (``--configs``):

==================  ==============================================================================
``default``         the command exactly as the README gives it (ctmarl's own defaults)
``threads1``        ``--threads 1``
``threads2-spin``   ``--threads 2`` with ``GOMP_SPINCOUNT=300000``: libgomp's own default when
                    ``OMP_WAIT_POLICY`` is unset, i.e. the main command before ctmarl chose passive
                    waiting (idle threads spin 300 000 times in OpenMP barriers before sleeping)
``threads2-active`` ``--threads 2`` with ``OMP_WAIT_POLICY=ACTIVE`` (idle threads never sleep)
==================  ==============================================================================
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

LINE = re.compile(r": task (\d+)/(\d+) .*?  (\d+)/(\d+) env steps")
CONFIGS = {
    "default": ([], {}),
    "threads1": (["--threads", "1"], {}),
    "threads2-spin": (["--threads", "2"], {"GOMP_SPINCOUNT": "300000"}),
    "threads2-active": (["--threads", "2"], {"OMP_WAIT_POLICY": "ACTIVE"}),
}


@dataclass
class Timing:
    env_steps: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else float("nan")


def time_command(args: list[str], env_extra: dict[str, str], max_seconds: float) -> Timing:
    """Run ``ctmarl evaluate ARGS`` until its first task ends (or ``max_seconds`` after its first
    progress line) and measure env steps/s between its first and last progress lines."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "ctmarl.cli", "evaluate", *args, "--out", out, "--progress-every", "0",
                   "--checkpoint-every", "0", "--log", "none"]
        env = {**os.environ, **env_extra}
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the command's own choice, not the caller's
            if name not in env_extra:
                env.pop(name, None)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        first = last = None
        try:
            for line in process.stderr:
                match = LINE.search(line)
                if not match:
                    continue
                task, done, now = int(match.group(1)), int(match.group(3)), time.monotonic()
                if first is None:
                    first = (done, now)
                last = (done, now)
                if task > 1 or now - first[1] >= max_seconds:
                    break
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        if first is None or last is None or last[1] <= first[1]:
            raise RuntimeError(f"no progress from {' '.join(command)}")
        return Timing(last[0] - first[0], last[1] - first[1])


def busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="smacv2_drift")
    parser.add_argument("--algo", default="knife")
    parser.add_argument("--tier", default="quick")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--others", nargs="+", type=int, default=[1], help="Busy processes beside the run.")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="Stop a measurement after this long if the first task has not ended.")
    options = parser.parse_args()
    args = ["--scenario", options.scenario, "--algo", options.algo, "--tier", options.tier]
    print(f"# ctmarl evaluate {' '.join(args)}: first task (at most {options.max_seconds:.0f} s), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| config | others | env steps/s | slowdown vs quiet |")
    print("|---|---|---|---|")
    for name in options.configs:
        extra_args, env_extra = CONFIGS[name]
        quiet = time_command([*args, *extra_args], env_extra, options.max_seconds)
        print(f"| {name} | 0 | {quiet.rate:.0f} | 1.00x |", flush=True)
        for others in options.others:
            busy = busy_processes(others)
            try:
                shared = time_command([*args, *extra_args], env_extra, options.max_seconds)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            print(f"| {name} | {others} | {shared.rate:.0f} | {quiet.rate / shared.rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
