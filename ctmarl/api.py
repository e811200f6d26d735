"""ctmarl's scenarios from your own training code: Gymnasium-style ``make`` and a run helper.

::

    env = ctmarl.make("matrix_drift", task="M3", tier="smoke")      # BatchedEnv, num_envs copies
    view = ctmarl.make_parallel_env("predator_prey_penalty", task=0)  # PettingZoo ParallelEnv

``make`` returns the batched env of one task (:class:`ctmarl.envs.base.BatchedEnv`: ``reset()``
and ``step(actions [E, N] long)`` on torch tensors; shapes in that module's docstring).
``make_parallel_env`` wraps one copy as a PettingZoo ``ParallelEnv``
(:class:`ctmarl.envs.pettingzoo_view.ParallelEnvView`).

:class:`OutsideRun` takes a learner that is not a ctmarl plug-in through a scenario under the
suite's protocol (DESIGN.md §8) and writes a run record with the layout ``ctmarl evaluate``
writes::

    run = ctmarl.OutsideRun("matrix_drift", tier="smoke", seed=0, learner="my_iql", config={...})
    for task in run.tasks:
        env = run.env(task)                       # the task's training env, as the suite seeds it
        task_steps = 0
        while task_steps < run.env_steps_per_task:
            task_steps += collect_and_train(env)  # your learner; env steps = agent-steps of live copies
            run.evaluate_due(policy, task_steps)  # greedy evaluations at the protocol's points
        run.end_task(policy)                      # R[k][j] on every task j
    path = run.write("runs")
    print(leaderboard_admission(path))            # why the leaderboard would refuse it, or None

A *policy* is ``policy(obs, avail_actions) -> actions``: ``obs`` [E, N, O] float32,
``avail_actions`` [E, N, A] bool, actions [E, N] long, each an available action. A policy with a
``reset(num_envs)`` method has it called before every batch of evaluation episodes (a recurrent
policy clears its hidden state there); the E episodes of one batch start together and the policy
is called once per step until all have ended (ended copies' actions are ignored).

Evaluations use the suite's own :class:`ctmarl.protocol.Evaluator` with the run seed's envs, so a
policy scores here exactly what the suite measures for it; the record's learner block names the
outside learner with ``entry_point: null`` and its method is ``none``. The leaderboard ranks only
registered learners with the hyperparameters a scenario's tier prescribes, so it refuses such a
record: :func:`leaderboard_admission` says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ctmarl.config import MAX_DEPTH, MAX_INT, MAX_STRING_CHARS
from ctmarl.envs.base import BatchedEnv, EnvInfo, blend_settings
from ctmarl.errors import CtmarlError, shorten
from ctmarl.scenario import Scenario, Task, make_scenario

#: policy(obs [E, N, O], avail_actions [E, N, A] bool) -> actions [E, N] long
Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- envs ------------------------------------------------------------------------------------

def make(scenario: str | Scenario, task: int | str = 0, tier: str = "quick", num_envs: int | None = None,
         device: str | torch.device = "cpu", seed: int = 0) -> BatchedEnv:
    """The batched env of one task of ``scenario`` under ``tier``.

    ``scenario``: an id (``matrix_drift``, ``matrix_drift-v1``), a scenario YAML path, or a loaded
    :class:`~ctmarl.scenario.Scenario`. ``task``: an index into the scenario's task sequence
    (``protocol.repeat`` included) or a task name; in a repeated sequence a bare name is its first
    visit (``M3``) and later visits are named ``<task>#<visit>`` (``M3#2``). ``num_envs``: copies
    stepped at once (default: the tier's ``num_envs``). ``seed`` seeds the env's generator.
    Raises :class:`~ctmarl.errors.CtmarlError` for an unknown scenario, tier or task.
    """
    scenario = _scenario(scenario)
    resolved = _task(scenario, tier, task)
    count = scenario.tier(tier).num_envs if num_envs is None else num_envs
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CtmarlError(f"num_envs must be a positive integer, got {shorten(repr(count))}")
    return resolved.make_env(count, _device(device), seed=seed)


def make_parallel_env(scenario: str | Scenario, task: int | str = 0, tier: str = "quick",
                      device: str | torch.device = "cpu", seed: int = 0):
    """A PettingZoo ``ParallelEnv`` of one copy of the task (``scenario``, ``task``, ``tier``: as
    :func:`make`): agents ``agent_0..``, action masks in ``infos[agent]["action_mask"]``, global
    ``state()``; ``reset(seed=s)`` rebuilds the copy seeded with ``s``."""
    from ctmarl.envs.pettingzoo_view import ParallelEnvView  # gymnasium + pettingzoo: only when used

    resolved = _task(_scenario(scenario), tier, task)
    device = _device(device)
    return ParallelEnvView(lambda s: resolved.make_env(1, device, seed=s), seed=seed)


def _scenario(scenario: str | Scenario) -> Scenario:
    return scenario if isinstance(scenario, Scenario) else make_scenario(str(scenario))


def _device(name: str | torch.device) -> torch.device:
    from ctmarl.evaluate import resolve_device

    return resolve_device(str(name))


def _task(scenario: Scenario, tier: str, task: int | str) -> Task:
    """Task ``task`` (index or name; a repeated name means its first visit) of the sequence."""
    tasks = scenario.tasks(tier)
    if isinstance(task, str):
        for candidate in tasks:  # first occurrence: later visits of a repeated task are "<name>#<visit>"
            if candidate.name == task:
                return candidate
        names = ", ".join(t.name for t in tasks[:12]) + (f", ... ({len(tasks)} tasks)" if len(tasks) > 12 else "")
        raise CtmarlError(f"{scenario.id} has no task {shorten(repr(task))}; tasks: {names}")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < len(tasks):
        raise CtmarlError(f"{scenario.id}: task must be a task name or an index in 0..{len(tasks) - 1}, "
                          f"got {shorten(repr(task))}")
    return tasks[task]


# --- a run of an outside learner -------------------------------------------------------------

class _PolicyLearner:
    """The part of the Learner contract greedy evaluation uses (:func:`ctmarl.protocol.rollout`),
    around a policy: actions are checked for shape and availability."""

    def __init__(self, policy: Policy, info: EnvInfo):
        self.policy, self.info = policy, info

    def initial_hidden(self, batch_size: int) -> None:
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset(batch_size)
        return None

    def act(self, obs, avail_actions, last_actions, hidden, epsilon, generator):
        actions = torch.as_tensor(self.policy(obs, avail_actions), device=avail_actions.device)
        expected = tuple(avail_actions.shape[:2])
        if tuple(actions.shape) != expected or actions.dtype.is_floating_point or actions.dtype == torch.bool:
            raise CtmarlError(f"the policy returned {actions.dtype} actions of shape {tuple(actions.shape)}; "
                              f"expected integer actions of shape {expected} [envs, agents]")
        actions = actions.long()
        if bool(((actions < 0) | (actions >= self.info.n_actions)).any()) or not bool(
                avail_actions.gather(-1, actions[..., None]).all()):
            raise CtmarlError("the policy chose an action that is not available (see avail_actions)")
        return actions, hidden


class OutsideRun:
    """One run of a learner that is not a ctmarl plug-in, under the suite's protocol.

    Go through :attr:`tasks` in order: :meth:`env` gives the task's training env (the tier's
    ``num_envs`` copies, seeded as ``ctmarl evaluate`` seeds them); train on it for
    :attr:`env_steps_per_task` env steps (an env step is one step of one live env copy, as the
    suite counts them), calling :meth:`evaluate_due` after each collection (at least whenever
    the task's env steps reach the next of :attr:`eval_points`); then :meth:`end_task`. Finally
    :meth:`record` or :meth:`write`.

    The suite's protocol also says (``run.protocol``) whether exploration restarts at each task
    (``reset_exploration``), whether its replay is emptied at each task start after the first
    (``clear_replay``) and whether the learner may know where tasks begin
    (``announce_task_boundaries``); following them is up to the learner. With
    ``protocol.transition`` the training env's settings move from the previous task's to the
    task's over the start of each task, as in the suite, driven by :meth:`evaluate_due`.

    ``learner`` names the outside learner (letters, digits, ``_``, ``.``, ``-``; not a registered
    ctmarl learner); ``config`` is its hyperparameters as plain data (kept in the record as given).
    """

    def __init__(self, scenario: str | Scenario, tier: str = "quick", seed: int = 0, learner: str = "outside",
                 config: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"):
        from ctmarl.protocol import Evaluator, RunResult
        from ctmarl.registry import LEARNERS

        self.scenario = _scenario(scenario)
        self.tier, self.seed, self.learner = tier, seed, learner
        self.tier_spec = self.scenario.tier(tier)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_INT:
            raise CtmarlError(f"seed must be an integer in [0, 2**53], got {shorten(repr(seed))}")
        if not (isinstance(learner, str) and 1 <= len(learner) <= 64
                and all(c.isascii() and (c.isalnum() or c in "_.-") for c in learner)):
            raise CtmarlError(f"learner name must be 1 to 64 letters, digits, '_', '.' or '-' (it names the "
                              f"record's file), got {shorten(repr(learner))}")
        if learner in LEARNERS.names():
            raise CtmarlError(f"learner name {learner!r} is a registered ctmarl learner; give your own learner "
                              "its own name")
        self.config = _plain_config({} if config is None else config, "config")
        self.device = _device(device)
        self.tasks: tuple[Task, ...] = self.scenario.tasks(tier)
        self.protocol = self.scenario.protocol
        self.env_info: EnvInfo = self.scenario.env_info(tier)
        budget = self.tier_spec.env_steps_per_task
        evals = self.protocol.evals_per_task
        #: Env steps trained on each task.
        self.env_steps_per_task: int = budget
        #: Task env steps at which the greedy evaluations of the current task are due (the last
        #: one is the task's end); as the suite's runner places them.
        self.eval_points: list[int] = [budget * (i + 1) // evals for i in range(evals)]
        self._evaluator = Evaluator(self.tasks, self.protocol.eval_episodes, self.device, seed)
        self._result = RunResult(task_names=[t.name for t in self.tasks],
                                 task_definition=[t.definition for t in self.tasks])
        self._task, self._env, self._task_steps, self._next_eval = 0, None, 0, 0
        self._started = time.perf_counter()

    # --- the loop --------------------------------------------------------------------------------
    @property
    def current_task(self) -> Task | None:
        """The task being trained (None once every task has ended)."""
        return self.tasks[self._task] if self._task < len(self.tasks) else None

    def env(self, task: Task | int | str) -> BatchedEnv:
        """The training env of ``task`` (a :class:`Task` of :attr:`tasks`, an index or a name),
        which must be the current task; the same env on every call within the task."""
        from ctmarl.protocol import _derive_seed  # the suite's seed streams, so envs match its runs

        task = task if isinstance(task, Task) else _task(self.scenario, self.tier, task)
        current = self._require_current()
        if task.index != current.index:
            raise CtmarlError(f"tasks are trained in order: the current task is {current.index} ({current.name}), "
                              f"not {task.index} ({task.name})")
        if self._env is None:
            seed = _derive_seed(self.seed, 3, current.index)
            self._env = current.make_env(self.tier_spec.num_envs, self.device, seed=seed)
            self._transition_settings()
        return self._env

    def evaluate_due(self, policy: Policy, task_steps: int) -> list[float]:
        """Say that ``task_steps`` env steps have been trained on the current task so far; make
        every greedy evaluation whose point (:attr:`eval_points`) that reaches and has not been
        made, record each as a curve point, and return their normalised scores (often none)."""
        current = self._require_current()
        if self._env is None:
            raise CtmarlError(f"task {current.index} ({current.name}): get its training env with run.env(task) "
                              "and train on it before evaluating")
        if isinstance(task_steps, bool) or not isinstance(task_steps, int) or task_steps < self._task_steps:
            raise CtmarlError(f"task_steps must be an integer that never decreases within a task; got "
                              f"{shorten(repr(task_steps))} after {self._task_steps}")
        result = self._result
        result.env_steps += task_steps - self._task_steps
        self._task_steps = task_steps
        scores = []
        learner = _PolicyLearner(policy, self.env_info)
        while self._next_eval < len(self.eval_points) and task_steps >= self.eval_points[self._next_eval]:
            score, episode_return = self._evaluator(learner, current.index)
            for key, value in (("env_step", result.env_steps), ("task", current.index), ("task_step", task_steps),
                               ("score", score), ("return", episode_return)):
                result.curves[key].append(value)
            scores.append(score)
            self._next_eval += 1
        self._transition_settings()
        return scores

    def end_task(self, policy: Policy) -> list[float]:
        """End the current task: evaluate ``policy`` greedily on every task of the scenario (once
        per distinct task definition; the current one is its last curve point) and return R's
        row for this task, ``R[k][j]`` for every task j."""
        current = self._require_current()
        if self._next_eval < len(self.eval_points):
            raise CtmarlError(
                f"task {current.index} ({current.name}) has {len(self.eval_points) - self._next_eval} evaluation(s) "
                f"left: train {self.env_steps_per_task} env steps on it (trained: {self._task_steps}) and call "
                "run.evaluate_due(policy, task_steps) after each collection")
        result, learner = self._result, _PolicyLearner(policy, self.env_info)
        by_definition = {current.definition: (result.curves["score"][-1], result.curves["return"][-1])}
        for other in self.tasks:
            if other.definition not in by_definition:
                by_definition[other.definition] = self._evaluator.on_definition(learner, other.definition)
        result.R.append([by_definition[t.definition][0] for t in self.tasks])
        result.R_return.append([by_definition[t.definition][1] for t in self.tasks])
        self._task, self._env, self._task_steps, self._next_eval = self._task + 1, None, 0, 0
        return result.R[-1]

    def _require_current(self) -> Task:
        current = self.current_task
        if current is None:
            raise CtmarlError(f"every task of {self.scenario.id} has ended: build the record with run.record()")
        return current

    def _transition_settings(self) -> None:
        """As the suite's runner (``Training._transition_settings``): blend the previous task's
        settings into the current task's over ``transition.share`` of its budget."""
        transition, current = self.protocol.transition, self.current_task
        if transition is None or current is None or current.index == 0 or self._env is None:
            return
        alpha = min(self._task_steps / (transition.share * self.env_steps_per_task), 1.0)
        previous = self.tasks[current.index - 1]
        settings = current.settings if alpha >= 1.0 else blend_settings(
            previous.settings, current.settings, alpha, current.family.interpolable)
        if settings != self._env.settings:
            self._env.set_settings(settings)

    # --- the record ------------------------------------------------------------------------------
    def record(self, updates: int = 0) -> dict[str, Any]:
        """The sealed run record (the fields and layout of a ``ctmarl evaluate`` record), once
        every task has ended. ``updates``: the learner's gradient updates over the run, if it
        counts them (``timing.updates``). ``timing.wall_time_s`` runs from this object's creation."""
        from ctmarl.evaluate import RunSpec, build_record
        from ctmarl.method import make_method
        from ctmarl.record import seal
        from ctmarl.registry import LEARNERS

        if self.current_task is not None:
            raise CtmarlError(f"{self._task} of {len(self.tasks)} tasks have ended; end every task "
                              "(run.end_task(policy)) before building the record")
        if isinstance(updates, bool) or not isinstance(updates, int) or not 0 <= updates <= MAX_INT:
            raise CtmarlError(f"updates must be a non-negative integer, got {shorten(repr(updates))}")
        self._result.wall_time_s = time.perf_counter() - self._started
        self._result.updates = updates
        # build_record names a registered learner (run_identity looks its entry point up); the
        # outside learner's block replaces it and the record is sealed again.
        stand_in = LEARNERS.names()[0]
        spec = RunSpec(scenario=self.scenario.source, algo="none", tier=self.tier, learner=stand_in,
                       seed=self.seed, device=str(self.device), neuron_every_updates=0)
        shim = _RecordedLearner(self.config, self.device)
        record = build_record(spec, self.scenario, shim, make_method("none"), self._result)
        record["learner"] = {"name": self.learner, "entry_point": None, "config": self.config}
        return seal(record)

    def write(self, out: str | Path, updates: int = 0) -> Path:
        """Write :meth:`record` into folder ``out`` under the name ``ctmarl evaluate`` would give
        it (``<scenario>-v<version>_<tier>_<learner>_none_seed<seed>.yaml``); return its path."""
        from ctmarl.record import ensure_writable, write_record

        record = self.record(updates)
        ensure_writable(Path(out))
        return write_record(record, Path(out))


class _RecordedLearner:
    """What :func:`ctmarl.evaluate.build_record` reads of a learner."""

    def __init__(self, config: dict[str, Any], device: torch.device):
        self.config, self.device = config, device


def _plain_config(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain record data (tuples become lists), or CtmarlError naming the key path:
    string keys; None, bools, integers within ±2**53, finite floats, strings, lists, mappings."""
    if depth > MAX_DEPTH:
        raise CtmarlError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CtmarlError(f"{where}: keys must be strings, got {shorten(repr(key))}")
            plain[key] = _plain_config(item, f"{where}.{key}", depth + 1)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain_config(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise CtmarlError(f"{where}: integers must be within ±2**53, got {shorten(value)}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CtmarlError(f"{where}: numbers must be finite, got {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise CtmarlError(f"{where}: strings must be at most {MAX_STRING_CHARS} characters")
        return value
    raise CtmarlError(f"{where}: must be plain data (numbers, strings, lists, mappings), got "
                      f"{type(value).__name__} {shorten(repr(value), 40)}")


# --- the leaderboard's verdict ---------------------------------------------------------------

def leaderboard_admission(path: str | Path) -> str | None:
    """Why ``ctmarl leaderboard`` would refuse the record at ``path``, or None if it admits it.

    The leaderboard stops at the first rule a record breaks (:func:`ctmarl.leaderboard.admit`);
    this names every one of its provenance and configuration rules the record breaks, so that a
    record made from a working tree with uncommitted changes still says that its learner is not
    a registered one."""
    from ctmarl.leaderboard import admit, check_method_source, check_provenance, check_standard_config
    from ctmarl.record import load_record

    path = Path(path)
    try:
        admit(path, path.parent)
    except CtmarlError as exc:
        first = str(exc)
    else:
        return None
    try:
        record = load_record(path)
    except CtmarlError:
        return first
    reasons = [first]
    prefix = f"{path}: "
    for check in (check_provenance, check_method_source, check_standard_config):
        try:
            check(record, str(path))
        except CtmarlError as exc:
            if str(exc) != first:
                reasons.append(str(exc).removeprefix(prefix))
    return "; ".join(reasons)
