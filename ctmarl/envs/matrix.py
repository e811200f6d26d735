"""One-step cooperative matrix games (the ``matrix`` env family).

==================  ==============================================================
agents              2 (``n_agents``)
actions             3 per agent (the payoff matrix's side)
episode             one step; every episode terminates after it
observation         [1.0] per agent (nothing to observe: the game is stateless)
state               [1.0]
reward              ``payoff[a_0][a_1]`` (two agents; n agents index an n-d table)
score               (payoff - min) / (max - min) of the task's table, in [0, 1]
task settings       ``payoff``: the nested list of payoffs (interpolable)
task generator      ``row_column_permutations``: ``count`` tables that permute the rows and
                    the columns of ``settings.payoff`` (drawn from ``seed``; consecutive
                    tables have different optima)
==================  ==============================================================

Used by ``matrix_drift``: the same values permuted into five matrices, so each task is equally
hard and its optimum is reachable by a monotonic mixer (DESIGN.md §4.1).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from ctmarl.config import FLOAT32_MAX, from_mapping
from ctmarl.envs.base import BatchedEnv, EnvInfo, Observation, StepResult
from ctmarl.errors import ConfigError, shorten


#: Actions per agent (the payoff table's side); the task generator lists all n! orders of n.
MAX_ACTIONS = 64
MAX_PERMUTED_ACTIONS = 8


@dataclass(frozen=True)
class MatrixSettings:
    """``payoff`` is an n_agents-dimensional table with ``n_actions`` entries per side."""

    payoff: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        sides = {len(row) for row in self.payoff}
        if len(self.payoff) < 2 or sides != {len(self.payoff)}:
            raise ValueError("payoff: must be a square table with at least 2 actions per agent")
        if len(self.payoff) > MAX_ACTIONS:
            raise ValueError(f"payoff: at most {MAX_ACTIONS} actions per agent, got {len(self.payoff)}")
        flat = [v for row in self.payoff for v in row]
        for i, row in enumerate(self.payoff):
            for j, value in enumerate(row):
                if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
                    raise ValueError(f"payoff[{i}][{j}]: must be a finite number within float32 (|x| <= 3.4e38), "
                                     f"got {value}")
        # The score divides by max - min in float32: it must be finite and not 0 there. (Payoffs so
        # large that the TD loss overflows are stopped at run time: NonFiniteLossError.)
        if not max(flat) - min(flat) <= FLOAT32_MAX:
            raise ValueError(f"payoff: max - min ({max(flat) - min(flat):g}) must be within float32 (3.4e38)")
        as_float32 = torch.tensor(flat, dtype=torch.float32)
        if as_float32.max() == as_float32.min():
            raise ValueError("payoff: all entries are equal (in float32), so no score can be normalised")


class MatrixGameEnv(BatchedEnv):
    """A one-step two-agent matrix game, batched."""

    Settings = MatrixSettings
    score_meaning = "normalised payoff of the greedy joint action, (payoff - min) / (max - min)"
    interpolable = ("payoff",)

    def __init__(self, settings: MatrixSettings, num_envs: int, device="cpu", seed: int = 0):
        super().__init__(settings, num_envs, device, seed)
        self.set_settings(settings)
        self.n_actions = self.payoff.shape[0]
        self._info = EnvInfo(
            n_agents=2, obs_dim=1, state_dim=1, n_actions=self.n_actions, episode_limit=1
        )

    def set_settings(self, settings: MatrixSettings) -> None:
        self.settings = settings
        self.payoff = torch.tensor(settings.payoff, dtype=torch.float32, device=self.device)
        low, high = self.payoff.min(), self.payoff.max()
        self.normalised_payoff = (self.payoff - low) / (high - low)

    @classmethod
    def generate_tasks(cls, kind: str, count: int, seed: int, settings: dict[str, Any]) -> list[tuple[str, dict]]:
        """``row_column_permutations``: ``count`` tasks, each ``settings["payoff"]`` with its rows
        and its columns permuted (a permutation pair drawn uniformly from ``seed``'s generator,
        redrawn while its optimum's cell equals the previous task's, so consecutive tasks need
        different joint actions). A row/column permutation keeps the table's values, its row means
        and its column means, so every task is equally hard and its optimum stays reachable by a
        monotonic mixer when the base table's is. Names: ``T<index>-r<rows>c<cols>``."""
        if kind != "row_column_permutations":
            raise ValueError(f"kind: unknown generator {shorten(repr(kind))} for the matrix family; known: "
                             "row_column_permutations")
        if set(settings) != {"payoff"}:
            raise ValueError("settings: the row_column_permutations generator takes exactly one key, payoff")
        try:  # typed and range-checked like a task's settings (a bool or a string is not a payoff)
            base = from_mapping(MatrixSettings, settings, "settings")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        n = len(base.payoff)
        if n > MAX_PERMUTED_ACTIONS:  # every one of the n! orders is listed below
            raise ValueError(f"settings.payoff: row_column_permutations takes at most {MAX_PERMUTED_ACTIONS} "
                             f"actions per agent, got {n}")
        orders = list(itertools.permutations(range(n)))
        rng = random.Random(seed)
        tasks, previous = [], None
        for index in range(count):
            while True:
                rows, cols = rng.choice(orders), rng.choice(orders)
                payoff = [[base.payoff[r][c] for c in cols] for r in rows]
                best = max((v, i, j) for i, row in enumerate(payoff) for j, v in enumerate(row))[1:]
                if best != previous:
                    break
            previous = best
            label = f"T{index:03d}-r{''.join(map(str, rows))}c{''.join(map(str, cols))}"
            tasks.append((label, {"payoff": payoff}))
        return tasks

    @property
    def info(self) -> EnvInfo:
        return self._info

    def _observation(self) -> Observation:
        e, n, a = self.num_envs, self._info.n_agents, self.n_actions
        return Observation(
            obs=torch.ones(e, n, 1, device=self.device),
            state=torch.ones(e, 1, device=self.device),
            avail_actions=torch.ones(e, n, a, dtype=torch.bool, device=self.device),
        )

    def reset(self, seed: int | None = None) -> Observation:
        self._reseed(seed)
        return self._observation()

    def step(self, actions: torch.Tensor) -> StepResult:
        rows, cols = actions[:, 0], actions[:, 1]
        obs = self._observation()
        done = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return StepResult(
            *obs,
            reward=self.payoff[rows, cols],
            terminated=done,
            truncated=torch.zeros_like(done),
            score=self.normalised_payoff[rows, cols],
        )

    def state_dict(self) -> dict[str, Any]:
        """Only the generator: a one-step game keeps no episode state between steps."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def joint_action_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every joint action [A*A, 2] and its payoff [A*A], for fitting checks on Q_tot."""
        joint = list(itertools.product(range(self.n_actions), repeat=2))
        actions = torch.tensor(joint, dtype=torch.long, device=self.device)
        return actions, self.payoff[actions[:, 0], actions[:, 1]]
