"""QPLEX (Wang et al. 2021): recurrent agents mixed by the duplex dueling mixer.

The mixer follows the QPLEX paper and PyMARL2's ``dmaq_general`` mixer with its ``dmaq_si_weight``
advantage weights (the ``qplex`` algorithm config: 4 kernels, 2-layer advantage hypernetworks of
width 64, transformation hypernetworks of width 64). With s the state, a the joint action,
Q_i = Q_i(τ_i, a_i) the chosen utility and V_i = max_{a'} Q_i(τ_i, a') over available actions:

    A_i      = Q_i - V_i                                    (<= 0; 0 at the greedy action)
    w_i(s)   = |transform_w(s)_i| + 1e-10,   b_i(s) = transform_b(s)_i  (transformation)
    V'_i     = w_i V_i + b_i,            A'_i = w_i A_i
    λ_i(s,a) = Σ_k (|key_k(s)| + 1e-10) · σ(agents_k(s))_i · σ(action_k(s, a))_i       (> 0)
    Q_tot    = Σ_i V'_i + Σ_i A'_i + Σ_i (λ_i - 1) · sg[A'_i]          (is_minus_one, default)
             = Σ_i V'_i + Σ_i λ_i A'_i                                 (in value)

sg[·] is a stop-gradient (``stop_gradient_advantage``; PyMARL2 always applies it): the agents and
w receive gradient through Σ_i (V'_i + A'_i) = Σ_i (w_i Q_i + b_i), λ through the advantage term.
Because λ_i > 0 and A'_i <= 0 with equality exactly at each agent's greedy action, the greedy joint
action maximises Q_tot (the IGM property) for any state and network weights. With
``is_minus_one=False`` the advantage term is Σ_i λ_i · sg[A'_i], i.e. Q_tot = Σ V' + Σ (1 + λ_i) A'_i
in value (PyMARL2's other option). With ``weighted_head=False`` there is no transformation
(w_i = 1, b_i = 0) and no w/b hypernetworks.

The K kernels' hidden layers are batched: a kernel stack's first layer is one ``nn.Linear`` whose
rows are all kernels' hidden units (kernel-major), and every later layer is a
:class:`BlockDiagonalLinear` connecting each kernel's units only to its own outputs. That is the
same function, with the same initialisation distribution, as PyMARL2's K independent
``nn.Sequential`` heads, without a Python loop over kernels; each hidden layer (all K kernels
together) is one neuron group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ctmarl.learner import Consumer, NeuronGroup
from ctmarl.config import check_range
from ctmarl_baselines.learner import MAX_WIDTH, LearnerConfig, ValueFactorisationLearner
from ctmarl_baselines.networks import hypernet, sequential_group


@dataclass(frozen=True)
class QPLEXConfig(LearnerConfig):
    """QPLEX's mixer hyperparameters (PyMARL2 ``qplex.yaml``; the TD update's are shared with QMIX).

    Not fields here: ``mixing_embed_dim`` (declared by PyMARL2, never read by ``dmaq_general``) and
    ``nonlinear`` (an option of the Qatten-weighted variant ``dmaq_qatten``, not of this mixer).
    """

    hypernet_embed_dim: int = 64
    """Hidden width of the 2-layer hypernetworks giving the transformation w_i(s) and b_i(s)."""
    num_kernels: int = 4
    """Attention heads (kernels) summed into λ_i(s, a)."""
    adv_hypernet_layers: int = 2
    """Linear layers of each λ extractor (key, agents, action): 1 = linear, 2 = one hidden layer."""
    adv_hypernet_embed_dim: int = 64
    """Hidden width of each kernel's λ extractors (per kernel; a layer holds num_kernels x this)."""
    weighted_head: bool = True
    """Transform V_i, A_i with the state-conditioned w_i(s) > 0, b_i(s); False: w = 1, b = 0."""
    is_minus_one: bool = True
    """Advantage term Σ (λ_i - 1) sg[A'_i] beside Σ A'_i, so Q_tot = Σ V' + Σ λ A' (paper form)."""
    stop_gradient_advantage: bool = True
    """Detach A'_i inside the λ-weighted advantage term (PyMARL2 always does)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Kernels and λ-extractor depth beyond 64 and 8 are far past PyMARL2's 4 and 2 (and each
        # kernel multiplies the λ layers' width).
        for name, high in (("hypernet_embed_dim", MAX_WIDTH), ("num_kernels", 64), ("adv_hypernet_layers", 8),
                           ("adv_hypernet_embed_dim", MAX_WIDTH)):
            check_range(self, name, 1, high)


class BlockDiagonalLinear(nn.Linear):
    """K independent ``Linear(in_per_kernel -> out_per_kernel)`` layers as one block-diagonal Linear.

    Input [..., K * in_per_kernel] and output [..., K * out_per_kernel] are kernel-major. ``weight``
    is the full [K * out, K * in] matrix so that rows are output neurons and columns input neurons
    (what a :class:`~ctmarl.learner.NeuronGroup` expects of an incoming layer and of a consumer);
    entries outside the diagonal blocks are kept at zero, ignored by the forward pass and receive
    zero gradient. Each block is initialised as ``nn.Linear(in_per_kernel, out_per_kernel)`` is.
    """

    def __init__(self, kernels: int, in_per_kernel: int, out_per_kernel: int) -> None:
        self.kernels, self.in_per_kernel, self.out_per_kernel = kernels, in_per_kernel, out_per_kernel
        super().__init__(kernels * in_per_kernel, kernels * out_per_kernel)
        block_mask = torch.block_diag(*[torch.ones(out_per_kernel, in_per_kernel)] * kernels)
        self.register_buffer("block_mask", block_mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(block_mask)

    def reset_parameters(self) -> None:
        # nn.Linear's default init with the fan-in of one kernel, not of the whole layer.
        bound = 1.0 / math.sqrt(self.in_per_kernel)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        if hasattr(self, "block_mask"):
            with torch.no_grad():
                self.weight.mul_(self.block_mask)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.block_mask, self.bias)


def kernel_stack(in_dim: int, kernels: int, hidden_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """K parallel MLPs ``in_dim -> hidden_dim (ReLU) x (layers - 1) -> out_dim`` on one input.

    Output [..., K * out_dim], kernel-major. Module indices 0, 2, ... are the Linear layers and
    1, 3, ... their ReLUs (one instance each), as in a plain ``nn.Sequential`` MLP.
    """
    if layers == 1:
        return nn.Sequential(nn.Linear(in_dim, kernels * out_dim))
    modules: list[nn.Module] = [nn.Linear(in_dim, kernels * hidden_dim), nn.ReLU()]
    for _ in range(layers - 2):
        modules += [BlockDiagonalLinear(kernels, hidden_dim, hidden_dim), nn.ReLU()]
    modules.append(BlockDiagonalLinear(kernels, hidden_dim, out_dim))
    return nn.Sequential(*modules)


def stack_groups(name: str, net: nn.Sequential) -> list[NeuronGroup]:
    """One neuron group per hidden layer of a Linear-ReLU-...-Linear stack."""
    return [
        NeuronGroup(f"{name}.{i}", net[i], net[i + 1], (Consumer(net[i + 2], "weight"),), "mixer")
        for i in range(0, len(net) - 1, 2)
    ]


class AdvantageAttention(nn.Module):
    """The multi-head λ_i(s, a) > 0 of QPLEX: ``states`` [M, S], one-hot joint ``actions`` [M, N*A]
    -> [M, N], λ_i = Σ_k (|key_k(s)| + 1e-10) · σ(agents_k(s))_i · σ(action_k(s, a))_i."""

    def __init__(self, n_agents: int, n_actions: int, state_dim: int, kernels: int, hidden_dim: int, layers: int):
        super().__init__()
        self.n_agents, self.kernels = n_agents, kernels
        self.key = kernel_stack(state_dim, kernels, hidden_dim, 1, layers)
        self.agents = kernel_stack(state_dim, kernels, hidden_dim, n_agents, layers)
        self.action = kernel_stack(state_dim + n_agents * n_actions, kernels, hidden_dim, n_agents, layers)

    def forward(self, states: torch.Tensor, joint_actions_onehot: torch.Tensor) -> torch.Tensor:
        m = states.shape[0]
        key = self.key(states).view(m, self.kernels, 1).abs() + 1e-10
        agents = torch.sigmoid(self.agents(states).view(m, self.kernels, self.n_agents))
        action = torch.sigmoid(
            self.action(torch.cat([states, joint_actions_onehot], dim=-1)).view(m, self.kernels, self.n_agents)
        )
        return (key * agents * action).sum(1)

    def neuron_groups(self, prefix: str) -> list[NeuronGroup]:
        return [group for part in ("key", "agents", "action")
                for group in stack_groups(f"{prefix}.{part}", getattr(self, part))]


class DuplexMixer(nn.Module):
    """QPLEX's duplex dueling mixer; the formula is in the module docstring."""

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        state_dim: int,
        hypernet_embed_dim: int = 64,
        num_kernels: int = 4,
        adv_hypernet_layers: int = 2,
        adv_hypernet_embed_dim: int = 64,
        weighted_head: bool = True,
        is_minus_one: bool = True,
        stop_gradient_advantage: bool = True,
    ) -> None:
        super().__init__()
        self.n_agents, self.n_actions, self.state_dim = n_agents, n_actions, state_dim
        self.weighted_head, self.is_minus_one = weighted_head, is_minus_one
        self.stop_gradient_advantage = stop_gradient_advantage
        if weighted_head:
            self.transform_w = hypernet(state_dim, hypernet_embed_dim, n_agents)
            self.transform_b = hypernet(state_dim, hypernet_embed_dim, n_agents)
        self.attention = AdvantageAttention(n_agents, n_actions, state_dim, num_kernels,
                                            adv_hypernet_embed_dim, adv_hypernet_layers)

    def forward(
        self, chosen_qs: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, max_qs: torch.Tensor
    ) -> torch.Tensor:
        """``chosen_qs`` Q_i(τ_i, a_i) [B, T, N], ``states`` [B, T, S], joint ``actions`` [B, T, N]
        long, ``max_qs`` V_i = max over available actions of Q_i [B, T, N] -> Q_tot [B, T]."""
        batch, steps, n = chosen_qs.shape
        s = states.reshape(batch * steps, self.state_dim)
        q = chosen_qs.reshape(-1, n)
        advantage = q - max_qs.reshape(-1, n)
        if self.weighted_head:
            w = self.transform_w(s).abs() + 1e-10
            # Σ (V'_i + A'_i) computed as Σ (w_i Q_i + b_i): equal, and exact at the greedy action.
            value_part = w * q + self.transform_b(s)
            advantage = w * advantage
        else:
            value_part = q
        onehot = F.one_hot(actions.reshape(-1, n), self.n_actions).reshape(-1, n * self.n_actions)
        lam = self.attention(s, onehot.to(s.dtype))
        if self.stop_gradient_advantage:
            advantage = advantage.detach()
        advantage_weight = lam - 1.0 if self.is_minus_one else lam
        q_tot = value_part.sum(-1) + (advantage_weight * advantage).sum(-1)
        return q_tot.view(batch, steps)

    def neuron_groups(self, prefix: str) -> list[NeuronGroup]:
        groups = []
        if self.weighted_head:
            groups += [sequential_group(f"{prefix}.transform_w", self.transform_w),
                       sequential_group(f"{prefix}.transform_b", self.transform_b)]
        return groups + self.attention.neuron_groups(f"{prefix}.attention")


class QPLEXLearner(ValueFactorisationLearner):
    """The value-factorisation template with the duplex dueling mixer.

    The template's mixer arguments are what PyMARL2's QPLEX learner uses: for Q_tot(s_t, a_t) the
    online utilities of the taken actions with ``max_qs`` the online max over available actions
    (detached); for the target, the target network's utilities of the double-Q actions a*_{t+1}
    (online argmax), ``actions`` = a*_{t+1} and ``max_qs`` = the target network's own max over
    available actions — so A'_i(a*) can be non-zero in the target when the two networks disagree.
    """

    Config = QPLEXConfig

    def make_mixer(self) -> nn.Module:
        c = self.config
        return DuplexMixer(
            self.info.n_agents, self.info.n_actions, self.info.state_dim,
            hypernet_embed_dim=c.hypernet_embed_dim, num_kernels=c.num_kernels,
            adv_hypernet_layers=c.adv_hypernet_layers, adv_hypernet_embed_dim=c.adv_hypernet_embed_dim,
            weighted_head=c.weighted_head, is_minus_one=c.is_minus_one,
            stop_gradient_advantage=c.stop_gradient_advantage,
        )
