"""Neuron-level surgery shared by the plasticity methods: re-initialise, silence, reset moments.

Every function acts through a :class:`~ctmarl.learner.NeuronGroup` (its incoming ``nn.Linear`` and
the consumer parameters whose columns read the group's neurons) and the learner's optimizer, never
through private attributes of a learner. Neuron indices are a 1-D ``LongTensor`` of rows of the
incoming layer (= columns of every consumer).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ctmarl.learner import NeuronGroup

#: Optimizer state entries that hold one value per parameter element (Adam, AdamW, RMSprop, SGD).
PER_ELEMENT_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg", "momentum_buffer")


@torch.no_grad()
def reset_moments(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, index: torch.Tensor | None = None, dim: int = 0
) -> None:
    """Zero the optimizer's per-element state of ``param`` at ``index`` along ``dim``.

    ``index=None`` drops the whole state of ``param`` (its step count restarts too). With an
    index, only the selected slices are zeroed: Adam's step count is per tensor, so the bias
    correction of the zeroed slices follows the tensor's count (as ReDo's reference code does).
    A parameter the optimizer has no state for yet is left alone.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    if index is None:
        optimizer.state.pop(param, None)
        return
    for key in PER_ELEMENT_STATE:
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.index_fill_(dim, index.to(value.device), 0.0)


def optimized_parameters(learner: Any, modules: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter the learner's optimizer updates under ``modules``
    (e.g. ("agent", "mixer"): the online networks; target copies are never in the optimizer)."""
    in_optimizer = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    prefixes = tuple(m + "." for m in modules)
    return [(name, p) for name, p in learner.named_parameters() if id(p) in in_optimizer and name.startswith(prefixes)]


def fan_in_bound(layer: nn.Linear) -> float:
    """The bound of ``nn.Linear``'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    A block-diagonal layer (QPLEX's kernels, with a ``block_mask`` buffer) has the fan-in of one
    block, as its own ``reset_parameters`` uses."""
    mask = getattr(layer, "block_mask", None)
    fan_in = int(mask[0].sum()) if mask is not None else layer.in_features
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


@torch.no_grad()
def reinitialise_incoming(
    group: NeuronGroup, neurons: torch.Tensor, generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Re-draw rows ``neurons`` of the incoming weight and bias from ``nn.Linear``'s default
    distribution (kaiming-uniform with a=sqrt(5), i.e. U(±1/sqrt(fan_in)) for both), and zero
    their optimizer moments. ``neurons`` must be on the layer's device."""
    layer = group.incoming
    bound = fan_in_bound(layer)
    rows = torch.empty((len(neurons), layer.in_features), device=layer.weight.device)
    rows.uniform_(-bound, bound, generator=generator)
    mask = getattr(layer, "block_mask", None)
    if mask is not None:  # entries outside a neuron's own block stay zero
        rows = rows * mask[neurons]
    layer.weight[neurons] = rows.to(layer.weight.dtype)
    if optimizer is not None:
        reset_moments(optimizer, layer.weight, neurons, dim=0)
    if layer.bias is not None:
        bias = torch.empty(len(neurons), device=layer.bias.device).uniform_(-bound, bound, generator=generator)
        layer.bias[neurons] = bias.to(layer.bias.dtype)
        if optimizer is not None:
            reset_moments(optimizer, layer.bias, neurons, dim=0)


@torch.no_grad()
def zero_outgoing(
    group: NeuronGroup, neurons: torch.Tensor, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Set the consumer columns that read ``neurons`` to zero and zero their optimizer moments."""
    for consumer in group.consumers:
        weight = consumer.weight
        weight[:, neurons] = 0.0
        if optimizer is not None:
            reset_moments(optimizer, weight, neurons, dim=1)


def recycle(
    targets: list[tuple[NeuronGroup, torch.Tensor]], generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """ReDo's recycling of ``(group, neurons)`` pairs: fresh incoming weights and bias, zero
    outgoing weights, zeroed optimizer moments for both.

    All re-initialisations happen before any zeroing: where one group's consumer is the next
    group's incoming layer, re-drawing the next group's rows would otherwise overwrite the zero
    columns of the first group's recycled neurons."""
    targets = [(group, neurons) for group, neurons in targets if len(neurons) > 0]
    for group, neurons in targets:
        reinitialise_incoming(group, neurons, generator, optimizer)
    for group, neurons in targets:
        zero_outgoing(group, neurons, optimizer)


def neuron_blocks(group: NeuronGroup) -> torch.Tensor:
    """[H] block ids: neurons in different blocks of a block-diagonal layer get different ids.

    Two neurons share an id when their incoming ``block_mask`` rows and every consumer's
    ``block_mask`` columns are equal (QPLEX's kernels: one id per kernel). Without block masks
    every neuron has id 0. Weight moved from one neuron to another only reaches the function
    when both lie in the same block."""
    masks = []
    incoming_mask = getattr(group.incoming, "block_mask", None)
    if incoming_mask is not None:
        masks.append(incoming_mask)
    for consumer in group.consumers:
        consumer_mask = getattr(consumer.module, "block_mask", None)
        if consumer_mask is not None and consumer.param_name == "weight":
            masks.append(consumer_mask.T)
    device = group.incoming.weight.device
    if not masks:
        return torch.zeros(group.width, dtype=torch.long, device=device)
    _, ids = torch.unique(torch.cat(masks, dim=1), dim=0, return_inverse=True)
    first_seen: dict[int, int] = {}  # number blocks in order of their first neuron
    return torch.tensor([first_seen.setdefault(i, len(first_seen)) for i in ids.tolist()], device=device)
