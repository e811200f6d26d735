"""Scenarios: ordered task sequences with drift, their protocol and their compute tiers.

A scenario YAML (``scenarios/*.yaml``) holds::

    name: matrix_drift            # must match the file name
    version: 1                    # part of every record; a changed scenario is a new version
    description: ...
    env: {family: matrix, settings: {...}}       # env family + settings fixed for all tasks
    tasks: [{name: M1, settings: {...}}, ...]     # ordered; the settings that drift
    protocol: {evals_per_task, eval_episodes, announce_task_boundaries, reset_exploration,
               repeat, clear_replay, transition}  # repeat: visits of the task list; see Protocol
    tiers: {smoke: {...}, quick: {...}, standard: {...}}   # budgets, see Tier

Instead of ``tasks``, a scenario may give ``task_generator: {kind, count, seed, settings}``: the env
family draws the task list (e.g. ``matrix``'s ``row_column_permutations``), deterministically
from ``seed``. Long and repeated tracks are then features of the scenario file, not hand-written
task lists: ``protocol.repeat: N`` trains the (given or generated) list N times in order.

Every task of the expanded sequence knows its *definition*: the index of the distinct resolved
settings it runs (``M1`` and its return in ``matrix_drift`` share one). Evaluations are made once
per definition at each task end (the R matrix copies the value to every task of that
definition), so R stays affordable on long tracks with few distinct tasks.

Loading validates everything, including every task's env settings under every tier, and raises
:class:`~ctmarl.errors.ConfigError` naming the file, key and allowed values. Scenarios are found by
versioned id (``matrix_drift-v1``), by bare name (the newest version), or by a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ctmarl.config import check_range, from_mapping, read_yaml, stable_hash, to_plain
from ctmarl.envs.base import BatchedEnv, EnvInfo
from ctmarl.errors import ConfigError, CtmarlError, UnknownNameError, shorten
from ctmarl.registry import ENVS, LEARNERS, Registry

TIER_NAMES = ("smoke", "quick", "standard")
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


#: Bounds on the length of a task sequence (long tracks run 100+ tasks; beyond these, R alone
#: would not fit a record).
MAX_REPEAT = 100
MAX_TASKS = 1000
#: Ranges of the protocol and tier numbers. Each greedy evaluation is a point of every record's
#: curves (1000 per task is already far finer than a plot needs); an evaluation runs
#: eval_episodes env copies at once; 10^10 env steps per task is 5000x the paper-scale tiers.
MAX_EVALS_PER_TASK = 1000
MAX_EVAL_EPISODES = 4096
MAX_ENV_STEPS_PER_TASK = 10**10
MAX_NUM_ENVS = 4096
#: Most float32 values one batch of episodes may hold under a tier: copies x (episode_limit + 1)
#: steps x values per step (every agent's observation, action mask and one-hot action, plus the
#: state), for the training rollout (num_envs copies), an evaluation (eval_episodes copies) and
#: each registered learner's replay (buffer_episodes). 2**31 values are 8 GiB; the largest
#: shipped tier (predator_prey_penalty standard's replay) needs about a third of it.
MAX_BATCH_VALUES = 2**31
#: Names a scenario's ``module:Class`` env families may come from (comma-separated modules),
#: besides the registered families: loading a scenario imports nothing else it names.
ALLOW_IMPORT_ENV = "CTMARL_ALLOW_IMPORT"
#: A scenario's name (and so its file name and its records' names).
_SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Transition:
    """A gradual switch between consecutive tasks (abruptness drives plasticity loss).

    For the first ``share`` of task k's env-step budget, every setting the env family lists in
    ``interpolable`` is the blend (1 - α) · previous task + α · task k, with α = task env steps /
    (share · budget) at each collection (0 -> 1); then task k's settings. Greedy evaluations are
    always on task k's own settings. The first task starts abruptly (there is no previous one).
    """

    share: float
    """Share of each task's budget the transition lasts, in (0, 1]."""

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"transition.share: must be in (0, 1], got {self.share}")


@dataclass(frozen=True)
class Protocol:
    """How a method is trained and evaluated across the task sequence (tier-independent)."""

    evals_per_task: int
    """Greedy evaluations on the current task per task; the interval is budget / evals_per_task."""
    eval_episodes: int
    """Episodes per greedy evaluation."""
    announce_task_boundaries: bool = True
    """Whether the method's ``on_task_start`` / ``on_task_end`` hooks are called."""
    reset_exploration: bool = True
    """Whether the ε-greedy schedule restarts at each task start."""
    repeat: int = 1
    """How many times the task list is trained, in order (visits after the first are named
    ``<task>#<visit>``): a repeated sequence measures whether the n-th visit of a task is learned
    more slowly than the first (MEAL's AUC-loss), with no scratch reference needed."""
    clear_replay: bool = False
    """Whether the learner's replay is emptied at every task start after the first, for every
    method. Then each task is learned from its own transitions only, and a method's score says
    what its network can still learn, not how long the previous task's transitions take to leave
    the buffer (``predator_prey_drift-v4``: with a replay as large as a visit, that stale data
    alone kept even a fresh network from re-learning; ``validity/ablations/``)."""
    transition: Transition | None = None
    """None: abrupt task switches. Otherwise the env's numeric settings move gradually from the
    previous task's to the new task's over the first ``transition.share`` of each task's budget."""

    def __post_init__(self) -> None:
        if not 1 <= self.repeat <= MAX_REPEAT:
            raise ValueError(f"repeat: must be an integer in [1, {MAX_REPEAT}], got {self.repeat}")
        check_range(self, "evals_per_task", 1, MAX_EVALS_PER_TASK)
        check_range(self, "eval_episodes", 1, MAX_EVAL_EPISODES)


@dataclass(frozen=True)
class Tier:
    """A named compute budget of a scenario."""

    env_steps_per_task: int
    """Env steps (summed over parallel envs) trained on each task."""
    num_envs: int
    """Parallel env copies collecting episodes."""
    env: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Overrides of the fixed env settings (e.g. a smaller world)."""
    learner: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Overrides of the learner config (batch size, buffer, ε schedule) for every learner."""

    def __post_init__(self) -> None:
        if self.env_steps_per_task < 1:
            raise ValueError(f"env_steps_per_task: must be a positive integer, got {self.env_steps_per_task}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs: must be a positive integer, got {self.num_envs}")
        check_range(self, "env_steps_per_task", 1, MAX_ENV_STEPS_PER_TASK)
        check_range(self, "num_envs", 1, MAX_NUM_ENVS)


@dataclass(frozen=True)
class Tiers:
    smoke: Tier
    quick: Tier
    standard: Tier


@dataclass(frozen=True)
class EnvSpec:
    family: str
    settings: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    settings: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 64 or not self.name.isprintable():
            raise ValueError(f"name: a task name is 1 to 64 printable characters, got {shorten(repr(self.name))}")


@dataclass(frozen=True)
class TaskGenerator:
    """A task list drawn by the env family (its ``generate_tasks`` classmethod), from ``seed``."""

    kind: str
    """The family's generator, e.g. ``row_column_permutations`` for ``matrix``."""
    count: int
    """Tasks in the list (before ``protocol.repeat``)."""
    seed: int = 0
    settings: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """The generator's own arguments (e.g. the base payoff table)."""

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_TASKS:
            raise ValueError(f"task_generator.count: must be in [1, {MAX_TASKS}], got {self.count}")


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario file's content, validated."""

    name: str
    version: int
    description: str
    env: EnvSpec
    protocol: Protocol
    tiers: Tiers
    tasks: tuple[TaskSpec, ...] = ()
    task_generator: TaskGenerator | None = None

    def __post_init__(self) -> None:
        if not _SCENARIO_NAME.fullmatch(self.name):
            raise ValueError(f"name: must be 1 to 64 letters, digits, '_', '.' or '-' (it names files), "
                             f"got {shorten(repr(self.name))}")
        if self.version < 1:
            raise ValueError(f"version: must be >= 1, got {self.version}")
        if self.task_generator is None and not self.tasks:
            raise ValueError("tasks: at least one task is required (or a task_generator)")
        if self.task_generator is not None and self.tasks:
            raise ValueError("tasks and task_generator: give one of them, not both")


@dataclass(frozen=True)
class Task:
    """One task of a scenario under one tier: its env family and fully resolved settings."""

    index: int
    name: str
    family: type[BatchedEnv]
    settings: Any
    definition: int = 0
    """Index of the task's distinct definition (resolved settings) in the sequence, numbered in
    order of first appearance; tasks with equal settings share one."""

    def make_env(self, num_envs: int, device: torch.device | str = "cpu", seed: int = 0) -> BatchedEnv:
        return self.family(self.settings, num_envs=num_envs, device=device, seed=seed)


@dataclass(frozen=True)
class Scenario:
    spec: ScenarioSpec
    source: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def id(self) -> str:
        return f"{self.spec.name}-v{self.spec.version}"

    @property
    def protocol(self) -> Protocol:
        return self.spec.protocol

    def tier(self, name: str) -> Tier:
        if name not in TIER_NAMES:
            raise UnknownNameError(f"unknown tier {name!r}; known: {', '.join(TIER_NAMES)}")
        return getattr(self.spec.tiers, name)

    @property
    def definition_hash(self) -> str:
        """Hash of the scenario's definition, as records hold it. Protocol and scenario keys
        added after version 1 of the file format are left out while at their defaults, so adding
        them did not change the hash (and the records) of any existing scenario."""
        plain = to_plain(self.spec)
        for key, default in (("repeat", 1), ("transition", None), ("clear_replay", False)):
            if plain["protocol"].get(key) == default:
                del plain["protocol"][key]
        if plain.get("task_generator") is None:
            del plain["task_generator"]
        return stable_hash(plain)

    def task_specs(self) -> tuple[TaskSpec, ...]:
        """The task list before ``protocol.repeat``: given, or drawn by the family's generator."""
        generator = self.spec.task_generator
        if generator is None:
            return self.spec.tasks
        family = ENVS.load(self.spec.env.family)
        generate = getattr(family, "generate_tasks", None)
        if generate is None:
            raise ConfigError(f"{self.source}: task_generator: env family {self.spec.env.family!r} has no task "
                              "generator (generate_tasks)")
        try:
            pairs = generate(generator.kind, generator.count, generator.seed, dict(generator.settings))
        except ValueError as exc:
            raise ConfigError(f"{self.source}: task_generator: {exc}") from None
        return tuple(TaskSpec(name, types.MappingProxyType(dict(settings))) for name, settings in pairs)

    @property
    def n_tasks(self) -> int:
        """Tasks in the whole sequence (the task list times ``protocol.repeat``)."""
        generator = self.spec.task_generator
        listed = generator.count if generator is not None else len(self.spec.tasks)
        return listed * self.spec.protocol.repeat

    def tasks(self, tier: str) -> tuple[Task, ...]:
        """The whole task sequence under ``tier``: the task list ``protocol.repeat`` times."""
        family = ENVS.load(self.spec.env.family)
        tier_spec = self.tier(tier)
        listed = []
        for index, task in enumerate(self.task_specs()):
            merged = {**self.spec.env.settings, **tier_spec.env, **task.settings}
            where = f"{self.source}: tasks[{index}] ({task.name}) under tier {tier!r}"
            listed.append((task.name, from_mapping(family.Settings, merged, where)))
        definitions: dict[Any, int] = {}
        tasks = []
        repeat = self.spec.protocol.repeat
        for visit in range(1, repeat + 1):
            for name, settings in listed:
                definition = definitions.setdefault(stable_hash(settings), len(definitions))
                label = name if visit == 1 else f"{name}#{visit}"
                tasks.append(Task(len(tasks), label, family, settings, definition))
        return tuple(tasks)

    def env_info(self, tier: str) -> EnvInfo:
        """Sizes shared by all tasks (checked equal when the scenario is loaded)."""
        return self.tasks(tier)[0].make_env(1).info

    def validate(self) -> None:
        """Resolve every task under every tier and check that sizes agree across tasks; check
        every tier's learner overrides against every registered learner and its batch sizes
        against :data:`MAX_BATCH_VALUES`. The env family is imported only once it is known to be
        registered or allowed (:func:`check_env_family`)."""
        check_env_family(self.spec.env.family, self.source)
        try:
            family = ENVS.load(self.spec.env.family)
        except UnknownNameError as exc:
            raise ConfigError(f"{self.source}: env.family: {exc}") from None
        if not (isinstance(family, type) and issubclass(family, BatchedEnv)):
            raise ConfigError(f"{self.source}: env.family {self.spec.env.family!r} is not a BatchedEnv")
        if self.n_tasks > MAX_TASKS:
            raise ConfigError(f"{self.source}: {self.n_tasks} tasks (task list x protocol.repeat); at most "
                              f"{MAX_TASKS} are allowed")
        if self.spec.protocol.transition is not None and not family.interpolable:
            raise ConfigError(f"{self.source}: protocol.transition: env family {self.spec.env.family!r} has no "
                              "numeric settings to interpolate, so only abrupt switches are possible")
        for tier in TIER_NAMES:
            tasks = self.tasks(tier)
            distinct = {t.definition: t for t in tasks}.values()  # one env per distinct definition
            infos = {t.name: t.make_env(1).info for t in distinct}
            if len(set(infos.values())) != 1:
                raise ConfigError(
                    f"{self.source}: tier {tier!r}: tasks differ in sizes {infos}; "
                    "observation, state and action sizes must be fixed across tasks"
                )
            self._check_batch_sizes(tier, next(iter(infos.values())), self.learner_configs(tier))

    def learner_configs(self, tier: str) -> dict[str, Any]:
        """The tier's ``learner`` overrides built into the ``Config`` of every registered learner.

        The learner is chosen at run time (``--learner``), so overrides must suit every registered
        one: a key or value one of them rejects is an error when the scenario loads, naming it."""
        overrides = dict(self.tier(tier).learner)
        configs = {}
        for name in LEARNERS.names():
            try:
                config_class = LEARNERS.load(name).Config
            except (CtmarlError, AttributeError):  # a broken plug-in: its runs fail by name, not this file
                continue
            if not dataclasses.is_dataclass(config_class):
                continue
            try:
                configs[name] = from_mapping(config_class, overrides, f"{self.source}: tiers.{tier}.learner")
            except ConfigError as exc:
                raise ConfigError(f"{exc} (tier learner overrides apply to every registered learner; "
                                  f"checked for {name})") from None
        return configs

    def _check_batch_sizes(self, tier: str, info: EnvInfo, learner_configs: dict[str, Any]) -> None:
        """Refuse a tier whose episode batches exceed :data:`MAX_BATCH_VALUES` float32 values."""
        steps = info.episode_limit + 1
        per_step = info.n_agents * (info.obs_dim + 2 * info.n_actions) + info.state_dim
        batches = {f"tiers.{tier}.num_envs": self.tier(tier).num_envs,
                   "protocol.eval_episodes": self.spec.protocol.eval_episodes}
        for name, config in learner_configs.items():
            buffer = getattr(config, "buffer_episodes", None)
            if isinstance(buffer, int):
                batches[f"tiers.{tier}.learner.buffer_episodes (the {name} replay)"] = buffer
        for key, copies in batches.items():
            values = copies * steps * per_step
            if values > MAX_BATCH_VALUES:
                raise ConfigError(
                    f"{self.source}: {key}: {copies} episodes x {steps} steps x {per_step} values per step "
                    f"= {values:,} float32 values, more than the {MAX_BATCH_VALUES:,} (8 GiB) allowed; "
                    "lower it, the episode limit or the world's size")


def allowed_import_modules() -> tuple[str, ...]:
    """The modules named in ``$CTMARL_ALLOW_IMPORT`` (comma-separated)."""
    return tuple(m.strip() for m in os.environ.get(ALLOW_IMPORT_ENV, "").split(",") if m.strip())


def check_env_family(family: str, source: str) -> None:
    """``env.family`` must be a registered env family (``ctmarl list``; the ``ctmarl.envs``
    entry-point group) or a ``module:Class`` whose module (or a parent package of it) is listed
    in ``$CTMARL_ALLOW_IMPORT``. Nothing is imported here: a scenario file is data, and naming a
    module in it must not run that module's code."""
    registered = ENVS.names()
    if family in registered:
        return
    module = family.partition(":")[0]
    if ":" in family and any(module == m or module.startswith(m + ".") for m in allowed_import_modules()):
        return
    hint = (f"; a module:Class family is imported only when its module is listed in ${ALLOW_IMPORT_ENV} "
            f"(e.g. {ALLOW_IMPORT_ENV}=my_envs)" if ":" in family else "")
    raise ConfigError(f"{source}: env.family: unknown env family {shorten(repr(family))}; "
                      f"registered: {', '.join(registered)}{hint}")


def load_scenario_file(path: str | Path) -> Scenario:
    """Load and fully validate one scenario YAML."""
    path = Path(path)
    data = read_yaml(path, str(path), what="scenario file")
    spec = from_mapping(ScenarioSpec, data, str(path))
    if path.stem not in (spec.name, f"{spec.name}-v{spec.version}"):
        raise ConfigError(
            f"{path}: name {shorten(repr(spec.name))} does not match the file name "
            f"(expected {spec.name}.yaml or {spec.name}-v{spec.version}.yaml)"
        )
    scenario = Scenario(spec, str(path))
    scenario.validate()
    return scenario


def _standard_scenario_files() -> dict[str, str]:
    """Versioned id and bare name -> path, for the scenarios shipped in ``ctmarl_scenarios``."""
    folder = resources.files("ctmarl_scenarios")
    by_name: dict[str, list[tuple[int, str]]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            header = read_yaml(entry, str(entry), what="scenario file")
            by_name.setdefault(header["name"], []).append((int(header["version"]), str(entry)))
    ids: dict[str, str] = {}
    for name, versions in by_name.items():
        for version, path in versions:
            ids[f"{name}-v{version}"] = path
        ids[name] = max(versions)[1]
    return ids


class _ScenarioRegistry(Registry):
    def _read_group(self) -> None:
        if not self._group_read:
            self._group_read = True
            for scenario_id, path in _standard_scenario_files().items():
                self._specs.setdefault(scenario_id, path)

    def entry_point(self, name: str) -> str:
        if name.endswith((".yaml", ".yml")):
            return name
        return super().entry_point(name)


SCENARIOS = _ScenarioRegistry("scenario", loader=load_scenario_file)


def make_scenario(name: str) -> Scenario:
    """A scenario by versioned id (``matrix_drift-v1``), bare name (newest version) or YAML path."""
    return SCENARIOS.load(name)


def scenario_names() -> list[str]:
    """Bare names of the standard scenarios (each loads its newest version)."""
    return [n for n in SCENARIOS.names() if "-v" not in n]


def scenario_ids() -> list[str]:
    """Versioned ids of every shipped scenario version, older versions included."""
    return [n for n in SCENARIOS.names() if "-v" in n]
