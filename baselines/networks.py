"""Networks of the reference learners: the recurrent agent and the QMIX mixer.

Hyperparameters follow PyMARL/PyMARL2 (DESIGN.md §5). Each network lists its own neuron groups,
named by module path (``agent.fc1``, ``mixer.hyper_w1.0``) so records and methods can address them.
"""

from __future__ import annotations

import torch
from ctmarl_baselines.gru import gru_sequence
from torch import nn
from torch.nn import functional as F

from ctmarl.learner import Consumer, NeuronGroup


class RNNAgent(nn.Module):
    """Linear(input -> H), ReLU, GRU(H), Linear(H -> actions), shared by all agents.

    One ``nn.GRU`` serves both paths: acting runs it on sequences of length 1 (:meth:`forward`),
    training unrolls whole time-major episodes through :func:`~ctmarl_baselines.gru.gru_sequence`
    with the same parameter tensors (:meth:`unroll`).
    """

    def __init__(self, input_dim: int, hidden_dim: int, n_actions: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` [B, T, input], ``hidden`` [1, B, H] -> Q-values [B, T, A], hidden [1, B, H]."""
        x = self.relu(self.fc1(inputs))
        out, hidden = self.rnn(x, hidden)
        return self.fc2(out), hidden

    def unroll(self, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Training path: time-major ``inputs`` [T, B, input] from ``hidden`` [B, H] -> Q-values
        [T, B, A], the recurrence in :func:`~ctmarl_baselines.gru.gru_sequence` (this GRU's own
        parameters, a hand-written backward pass)."""
        x = self.relu(self.fc1(inputs))
        return self.fc2(gru_sequence(x, hidden, self.rnn))

    def neuron_groups(self, prefix: str) -> list[NeuronGroup]:
        return [
            NeuronGroup(f"{prefix}.fc1", self.fc1, self.relu, (Consumer(self.rnn, "weight_ih_l0"),), "agent")
        ]


def hypernet(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def sequential_group(name: str, net: nn.Sequential) -> NeuronGroup:
    """The hidden layer of a Linear-activation-Linear stack."""
    return NeuronGroup(f"{name}.0", net[0], net[1], (Consumer(net[2], "weight"),), "mixer")


class QMixer(nn.Module):
    """QMIX's monotonic mixer: Q_tot = elu(q W1(s) + b1(s)) w_final(s) + V(s), W >= 0 by abs."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_hidden_dim: int = 64):
        super().__init__()
        self.n_agents, self.state_dim, self.embed_dim = n_agents, state_dim, embed_dim
        self.hyper_w1 = hypernet(state_dim, hypernet_hidden_dim, n_agents * embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w_final = hypernet(state_dim, hypernet_hidden_dim, embed_dim)
        self.V = hypernet(state_dim, embed_dim, 1)

    def forward(
        self,
        chosen_qs: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor | None = None,
        max_qs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``chosen_qs`` [B, T, N], ``states`` [B, T, S] -> Q_tot [B, T].

        ``actions`` and ``max_qs`` are part of the mixer interface (QPLEX needs them); unused here.
        """
        batch, steps = chosen_qs.shape[:2]
        s = states.reshape(-1, self.state_dim)
        qs = chosen_qs.reshape(-1, 1, self.n_agents)
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(s).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(qs, w1) + b1)
        w_final = self.hyper_w_final(s).abs().view(-1, self.embed_dim, 1)
        v = self.V(s).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(batch, steps)

    def neuron_groups(self, prefix: str) -> list[NeuronGroup]:
        return [
            sequential_group(f"{prefix}.hyper_w1", self.hyper_w1),
            sequential_group(f"{prefix}.hyper_w_final", self.hyper_w_final),
            sequential_group(f"{prefix}.V", self.V),
        ]
