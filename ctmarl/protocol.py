"""The runner: trains a learner (with a method's hooks) through a scenario's tasks (DESIGN.md §8).

For each task k: restart exploration if the protocol says so, call ``on_task_start`` (if the
protocol announces task boundaries), then repeat {collect ``num_envs`` episodes with ε-greedy
actions -> replay -> ``updates_per_collect`` learner updates, each followed by ``after_update``}
until the task's env-step budget is spent. Greedy evaluations on the current task happen when the
task's env steps cross ``budget * i / evals_per_task`` (i = 1..evals_per_task), so the last one is
at the end of the task. At the end of each task the learner is evaluated greedily on every task of
the scenario: ``R[k][j]`` (``R[k][k]`` is the task's last curve point).

Seeding: the run seed fixes network initialisation (``torch.manual_seed``), replay sampling,
exploration and every env's generator, so the same seed on the same machine and CPU gives the
same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ctmarl import metrics
from ctmarl.envs.base import BatchedEnv
from ctmarl.learner import EpisodeBatch, Learner, NeuronGroup
from ctmarl.method import Method, MethodContext
from ctmarl.neurons import GroupSnapshot, NeuronMonitor
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
        if not bool(active.any()):
            break
    batch = EpisodeBatch(obs, state, avail, actions, reward, terminated, mask)
    return Rollout(batch, score, reward.sum(1), int(mask.sum()))


@dataclass
class RunResult:
    """Everything a run measured; :mod:`ctmarl.record` turns it into a record."""

    task_names: list[str]
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
    """Greedy evaluation on any task of the scenario, with one persistent env per task."""

    def __init__(self, tasks: tuple[Task, ...], episodes: int, device: torch.device, seed: int):
        self.envs = [task.make_env(episodes, device, seed=_derive_seed(seed, 2, task.index)) for task in tasks]
        self.generator = torch.Generator(device=device)

    def __call__(self, learner: Learner, task_index: int) -> tuple[float, float]:
        """Mean normalised score and mean return of greedy episodes on task ``task_index``."""
        result = rollout(self.envs[task_index], learner, 0.0, self.generator)
        return float(result.score.mean()), float(result.episode_return.mean())

    def q_tot_mse(self, learner: Learner, task_index: int) -> float | None:
        """For one-step games with a payoff table: MSE of Q_tot over every joint action."""
        env = self.envs[task_index]
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


def run(
    scenario: Scenario,
    tier: str,
    learner: Learner,
    method: Method,
    seed: int,
    progress: ProgressFn | None = None,
    neuron_every_updates: int = 0,
) -> RunResult:
    """Train ``learner`` with ``method`` through ``scenario`` at ``tier``; return what was measured.

    Neuron metrics are logged every ``neuron_every_updates`` updates (0 = off); they only read
    the networks, so they never change the run's numbers. The caller seeds torch and builds the
    learner (see :func:`ctmarl.evaluate.evaluate`).
    """
    tier_spec = scenario.tier(tier)
    protocol = scenario.protocol
    tasks = scenario.tasks(tier)
    device = learner.device
    budget = tier_spec.env_steps_per_task
    eval_points = [budget * (i + 1) // protocol.evals_per_task for i in range(protocol.evals_per_task)]
    explore_generator = torch.Generator(device=device)
    explore_generator.manual_seed(_derive_seed(seed, 1))
    evaluator = Evaluator(tasks, protocol.eval_episodes, device, seed)
    result = RunResult(task_names=[t.name for t in tasks])
    result.neurons["every_updates"] = neuron_every_updates
    monitor = NeuronMonitor(learner.neuron_groups, neuron_every_updates) if neuron_every_updates else None

    def after_backward() -> None:
        if monitor is not None:
            monitor.after_backward()  # measure the gradients before a method may alter them
        method.after_backward()
    method.attach(learner, MethodContext(len(tasks), protocol.announce_task_boundaries, seed))
    announce = protocol.announce_task_boundaries
    updates_per_collect = learner.config.updates_per_collect
    explore_steps = 0
    started = time.perf_counter()

    for task in tasks:
        env = task.make_env(tier_spec.num_envs, device, seed=_derive_seed(seed, 3, task.index))
        if protocol.reset_exploration:
            explore_steps = 0
        if announce:
            method.on_task_start(task.index)
        task_steps, next_eval, score = 0, 0, 0.0
        while task_steps < budget:
            collected = rollout(env, learner, learner.epsilon(explore_steps), explore_generator)
            learner.add_episodes(collected.batch)
            task_steps += collected.env_steps
            explore_steps += collected.env_steps
            result.env_steps += collected.env_steps
            for _ in range(updates_per_collect):
                logging = monitor is not None and monitor.wants(result.updates + 1)
                if logging:
                    monitor.arm()
                if learner.update(after_backward=after_backward) is None:
                    if logging:
                        monitor.disarm()
                    break
                result.updates += 1
                if logging:
                    result.log_neurons(monitor.take(), learner.neuron_groups(), task.index)
                method.after_update(result.updates)
            while next_eval < len(eval_points) and task_steps >= eval_points[next_eval]:
                score, episode_return = evaluator(learner, task.index)
                for key, value in (("env_step", result.env_steps), ("task", task.index),
                                   ("task_step", task_steps), ("score", score), ("return", episode_return)):
                    result.curves[key].append(value)
                next_eval += 1
            if progress is not None:
                progress(collected.env_steps, task.index, task.name, score)
        row, row_return = [], []
        for other in tasks:
            if other.index == task.index:
                row.append(result.curves["score"][-1])
                row_return.append(result.curves["return"][-1])
            else:
                other_score, other_return = evaluator(learner, other.index)
                row.append(other_score)
                row_return.append(other_return)
        result.R.append(row)
        result.R_return.append(row_return)
        mse = evaluator.q_tot_mse(learner, task.index)
        if mse is not None:
            result.q_tot_mse.append(mse)
        if announce:
            method.on_task_end(task.index)

    result.wall_time_s = time.perf_counter() - started
    return result
