"""The classic PyMARL agent loop, kept as a reference for the fused unroll (tests and benchmark only).

PyMARL unrolls the agent one time step at a time with an ``nn.GRUCell`` (all agents and episodes of
a step batched, a Python loop over time). :func:`loop_unroll` does exactly that with a GRUCell whose
parameters *are* the ``RNNAgent``'s GRU parameters (shared objects, so gradients land on the agent),
and :func:`loop_path` makes a learner's own TD update (``loss``/``update``, written once in the
template) unroll that way, so the two paths differ in the unroll and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ctmarl.learner import EpisodeBatch
from ctmarl_baselines.learner import ValueFactorisationLearner
from ctmarl_baselines.networks import RNNAgent

_GRU_TO_CELL = {"weight_ih_l0": "weight_ih", "weight_hh_l0": "weight_hh",
                "bias_ih_l0": "bias_ih", "bias_hh_l0": "bias_hh"}


def shared_gru_cell(agent: RNNAgent) -> nn.GRUCell:
    """An ``nn.GRUCell`` whose parameters are the same tensors as ``agent.rnn``'s."""
    gru = agent.rnn
    cell = nn.GRUCell(gru.input_size, gru.hidden_size, device=gru.weight_ih_l0.device)
    for gru_name, cell_name in _GRU_TO_CELL.items():
        setattr(cell, cell_name, getattr(gru, gru_name))
    return cell


def loop_unroll(learner: ValueFactorisationLearner, agent: RNNAgent, batch: EpisodeBatch) -> torch.Tensor:
    """Q-values [B, T+1, N, A] of ``agent``, one GRUCell step at a time (same result as
    ``learner.unroll(agent, batch)``)."""
    b, t1, n, _ = batch.obs.shape
    cell = shared_gru_cell(agent)
    hidden = learner.initial_hidden(b)[0]  # [B*N, H]
    last = torch.full_like(batch.actions[:, 0], -1)
    qs = []
    for t in range(t1):
        inputs = learner.agent_inputs(batch.obs[:, t], last).reshape(b * n, -1)
        hidden = cell(agent.relu(agent.fc1(inputs)), hidden)
        qs.append(agent.fc2(hidden).view(b, n, -1))
        if t < t1 - 1:
            last = batch.actions[:, t]
    return torch.stack(qs, dim=1)


@contextmanager
def loop_path(learner: ValueFactorisationLearner) -> Iterator[ValueFactorisationLearner]:
    """Within the block, ``learner.loss`` and ``learner.update`` unroll with :func:`loop_unroll`."""
    learner.unroll = lambda agent, batch: loop_unroll(learner, agent, batch)
    try:
        yield learner
    finally:
        del learner.unroll


def reference_loss(learner: ValueFactorisationLearner, batch: EpisodeBatch) -> torch.Tensor:
    """``learner.loss(batch)`` computed with the GRUCell loop."""
    with loop_path(learner):
        return learner.loss(batch)
