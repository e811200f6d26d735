"""Progress as plain lines, for where a progress bar shows nothing: stderr that is not a terminal
(a nohup'd run, a cluster job, a notebook, a Ray or pool worker). ``ctmarl evaluate`` uses it
when stderr is not a TTY, and sweeps use it for every run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

#: Seconds between two lines of a single run (``ctmarl evaluate --progress-every``).
DEFAULT_EVERY_SECONDS = 30.0


def duration(seconds: float) -> str:
    """``3h05m``, ``4m12s``, ``9s``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLines:
    """A :data:`ctmarl.protocol.ProgressFn` printing ``label: task k/K name  steps/total env steps
    (p%)  score s  r env steps/s  ETA t``: when a task starts and then at most once every
    ``every_s`` seconds (0: after every collection). ``done`` is where a resumed run starts."""

    def __init__(self, label: str, total: int, n_tasks: int, *, done: int = 0,
                 every_s: float = DEFAULT_EVERY_SECONDS, echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.n_tasks, self.every_s = label, total, n_tasks, every_s
        self.done, self._start_done = done, done
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self._started = self._last = clock()
        self._task: int | None = None

    def __call__(self, steps: int, task_index: int, task_name: str, score: float) -> None:
        self.done += steps
        now = self.clock()
        if task_index == self._task and now - self._last < self.every_s:
            return
        self._task, self._last = task_index, now
        self.echo(self.line(task_index, task_name, score, now))

    def line(self, task_index: int, task_name: str, score: float, now: float) -> str:
        elapsed = now - self._started
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.label}: task {task_index + 1}/{self.n_tasks} {task_name}  {self.done}/{self.total} env steps "
                f"({percent:.0f}%)  score {score:.3f}  {rate:.0f} env steps/s  ETA {eta}")
