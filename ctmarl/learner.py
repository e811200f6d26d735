"""The Learner contract and the NeuronGroup handles that metrics and methods act through.

The runner hands a learner whole episodes as an :class:`EpisodeBatch`; the learner keeps its own
replay and decides when it can update. Plasticity methods and neuron metrics never reach into a
learner's private attributes: they see its :class:`NeuronGroup` list and its optimizer.

A neuron group is one hidden layer: an incoming ``nn.Linear`` (rows = neurons), the activation
module applied to its output (a distinct module instance, so a forward hook on it sees exactly this
layer's post-activations), and the consumers of that output: parameters whose columns
``[:, neuron]`` read neuron ``neuron`` (the next Linear's ``weight``, or a GRU's ``weight_ih_l0``).

A method that freezes some neurons of a group (KNIFE's knowledge and compensation neurons) marks
them in a boolean buffer ``frozen_neurons`` [H] of the group's incoming layer (non-persistent: the
method's own state re-creates it); :attr:`NeuronGroup.frozen` reads it, and the neuron metrics
leave frozen neurons out of their ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from ctmarl.config import from_mapping
from ctmarl.envs.base import EnvInfo
from ctmarl.errors import UnknownNameError, shorten
from ctmarl.registry import LEARNERS


class EpisodeBatch(NamedTuple):
    """E episodes padded to the env's episode limit T.

    ``obs`` [E, T+1, N, O], ``state`` [E, T+1, S], ``avail_actions`` [E, T+1, N, A] bool,
    ``actions`` [E, T, N] long, ``reward`` [E, T], ``terminated`` [E, T] bool,
    ``mask`` [E, T] float (1 where step t happened).
    """

    obs: torch.Tensor
    state: torch.Tensor
    avail_actions: torch.Tensor
    actions: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(*(t.to(device) for t in self))


#: Name of the incoming layer's buffer that marks a group's frozen neurons (see module docstring).
FROZEN_NEURONS_BUFFER = "frozen_neurons"


@dataclass(frozen=True)
class Consumer:
    """A parameter whose columns ``[:, i]`` read neuron ``i`` of a group."""

    module: nn.Module
    param_name: str

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)


@dataclass(frozen=True, eq=False)
class NeuronGroup:
    """One hidden layer, addressed by a stable readable name such as ``agent.fc1``."""

    name: str
    incoming: nn.Linear
    activation: nn.Module
    consumers: tuple[Consumer, ...]
    #: "agent" or "mixer": where in the learner the layer sits (metrics aggregate by it).
    part: str

    @property
    def width(self) -> int:
        return self.incoming.out_features

    @property
    def frozen(self) -> torch.Tensor | None:
        """[H] bool: neurons a method froze (never updated again), or None when there are none."""
        return getattr(self.incoming, FROZEN_NEURONS_BUFFER, None)

    @property
    def trainable(self) -> torch.Tensor:
        """[H] bool: the neurons that are not frozen."""
        frozen = self.frozen
        if frozen is None:
            return torch.ones(self.width, dtype=torch.bool, device=self.incoming.weight.device)
        return ~frozen

    def check_shapes(self) -> None:
        for consumer in self.consumers:
            columns = consumer.weight.shape[1]
            if columns != self.width:
                raise ValueError(
                    f"neuron group {self.name}: consumer {consumer.param_name} has {columns} "
                    f"input columns for {self.width} neurons"
                )


@runtime_checkable
class Learner(Protocol):
    """What the runner, methods and metrics may use of a value-factorisation learner.

    A learner class is built as ``cls(info, config, device=..., seed=...)`` with ``config`` an
    instance of its ``Config`` dataclass (:func:`make_learner`; the plasticity probe builds a
    fresh one the same way)."""

    info: EnvInfo
    device: torch.device
    optimizer: torch.optim.Optimizer
    config: Any

    def initial_hidden(self, batch_size: int) -> torch.Tensor:
        """Recurrent state for ``batch_size`` parallel episodes."""

    def act(
        self,
        obs: torch.Tensor,
        avail_actions: torch.Tensor,
        last_actions: torch.Tensor,
        hidden: torch.Tensor,
        epsilon: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ε-greedy actions [E, N] and the next hidden state; ``last_actions`` is -1 at t=0."""

    def epsilon(self, env_steps_since_reset: int) -> float:
        """The exploration rate after that many env steps of the current schedule."""

    def add_episodes(self, batch: EpisodeBatch) -> None:
        """Store collected episodes in the learner's replay."""

    def update(self, after_backward: Callable[[], None] | None = None) -> dict[str, float] | None:
        """One TD update from replay (``None`` while replay is too small)."""

    def neuron_groups(self) -> list[NeuronGroup]:
        """Every hidden layer methods and metrics may address."""

    def target_neuron_groups(self) -> list[NeuronGroup]:
        """The target networks' groups: same names, order and shapes as :meth:`neuron_groups`.
        A method that changes a group's structure (KNIFE grows it) applies the same change here,
        so the target stays a copy the online networks' state can be loaded into."""

    def replace_module(self, name: str, build: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the online module ``name`` ("mixer", "agent.fc2", ...) by ``build(module)``, then
        its target copy by ``build(target copy)`` (made non-trainable); the optimizer then holds
        exactly the online networks' trainable parameters (leavers lose their state, newcomers
        join with none). For network-level methods such as plasticity injection."""

    def reinitialise(self, modules: tuple[str, ...], clear_replay: bool = False) -> None:
        """Fresh initialisation of the named modules ("agent", "agent.fc2", "mixer", ...), their
        target copies and their optimizer state; optionally empty the replay."""

    def joint_q(self, batch: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """Q_tot at t=0 of ``batch`` [E] for the given joint actions [E, N] (one-step analysis)."""

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything that decides the learner's future (networks incl. targets, optimizer, replay,
        sampling generator, counters) as plain containers of tensors, for checkpoints. Not
        ``state_dict``: for an ``nn.Module`` learner that name means the weights only."""

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` into a learner built with the same config, after the
        method has restored any change it made to the networks' structure."""

    # Optional: a learner that has it is probed by ctmarl.probe (the record's plasticity_probe).
    # def probe_outputs(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
    #     """Online Q-values [B, T, N, A] and Q_tot of the taken actions [B, T], with gradients."""


def make_learner(
    name: str,
    info: EnvInfo,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    where: str = "learner config",
) -> Learner:
    """Build a registered learner; ``overrides`` are checked against its ``Config`` dataclass."""
    cls = LEARNERS.load(name)
    if not (isinstance(cls, type) and hasattr(cls, "Config")):
        raise UnknownNameError(f"learner {shorten(repr(name))} resolves to {shorten(repr(cls))}, which has no Config")
    config = from_mapping(cls.Config, overrides or {}, where)
    return cls(info, config, device=device, seed=seed)
