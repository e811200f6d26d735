"""ctmarl: a continual-learning benchmark suite for cooperative MARL value factorisation.

The data flow is the layout::

    scenario.py (Scenario, Task, tiers, make_scenario)
      -> envs/ (batched envs + PettingZoo views)
      -> protocol.py (the runner: learner + method hooks over the task sequence)
      -> record.py (run records) -> metrics.py (continual metrics)

Learners and methods are found through :mod:`ctmarl.registry`; the reference ones live in the
separate ``ctmarl_baselines`` package and register through entry points, as a third party would.
Importing ctmarl has no side effects and imports no optional dependency.
"""

from ctmarl.errors import CtmarlError
from ctmarl.scenario import Scenario, Task, make_scenario

__version__ = "0.1.0"

__all__ = ["CtmarlError", "Scenario", "Task", "make_scenario", "__version__"]
