"""The runner: trains a learner (with a method's hooks) through a scenario's tasks (DESIGN.md §8).

For each task k: restart exploration if the protocol says so, call ``on_task_start`` (if the
protocol announces task boundaries), then repeat {collect ``num_envs`` episodes with ε-greedy
actions -> replay -> ``updates_per_collect`` learner updates, each followed by ``after_update``}
until the task's env-step budget is spent. Greedy evaluations on the current task happen when the
task's env steps cross ``budget * i / evals_per_task`` (i = 1..evals_per_task), so the last one is
at the end of the task. At the end of each task the learner is evaluated greedily on every task of
the scenario: ``R[k][j]`` (``R[k][k]`` is the task's last curve point). Tasks that share a
definition (the same resolved settings: a repeated sequence, ``matrix_drift``'s return to M1) are
evaluated once per task end and share the value (the current task's definition takes the last
curve point), so R costs one evaluation per distinct task, not per task.

With ``protocol.transition`` the training env's interpolable settings are blended from the
previous task's to the current task's over the first part of each task (see
:class:`ctmarl.scenario.Transition`); evaluations always use the task's own settings.

At each task end the plasticity probe (:mod:`ctmarl.probe`) measures how well the network can
still fit random targets; it never changes the run's numbers.

Seeding: the run seed fixes network initialisation (``torch.manual_seed``), replay sampling,
exploration and every env's generator, so the same seed on the same machine and CPU gives the
same numbers.

Resuming: :class:`Training` holds everything the loop changes. Between two collections its
:meth:`~Training.state_dict` captures every random stream (torch's global generator, which network
(re)initialisation draws from; the exploration, replay-sampling, evaluation and env generators;
the method's own state) with the networks, optimizer, replay, counters and results so far, so a
run restored from it continues exactly as the uninterrupted run would have (bit for bit on CPU
at a fixed thread count).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ctmarl import metrics
from ctmarl.checkpoint import CheckpointWriter, InterruptRequest, global_rng_state, set_global_rng_state
from ctmarl.contract import ContractGuard
from ctmarl.envs.base import BatchedEnv, blend_settings
from ctmarl.errors import NonFiniteLossError, RunInterrupted
from ctmarl.learner import EpisodeBatch, Learner, NeuronGroup
from ctmarl.method import Method, MethodContext, hook_error
from ctmarl.neurons import GroupSnapshot, NeuronMonitor
from ctmarl.probe import PlasticityProbe, ProbeSettings
from ctmarl.runlog import TRAIN_EVERY_UPDATES, RunLog, flatten_numbers
from ctmarl.scenario import Scenario, Task

#: progress(env_steps_advanced, task_index, task_name, latest_score)
ProgressFn = Callable[[int, int, str, float], None]


@dataclass
class Rollout:
    """What one batched collection produced."""

    batch: EpisodeBatch
    score: torch.Tensor  # [E] normalised episode scores
    episode_return: torch.Tensor  # [E]
    env_steps: int


@torch.no_grad()
def rollout(env: BatchedEnv, learner: Learner, epsilon: float, generator: torch.Generator) -> Rollout:
    """Run one episode in every env copy in lockstep; finished copies are masked out."""
    info, e = env.info, env.num_envs
    n, limit, device = info.n_agents, info.episode_limit, env.device
    first = env.reset()
    obs = first.obs.new_zeros((e, limit + 1, n, info.obs_dim))
    state = first.state.new_zeros((e, limit + 1, info.state_dim))
    avail = torch.zeros((e, limit + 1, n, info.n_actions), dtype=torch.bool, device=device)
    actions = torch.zeros((e, limit, n), dtype=torch.long, device=device)
    reward = torch.zeros((e, limit), device=device)
    terminated = torch.zeros((e, limit), dtype=torch.bool, device=device)
    mask = torch.zeros((e, limit), device=device)
    obs[:, 0], state[:, 0], avail[:, 0] = first.obs, first.state, first.avail_actions
    hidden = learner.initial_hidden(e)
    last_actions = torch.full((e, n), -1, dtype=torch.long, device=device)
    active = torch.ones(e, dtype=torch.bool, device=device)
    score = torch.zeros(e, device=device)
    for t in range(limit):
        chosen, hidden = learner.act(obs[:, t], avail[:, t], last_actions, hidden, epsilon, generator)
        step = env.step(chosen)
        ended = step.terminated | step.truncated
        actions[:, t] = chosen
        mask[:, t] = active.float()
        reward[:, t] = step.reward * active
        terminated[:, t] = step.terminated & active
        obs[:, t + 1], state[:, t + 1], avail[:, t + 1] = step.obs, step.state, step.avail_actions
        score = torch.where(active & ended, step.score, score)
        active = active & ~ended
        last_actions = chosen
        # One host sync per step on a GPU, kept on purpose: where the rollout stops decides how many
        # draws ε-greedy takes from the exploration generator, so checking every k steps would
        # change every record; and with kernels this small the GPU is only a few launches behind the
        # host, so the wait is short.
        if not bool(active.any()):
            break
    batch = EpisodeBatch(obs, state, avail, actions, reward, terminated, mask)
    return Rollout(batch, score, reward.sum(1), int(mask.sum()))


@dataclass
class RunResult:
    """Everything a run measured; :mod:`ctmarl.record` turns it into a record."""

    task_names: list[str]
    #: Per task: index of its distinct definition (see ctmarl.scenario.Task.definition).
    task_definition: list[int] = field(default_factory=list)
    curves: dict[str, list] = field(default_factory=lambda: {
        "env_step": [], "task": [], "task_step": [], "score": [], "return": []})
    R: list[list[float]] = field(default_factory=list)
    R_return: list[list[float]] = field(default_factory=list)
    q_tot_mse: list[float] = field(default_factory=list)
    #: Neuron-level curves: "update", "env_step", "task" columns and, per group, its part and
    #: one column per GroupSnapshot field (see ctmarl.neurons).
    neurons: dict[str, Any] = field(default_factory=lambda: {
        "every_updates": 0, "update": [], "env_step": [], "task": [], "groups": {}})
    env_steps: int = 0
    updates: int = 0
    wall_time_s: float = 0.0
    #: Env steps at which the run was resumed from a checkpoint (provenance, not a measurement).
    resumed_at_env_steps: list[int] = field(default_factory=list)
    #: The plasticity probe's results (ctmarl.probe.PlasticityProbe.result), None when off.
    plasticity_probe: dict[str, Any] | None = None
    #: The method contract's counters while the run goes, its outcome once it is over
    #: (ctmarl.contract.ContractGuard.outcome).
    contract: dict[str, Any] = field(default_factory=dict)

    def log_neurons(self, snapshot: dict[str, GroupSnapshot], groups: list[NeuronGroup], task: int) -> None:
        log = self.neurons
        log["update"].append(self.updates)
        log["env_step"].append(self.env_steps)
        log["task"].append(task)
        for group in groups:
            if group.name not in snapshot:
                continue
            columns = log["groups"].setdefault(group.name, {"part": group.part})
            columns.setdefault("width", []).append(group.width)
            for key, value in vars(snapshot[group.name]).items():
                columns.setdefault(key, []).append(value)

    def task_curves(self) -> list[list[float]]:
        per_task: list[list[float]] = [[] for _ in self.task_names]
        for task, score in zip(self.curves["task"], self.curves["score"]):
            per_task[task].append(score)
        return per_task

    def summary(self) -> dict[str, Any]:
        curves = self.task_curves()
        forgetting = metrics.forgetting(self.R)
        return {
            "performance": metrics.performance(curves),
            "auc": metrics.auc(curves),
            "auc_per_task": metrics.auc_per_task(curves).tolist(),
            "final_score_per_task": metrics.final_scores(curves).tolist(),
            "forgetting": forgetting,
        }


class Evaluator:
    """Greedy evaluation on any task of the scenario, with one persistent env per distinct task
    definition (seeded by the index of the definition's first task)."""

    def __init__(self, tasks: tuple[Task, ...], episodes: int, device: torch.device, seed: int):
        first = {}
        for task in tasks:
            first.setdefault(task.definition, task)
        self.envs = [first[d].make_env(episodes, device, seed=_derive_seed(seed, 2, first[d].index))
                     for d in range(len(first))]
        self.definition = [task.definition for task in tasks]
        self.generator = torch.Generator(device=device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "envs": [env.state_dict() for env in self.envs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            env.load_state_dict(env_state)

    def __call__(self, learner: Learner, task_index: int) -> tuple[float, float]:
        """Mean normalised score and mean return of greedy episodes on task ``task_index``."""
        return self.on_definition(learner, self.definition[task_index])

    def on_definition(self, learner: Learner, definition: int) -> tuple[float, float]:
        result = rollout(self.envs[definition], learner, 0.0, self.generator)
        return float(result.score.mean()), float(result.episode_return.mean())

    def q_tot_mse(self, learner: Learner, task_index: int) -> float | None:
        """For one-step games with a payoff table: MSE of Q_tot over every joint action."""
        env = self.envs[self.definition[task_index]]
        table = getattr(env, "joint_action_table", None)
        if table is None:
            return None
        joint_actions, payoff = table()
        start = env.reset()
        count = joint_actions.shape[0]
        batch = EpisodeBatch(
            start.obs[:1].expand(count, -1, -1)[:, None], start.state[:1].expand(count, -1)[:, None],
            start.avail_actions[:1].expand(count, -1, -1)[:, None], joint_actions[:, None],
            payoff.new_zeros(count, 1), torch.zeros(count, 1, dtype=torch.bool, device=payoff.device),
            payoff.new_ones(count, 1),
        )
        q_tot = learner.joint_q(batch, joint_actions)
        return float((q_tot - payoff).pow(2).mean())


def _derive_seed(seed: int, stream: int, index: int = 0) -> int:
    """Independent, reproducible seeds per (run seed, stream, index)."""
    return (seed * 1_000_003 + stream * 10_007 + index) % (2**63)


@dataclass
class Position:
    """Where a run stands between two collections (with :class:`RunResult`, the loop's counters)."""

    task: int = 0
    """Index of the task being trained; the number of tasks once the run is over."""
    task_started: bool = False
    """Whether the task's env exists and ``on_task_start`` has run."""
    task_steps: int = 0
    """Env steps trained on the current task."""
    next_eval: int = 0
    """Index of the current task's next evaluation point."""
    explore_steps: int = 0
    """Env steps since the ε schedule last restarted."""
    score: float = 0.0
    """Latest greedy score on the current task (for progress)."""
    log_rows: int = 0
    """Rows emitted to the live logs so far (see :mod:`ctmarl.runlog`): a resumed run keeps the
    first this many rows of its CSV log."""


class Training:
    """One run in progress: the learner, method and everything the loop changes.

    :meth:`train` runs the loop from wherever the run stands; :meth:`state_dict` and
    :meth:`load_state_dict` capture and restore it between two collections. The caller seeds
    torch and builds the learner (see :func:`ctmarl.evaluate.prepare`).
    """

    def __init__(self, scenario: Scenario, tier: str, learner: Learner, method: Method, seed: int,
                 neuron_every_updates: int = 0, probe: bool = True):
        self.tier_spec = scenario.tier(tier)
        self.protocol = scenario.protocol
        self.tasks = scenario.tasks(tier)
        self.learner, self.method, self.seed = learner, method, seed
        device = learner.device
        self.budget = budget = self.tier_spec.env_steps_per_task
        evals = self.protocol.evals_per_task
        self.eval_points = [budget * (i + 1) // evals for i in range(evals)]
        self.explore_generator = torch.Generator(device=device)
        self.explore_generator.manual_seed(_derive_seed(seed, 1))
        self.evaluator = Evaluator(self.tasks, self.protocol.eval_episodes, device, seed)
        self.result = RunResult(task_names=[t.name for t in self.tasks],
                                task_definition=[t.definition for t in self.tasks])
        self.transition = self.protocol.transition
        # The smoke tier (for tests, a few updates per task) probes with 10 steps to stay seconds long.
        probe_settings = ProbeSettings(steps=10) if tier == "smoke" else ProbeSettings()
        self.probe = PlasticityProbe(_derive_seed(seed, 4), probe_settings) if probe else None
        self.result.neurons["every_updates"] = neuron_every_updates
        self.monitor = NeuronMonitor(learner.neuron_groups, neuron_every_updates) if neuron_every_updates else None
        self.position = Position()
        self.env: BatchedEnv | None = None  # the current task's training env
        self.checkpoint: CheckpointWriter | None = None
        #: Live logs (ctmarl.runlog.RunLog); rows are counted whether or not it is set.
        self.log: RunLog | None = None
        self._wall_time_before = 0.0  # of earlier segments of a resumed run
        self._segment_started = time.perf_counter()
        # Every hook call goes through the guard: a plug-in's exception becomes one error line
        # naming it, and the cheap part of the method contract is checked (ctmarl.contract).
        self.guard = ContractGuard(learner, method, seed)
        self.result.contract = self.guard.fresh_counts()
        self.guard.check_protocol()
        context = MethodContext(len(self.tasks), self.protocol.announce_task_boundaries, seed)
        self.guard.call("attach", "before training", lambda: method.attach(learner, context), self.result.contract)
        self.guard.round_trip("after attach", self.result.contract)

    # --- the loop --------------------------------------------------------------------------------
    def train(
        self,
        progress: ProgressFn | None = None,
        checkpoint: CheckpointWriter | None = None,
        interrupt: InterruptRequest | None = None,
    ) -> RunResult:
        """Train to the end of the scenario; write ``checkpoint`` when it is due and, on an
        ``interrupt`` request, write it and raise :class:`~ctmarl.errors.RunInterrupted`."""
        self.checkpoint = checkpoint
        self._segment_started = time.perf_counter()
        position = self.position
        while position.task < len(self.tasks):
            task = self.tasks[position.task]
            if not position.task_started:
                self._start_task(task)
            while position.task_steps < self.budget:
                env_steps = self._collect_and_update(task)
                if progress is not None:
                    progress(env_steps, task.index, task.name, position.score)
                stop = interrupt is not None and interrupt.requested
                if checkpoint is not None and (stop or checkpoint.due(self.result.env_steps)):
                    if self.log is not None:
                        self.log.flush()  # the log holds every row the checkpoint counts
                    checkpoint.write(self.state_dict(), self.result.env_steps, self.result.updates)
                if stop:
                    where = "" if checkpoint is None else f"; checkpoint written to {checkpoint.path}"
                    by = "" if interrupt.signal_name == "SIGINT" else f" by {interrupt.signal_name}"
                    raise RunInterrupted(
                        f"interrupted{by} at env step {self.result.env_steps} (task {task.index + 1}/"
                        f"{len(self.tasks)} {task.name}){where}; run the same command with --resume to continue",
                        signal_name=interrupt.signal_name)
            self._end_task(task)
        self.result.wall_time_s = self._wall_time()
        if self.probe is not None:
            self.result.plasticity_probe = self.probe.result()
        self.result.contract = self.guard.outcome(self.result.contract)
        return self.result

    def _start_task(self, task: Task) -> None:
        position = self.position
        self.env = self._make_env(task)
        if self.protocol.reset_exploration:
            position.explore_steps = 0
        if self.protocol.clear_replay and task.index > 0:
            self.learner.reinitialise((), clear_replay=True)
        if self.protocol.announce_task_boundaries:
            self.guard.call("on_task_start", f"at task {task.index} ({task.name})",
                            lambda: self.method.on_task_start(task.index), self.result.contract)
        position.task_steps, position.next_eval, position.score = 0, 0, 0.0
        position.task_started = True

    def _make_env(self, task: Task) -> BatchedEnv:
        return task.make_env(self.tier_spec.num_envs, self.learner.device, seed=_derive_seed(self.seed, 3, task.index))

    def _collect_and_update(self, task: Task) -> int:
        """One collection of episodes, its updates, and the evaluations it reaches; returns its env steps."""
        position, result, learner, monitor = self.position, self.result, self.learner, self.monitor
        self._transition_settings(task)
        collected = rollout(self.env, learner, learner.epsilon(position.explore_steps), self.explore_generator)
        if self.probe is not None:
            self.probe.offer_batch(collected.batch)
        learner.add_episodes(collected.batch)
        position.task_steps += collected.env_steps
        position.explore_steps += collected.env_steps
        result.env_steps += collected.env_steps
        for _ in range(learner.config.updates_per_collect):
            logging = monitor is not None and monitor.wants(result.updates + 1)
            if logging:
                monitor.arm()
            stats = learner.update(after_backward=self._after_backward)
            if stats is None:
                if logging:
                    monitor.disarm()
                break
            result.updates += 1
            if not math.isfinite(stats["loss"]):
                if logging:
                    monitor.disarm()
                self._stop_on_non_finite(stats["loss"], task)
            if logging:
                snapshot = monitor.take()
                result.log_neurons(snapshot, learner.neuron_groups(), task.index)
                self._emit("neurons", task.index, {
                    f"{name}/{key}": getattr(group, key) for name, group in snapshot.items()
                    for key in ("stagnant_ratio", "dormant_ratio", "grama_ratio")})
            self.guard.call("after_update", f"at update {result.updates}",
                            lambda: self.method.after_update(result.updates), result.contract)
            if result.updates % TRAIN_EVERY_UPDATES == 0:
                self._emit("train", task.index, {
                    **{k: float(v) for k, v in stats.items()}, "epsilon": learner.epsilon(position.explore_steps)})
                self._emit("method", task.index, flatten_numbers(
                    self.guard.summary(f"at update {result.updates}")))
        points = self.eval_points
        while position.next_eval < len(points) and position.task_steps >= points[position.next_eval]:
            score, episode_return = self.evaluator(learner, task.index)
            for key, value in (("env_step", result.env_steps), ("task", task.index),
                               ("task_step", position.task_steps), ("score", score), ("return", episode_return)):
                result.curves[key].append(value)
            position.score = score
            position.next_eval += 1
            self._emit("eval", task.index, {"score": score, "return": episode_return})
        return collected.env_steps

    def _transition_settings(self, task: Task) -> None:
        """Blend the training env's settings from the previous task's towards ``task``'s (see
        :class:`ctmarl.scenario.Transition`); from the end of the transition on, ``task``'s own.
        Nothing to do with abrupt switches, or on the first task (there is no previous one)."""
        if self.transition is None or task.index == 0:
            return
        previous = self.tasks[task.index - 1]
        span = self.transition.share * self.budget
        alpha = min(self.position.task_steps / span, 1.0)
        settings = task.settings if alpha >= 1.0 else blend_settings(
            previous.settings, task.settings, alpha, task.family.interpolable)
        if settings != self.env.settings:
            self.env.set_settings(settings)

    def _after_backward(self) -> None:
        if self.monitor is not None:
            self.monitor.after_backward()  # measure the gradients before a method may alter them
        self.guard.call("after_backward", f"at update {self.result.updates + 1}", self.method.after_backward,
                        self.result.contract, grads=True)

    def _stop_on_non_finite(self, loss: float, task: Task) -> None:
        kept = "" if self.checkpoint is None else f"; {self.checkpoint.describe()}"
        raise NonFiniteLossError(
            f"the TD loss became {loss} at update {self.result.updates} (env step {self.result.env_steps}, "
            f"task {task.index + 1}/{len(self.tasks)} {task.name}); training stopped{kept}")

    def _end_task(self, task: Task) -> None:
        result, evaluator = self.result, self.evaluator
        by_definition = {task.definition: (result.curves["score"][-1], result.curves["return"][-1])}
        for other in self.tasks:
            if other.definition not in by_definition:
                by_definition[other.definition] = evaluator.on_definition(self.learner, other.definition)
        result.R.append([by_definition[other.definition][0] for other in self.tasks])
        result.R_return.append([by_definition[other.definition][1] for other in self.tasks])
        mse = evaluator.q_tot_mse(self.learner, task.index)
        if mse is not None:
            result.q_tot_mse.append(mse)
        if self.probe is not None:
            self.probe.at_task_end(self.learner)
        where = f"at task {task.index} ({task.name})"
        if self.protocol.announce_task_boundaries:
            self.guard.call("on_task_end", where, lambda: self.method.on_task_end(task.index), result.contract)
        self.guard.round_trip(f"at the end of task {task.index} ({task.name})", result.contract)
        self._emit("method", task.index, flatten_numbers(self.guard.summary(where)))
        self._emit("R", task.index, {f"task_{j}": value for j, value in enumerate(result.R[-1])})
        self.position.task, self.position.task_started = task.index + 1, False
        self.env = None

    def _emit(self, kind: str, task: int, values: dict[str, float]) -> None:
        """Count rows for the live logs and hand them to them (see :mod:`ctmarl.runlog`)."""
        self.position.log_rows += len(values)
        if self.log is not None and values:
            self.log.write(kind, self.result.env_steps, self.result.updates, task, values)

    def _wall_time(self) -> float:
        return self._wall_time_before + time.perf_counter() - self._segment_started

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole run between two collections, as plain containers of tensors."""
        result = dataclasses.asdict(self.result)
        result["wall_time_s"] = self._wall_time()
        return {
            "position": dataclasses.asdict(self.position),
            "result": result,
            "learner": self.learner.checkpoint_state(),
            "method": self.guard.round_trip(f"at a checkpoint (env step {self.result.env_steps})", None),
            "neuron_tracker": None if self.monitor is None else self.monitor.tracker.state_dict(),
            "probe": None if self.probe is None else self.probe.state_dict(),
            "explore_generator": self.explore_generator.get_state(),
            "evaluator": self.evaluator.state_dict(),
            "env": None if self.env is None else self.env.state_dict(),
            "global_rng": global_rng_state(self.learner.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of the same run (same scenario, tier, configs, seed)."""
        # The method first: it may re-create structure (KNIFE's grown layers) that the learner's
        # weights and optimizer state are then loaded into.
        try:
            self.method.load_state_dict(state["method"])
        except Exception as exc:  # noqa: BLE001
            raise hook_error(self.method, "load_state_dict", "resuming from a checkpoint", exc) from exc
        self.guard.structure_changed()
        self.learner.load_checkpoint_state(state["learner"])
        if self.monitor is not None:
            self.monitor.tracker.load_state_dict(state["neuron_tracker"], self.learner.device)
        self.explore_generator.set_state(state["explore_generator"])
        self.evaluator.load_state_dict(state["evaluator"])
        if self.probe is not None:
            self.probe.load_state_dict(state["probe"], self.learner.device)
        self.result = RunResult(**state["result"])
        self.result.resumed_at_env_steps.append(self.result.env_steps)
        self._wall_time_before = self.result.wall_time_s
        self.position = Position(**state["position"])
        self.env = None
        if self.position.task_started:
            task = self.tasks[self.position.task]
            self.env = self._make_env(task)
            self._transition_settings(task)
            self.env.load_state_dict(state["env"])
        # Last: nothing above may draw from torch's global generator after it is restored.
        set_global_rng_state(state["global_rng"], self.learner.device)


def run(
    scenario: Scenario,
    tier: str,
    learner: Learner,
    method: Method,
    seed: int,
    progress: ProgressFn | None = None,
    neuron_every_updates: int = 0,
    probe: bool = True,
) -> RunResult:
    """Train ``learner`` with ``method`` through ``scenario`` at ``tier``; return what was measured.

    Neuron metrics are logged every ``neuron_every_updates`` updates (0 = off); they only read
    the networks, so they never change the run's numbers. The caller seeds torch and builds the
    learner (see :func:`ctmarl.evaluate.evaluate`). For checkpoints and resuming, use
    :class:`Training` directly.
    """
    return Training(scenario, tier, learner, method, seed, neuron_every_updates, probe).train(progress)
