"""The batched env contract every env family implements.

One :class:`BatchedEnv` object steps ``num_envs`` copies of a cooperative multi-agent task at once,
on a torch device. Shapes (E = num_envs, N = agents, O = observation size, S = state size,
A = actions):

========================  ==================  =====================================================
field                     shape, dtype        meaning
========================  ==================  =====================================================
``obs``                   [E, N, O] float32   each agent's observation
``state``                 [E, S] float32      global state (the mixer's input)
``avail_actions``         [E, N, A] bool      action mask; at least one action is always available
``reward``                [E] float32         shared team reward of this step
``terminated``            [E] bool            the episode ended in the task (no bootstrapping)
``truncated``             [E] bool            the episode hit ``episode_limit``
``score``                 [E] float32         the episode's normalised score in [0, 1] so far; the
                                              value at the episode's last step is its score
========================  ==================  =====================================================

Copies whose episode has ended keep being stepped with whatever actions they are given until the
next :meth:`BatchedEnv.reset`; callers mask their outputs (the runner does). Sizes are fixed across
the tasks of a scenario so one network carries over from task to task.

An env family is a :class:`BatchedEnv` subclass with a frozen ``Settings`` dataclass: the merge of
a scenario's fixed ``env.settings``, the tier's ``env`` overrides and the task's ``settings``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from ctmarl.errors import CheckpointError


@dataclass(frozen=True)
class EnvInfo:
    """Sizes a learner needs to build its networks."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int


class Observation(NamedTuple):
    obs: torch.Tensor
    state: torch.Tensor
    avail_actions: torch.Tensor


class StepResult(NamedTuple):
    obs: torch.Tensor
    state: torch.Tensor
    avail_actions: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    score: torch.Tensor


class BatchedEnv(abc.ABC):
    """``num_envs`` copies of one task, stepped together on ``device``."""

    Settings: ClassVar[type]
    #: One line on what the normalised score means, for READMEs and records.
    score_meaning: ClassVar[str] = "normalised episode score"
    #: Numeric ``Settings`` fields a gradual transition between tasks may blend
    #: (``protocol.transition``); families that list any implement :meth:`set_settings`.
    interpolable: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings, num_envs: int, device: torch.device | str = "cpu", seed: int = 0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.settings = settings
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    @abc.abstractmethod
    def info(self) -> EnvInfo:
        """Sizes of this env (identical for every task of a scenario)."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode in every copy; ``seed`` reseeds the env's generator first."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply ``actions`` [E, N] (long) to every copy."""

    def set_settings(self, settings) -> None:
        """Play ``settings`` from the next :meth:`reset` on. Only the ``interpolable`` fields may
        differ from the env's current settings (sizes never change)."""
        raise NotImplementedError(f"env family {type(self).__name__} cannot change its settings")

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides what the env does next (its generator and any episodes in
        progress) as plain containers of tensors, for checkpoints; :meth:`load_state_dict` restores
        it into an env built with the same settings, size and device. Families implement both."""
        raise CheckpointError(f"env family {type(self).__name__} does not implement state_dict(), so "
                              "its runs cannot be checkpointed (run with --checkpoint-every 0)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise CheckpointError(f"env family {type(self).__name__} does not implement load_state_dict(), "
                              "so its runs cannot be resumed")

    def _reseed(self, seed: int | None) -> None:
        if seed is not None:
            self.generator.manual_seed(seed)


def blend_settings(start, end, alpha: float, fields: tuple[str, ...]):
    """``end``'s settings with each of ``fields`` replaced by (1 - alpha) · start + alpha · end
    (numbers, and nested lists/tuples/mappings of numbers, element by element)."""
    return dataclasses.replace(end, **{name: _blend(getattr(start, name), getattr(end, name), alpha)
                                       for name in fields})


def _blend(a: Any, b: Any, alpha: float) -> Any:
    if isinstance(a, Mapping):  # e.g. unit-type weights: a key one side lacks weighs 0 there
        return {key: _blend(a.get(key, 0.0), b.get(key, 0.0), alpha) for key in {**a, **b}}
    if isinstance(a, (list, tuple)):
        return type(b)(_blend(x, y, alpha) for x, y in zip(a, b, strict=True))
    return (1.0 - alpha) * float(a) + alpha * float(b)
