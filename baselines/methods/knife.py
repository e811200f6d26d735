"""``knife``: KNIFE, Knowledge-retentive Neuron-level plastIcity Focusing InjEction (DESIGN.md §7).

Stagnant neurons (DESIGN.md §6, :mod:`ctmarl.neurons`): r_i = ‖∂L/∂[W_i, b_i]‖₂ / (‖[W_i, b_i]‖₂ +
1e-8) for each neuron of a group, averaged over updates by an EMA (β = 0.9) kept by a
:class:`~ctmarl.neurons.StagnationTracker` fed after every backward pass; s_i = r̄_i / mean_k r̄_k
over the group's *trainable* neurons; neuron i is stagnant if s_i <= τ_s (0.1).

Schedule: a detection runs at the start of every task but the first (the EMA then describes the
end of the previous task; at task 0 there is no gradient history, the network is fresh) and after
every ``every_updates`` updates (runner's global count; 1000 by default, ReDo's period, the same
default as the other neuron-level methods; 0 = task starts only).

A detection replaces, in each selected group, the stagnant trainable neurons with the lowest
scores, at most floor(``max_replaced_fraction`` x trainable neurons) of them (10%). Each replaced
neuron i becomes three (:func:`~ctmarl_baselines.methods.growth.grow_group`):

- knowledge k: neuron i itself, its incoming weights, bias and outgoing weights kept and frozen;
- active a: fresh incoming weights and bias and fresh outgoing weights (each layer's default
  initialisation), trainable;
- compensation c: a frozen copy of a's incoming weights and bias, outgoing weights = -(a's), frozen.

k computes what i did and a, c cancel exactly, so the network's function is unchanged at the
replacement (up to float rounding in the consumers' sums, ~1e-7), while a learns through its
non-zero outgoing weights. A group grows by 2 neurons per replacement and keeps its number of
trainable neurons (i -> k frozen, a trainable, c frozen). Frozen entries (a frozen neuron's whole
incoming row and bias and its whole column in every consumer) receive exactly zero gradient and
have zero optimizer moments, so Adam and RMSprop never move them. Frozen neurons are never
detected again (their zero gradient would make them "stagnant" forever), and the neuron metrics
leave them out of their ratios (:mod:`ctmarl.neurons`).

The target networks grow identically (their own neuron i as k, the same a and c values), so
their function is unchanged as well and the learner's target copy keeps loading. Consumers may be
Linear layers (including QPLEX's block-diagonal kernels, whose block mask grows: a new neuron joins
the kernel of the neuron it replaces) or a GRU's input weights (the agent's ``fc1`` group: the GRU's
input size grows).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
from ctmarl_baselines.methods.growth import (
    GradientMasks,
    check_freezable,
    draw_composite,
    grow_group,
    parameter_count,
    placeholder_composite,
)

from ctmarl.errors import ConfigError
from ctmarl.learner import Learner, NeuronGroup
from ctmarl.method import Method, MethodContext
from ctmarl.neurons import StagnationTracker

#: Offset of KNIFE's generator seed from the run seed, so its draws are not the runner's.
KNIFE_SEED_OFFSET = 52_361


@dataclass(frozen=True)
class KnifeConfig:
    """KNIFE's detection schedule, threshold, cap and scope (defaults: DESIGN.md §6-§7)."""

    stagnant_threshold: float = 0.1
    """τ_s: a trainable neuron is stagnant when its score s_i = r̄_i / mean_k r̄_k is <= τ_s."""
    ratio_ema_beta: float = 0.9
    """β of the exponential moving average of update ratios r_i (one step per update)."""
    every_updates: int = 1000
    """Detect and replace after every this many learner updates (the runner's global count);
    0 = only at task starts."""
    at_task_start: bool = True
    """Detect and replace at the start of every task but the first (needs announced task
    boundaries)."""
    max_replaced_fraction: float = 0.1
    """Cap per detection and group: at most floor(fraction x trainable neurons) replacements. The
    trainable count is the group's original width, since a replacement keeps it."""
    groups: tuple[str, ...] = ("*",)
    """Neuron groups to act on: shell-style patterns over group names (``agent.fc1``,
    ``mixer.*``); every pattern must match at least one group."""

    def __post_init__(self) -> None:
        if self.stagnant_threshold < 0:
            raise ValueError(f"stagnant_threshold: must be >= 0, got {self.stagnant_threshold}")
        if not 0.0 <= self.ratio_ema_beta < 1.0:
            raise ValueError(f"ratio_ema_beta: must be in [0, 1), got {self.ratio_ema_beta}")
        if self.every_updates < 0:
            raise ValueError(f"every_updates: must be >= 0, got {self.every_updates}")
        if self.every_updates == 0 and not self.at_task_start:
            raise ValueError("every_updates is 0 and at_task_start is false: KNIFE would never act")
        if not 0.0 < self.max_replaced_fraction <= 1.0:
            raise ValueError(f"max_replaced_fraction: must be in (0, 1], got {self.max_replaced_fraction}")
        if not self.groups:
            raise ValueError("groups: name at least one neuron-group pattern, e.g. '*'")


class Knife(Method):
    """Replace stagnant neurons by frozen-knowledge / active / compensation triples."""

    Config = KnifeConfig
    touches = "neuron_groups"
    preserves_output = True

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.tracker = StagnationTracker(self.config.ratio_ema_beta)
        self.masks = GradientMasks()
        self.generator = torch.Generator()  # on CPU: the same draws on every device
        self.task = 0
        self.updates = 0
        self.parameters_initial = 0
        #: One entry per (detection, group) that replaced neurons: group, neurons (indices at that
        #: time, ascending), task, update. Replaying them rebuilds the grown structure.
        self.events: list[dict[str, Any]] = []
        #: The selected groups, matched once (the tracker reads them after every backward pass).
        #: Groups address modules and read their parameters when asked, so they see growth; the
        #: cache is still dropped after each growth and on attach.
        self._selected: list[NeuronGroup] | None = None

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, learner: Learner, context: MethodContext) -> None:
        super().attach(learner, context)
        if self.config.at_task_start and not context.announce_task_boundaries:
            raise ConfigError("knife: at_task_start needs a protocol that announces task boundaries; "
                              "set at_task_start: false")
        check_freezable(learner.optimizer, "knife")
        names = [group.name for group in learner.neuron_groups()]
        for pattern in self.config.groups:
            if not fnmatch.filter(names, pattern):
                raise ConfigError(f"knife: groups: {pattern!r} matches no neuron group; "
                                  f"groups: {', '.join(names)}")
        self.generator.manual_seed((context.seed + KNIFE_SEED_OFFSET) % (2**63))
        self._selected = None
        self.parameters_initial = parameter_count(learner.optimizer)

    def after_backward(self) -> None:
        self.tracker.observe(self.selected_groups())

    def on_task_start(self, task_index: int) -> None:
        self.task = task_index
        if task_index > 0 and self.config.at_task_start:
            self.detect()

    def after_update(self, update_step: int) -> None:
        self.updates = update_step
        every = self.config.every_updates
        if every and update_step % every == 0:
            self.detect()

    # --- detection and replacement ------------------------------------------------------------
    def selected_groups(self) -> list[NeuronGroup]:
        if self._selected is None:
            self._selected = [group for group in self.learner.neuron_groups()
                              if any(fnmatch.fnmatchcase(group.name, p) for p in self.config.groups)]
        return self._selected

    def cap(self, group: NeuronGroup) -> int:
        return math.floor(self.config.max_replaced_fraction * int(group.trainable.sum()))

    def detect(self) -> dict[str, int]:
        """Find stagnant neurons in every selected group and replace the most stagnant ones, at
        most :meth:`cap` per group. Returns the number replaced per group (groups with none
        left out)."""
        chosen: dict[str, torch.Tensor] = {}
        for group in self.selected_groups():
            # None until the tracker has seen the group at its current width; frozen neurons +inf.
            scores = self.tracker.scores(group)
            if scores is None:
                continue
            candidates = (scores <= self.config.stagnant_threshold).nonzero().squeeze(1)
            cap = self.cap(group)
            if cap == 0 or candidates.numel() == 0:
                continue
            order = scores[candidates].argsort(stable=True)[:cap]
            chosen[group.name] = candidates[order].sort().values
        # Scores first, growth after: growing one group changes its neighbours' shapes, not their
        # already measured stagnation.
        for name, neurons in chosen.items():
            self.replace(name, neurons)
        return {name: int(neurons.numel()) for name, neurons in chosen.items()}

    def replace(self, group_name: str, neurons: torch.Tensor) -> None:
        """Replace ``neurons`` (indices of trainable neurons) of the named group by composite
        triples, in the online and the target networks, with fresh values from the method's
        generator."""
        online = self._group(group_name, self.learner.neuron_groups())
        neurons = torch.as_tensor(neurons, dtype=torch.long).flatten().cpu()
        if neurons.numel() == 0:
            return
        if neurons.unique().numel() != neurons.numel() or bool((~online.trainable.cpu()[neurons]).any()):
            raise ValueError(f"knife: {group_name}: neurons to replace must be distinct trainable neurons")
        self._grow(group_name, draw_composite(online, neurons, self.generator))
        self.events.append({"group": group_name, "neurons": neurons.tolist(),
                            "task": self.task, "update": self.updates})

    def _grow(self, group_name: str, composite) -> None:
        online = self._group(group_name, self.learner.neuron_groups())
        target = self._group(group_name, self.learner.target_neuron_groups())
        if target.width != online.width:
            raise ConfigError(f"knife: {group_name}: the target network's group has {target.width} "
                              f"neurons, the online one {online.width}")
        grow_group(online, composite, self.learner.optimizer)
        grow_group(target, composite)
        self._selected = None
        self.masks.refresh(self.learner.neuron_groups())

    @staticmethod
    def _group(name: str, groups: list[NeuronGroup]) -> NeuronGroup:
        for group in groups:
            if group.name == name:
                return group
        raise ConfigError(f"knife: no neuron group {name!r}; groups: {', '.join(g.name for g in groups)}")

    # --- checkpoints and records --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "events": [dict(event) for event in self.events],
            "generator": self.generator.get_state(),
            "tracker": self.tracker.state_dict(),
            "task": self.task,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the grown structure on a freshly attached learner (shapes, block masks, frozen
        neurons, gradient masks, optimizer slots) by replaying the recorded replacements with
        placeholder values; the learner's own state, loaded next, brings the values."""
        if self.events:
            raise ConfigError("knife: load_state_dict needs a freshly attached method and learner")
        for event in state["events"]:
            online = self._group(event["group"], self.learner.neuron_groups())
            self._grow(event["group"], placeholder_composite(online, torch.tensor(event["neurons"])))
        self.events = [dict(event) for event in state["events"]]
        self.generator.set_state(state["generator"])
        self.tracker.load_state_dict(state["tracker"], self.learner.device)
        self.task, self.updates = state["task"], state["updates"]

    def summary(self) -> dict[str, Any]:
        """Replacements (total, per group, per task, per event) and the parameter growth of the
        online networks (every parameter stays in the optimizer; frozen entries are counted
        apart)."""
        per_group: dict[str, int] = {}
        n_tasks = self.context.n_tasks if self.context is not None else 0
        per_task = [0] * max(n_tasks, self.task + 1)
        for event in self.events:
            count = len(event["neurons"])
            per_group[event["group"]] = per_group.get(event["group"], 0) + count
            per_task[event["task"]] += count
        total = parameter_count(self.learner.optimizer) if self.learner is not None else 0
        initial = self.parameters_initial
        return {
            "replaced": sum(per_group.values()),
            "replaced_per_group": per_group,
            "replaced_per_task": per_task,
            "events": [{"task": e["task"], "update": e["update"], "group": e["group"],
                        "replaced": len(e["neurons"])} for e in self.events],
            "parameters_initial": initial,
            "parameters_final": total,
            "parameter_growth": (total - initial) / initial if initial else 0.0,
            "frozen_parameters": self.masks.frozen_entries,
            "trainable_parameters": total - self.masks.frozen_entries,
        }


@dataclass(frozen=True)
class KnifeTau25Config(KnifeConfig):
    """KNIFE with the looser threshold τ_s = 0.25: a public port of KNIFE's metric flags neurons
    whose relative update amplitude is below 0.25 (the neuron monitor logs both thresholds)."""

    stagnant_threshold: float = 0.25
    """τ_s: a trainable neuron is stagnant when its score s_i = r̄_i / mean_k r̄_k is <= τ_s."""


class KnifeTau25(Knife):
    """``knife_tau25``: KNIFE registered with τ_s = 0.25, so the threshold's effect is a leaderboard
    entry of its own (a ``--method-config`` variant of ``knife`` is never ranked)."""

    Config = KnifeTau25Config
