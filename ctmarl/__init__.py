"""ctmarl: a continual-learning benchmark suite for cooperative MARL value factorisation.

The data flow is the layout::

    scenario.py (Scenario, Task, tiers, make_scenario)
      -> envs/ (batched envs + PettingZoo views)
      -> protocol.py (the runner: learner + method hooks over the task sequence)
      -> record.py (run records) -> metrics.py (continual metrics)

Learners and methods are found through :mod:`ctmarl.registry`; the reference ones live in the
separate ``ctmarl_baselines`` package and register through entry points, as a third party would.
Importing ctmarl imports no optional dependency; its one side effect is the OpenMP wait policy.
``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (a value already set is kept), read by torch's
OpenMP runtime when torch is first imported, so it acts only if ctmarl is imported before torch,
as in the ``ctmarl`` command and its worker processes. With the default (active) policy, torch's
idle threads spin in OpenMP barriers: beside other CPU-bound processes the main command ran at a
ninth of its speed with 2 threads (benchmarks/bench_shared.py, README "Timing").

For your own training code (:mod:`ctmarl.api`): ``ctmarl.make`` (a task's batched env),
``ctmarl.make_parallel_env`` (its PettingZoo view) and ``ctmarl.OutsideRun`` (an outside learner
through a scenario's protocol, to a run record); they are imported on first use.
"""

import os
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: see the docstring

from ctmarl.errors import CtmarlError  # noqa: E402
from ctmarl.scenario import Scenario, Task, make_scenario  # noqa: E402

__version__ = "0.1.0"

#: Names served from ctmarl.api on first access (PEP 562), so importing ctmarl stays cheap.
_API_NAMES = ("make", "make_parallel_env", "OutsideRun")

__all__ = ["CtmarlError", "Scenario", "Task", "make_scenario", "__version__", *_API_NAMES]


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from ctmarl import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctmarl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_NAMES})
