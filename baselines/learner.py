"""The value-factorisation learner template: the TD update is written once, here.

QMIX and QPLEX differ only in the mixer, which a subclass builds in :meth:`make_mixer`. Every
mixer takes ``(chosen_qs [B,T,N], states [B,T,S], actions [B,T,N], max_qs [B,T,N]) -> [B,T]``.

The update (double Q-learning with a target network, as PyMARL2):

    Q_i(τ_t, ·)      online agent unrolled over whole episodes (one fused nn.GRU call)
    a*_{t+1}         argmax over available actions of the online Q at t+1   (double Q)
    y_t              TD(λ) target from Q'_tot(s_{t+1}, a*_{t+1}) of the target networks:
                     G_t = r_t + γ (1 - d_t) [(1 - λ) Q'_tot(t+1) + λ G_{t+1}],  G_T = Q'_tot(T)
                     (λ = 0 is the one-step target r_t + γ (1 - d_t) Q'_tot(t+1))
    loss             Σ_t mask_t (Q_tot(s_t, a_t) - y_t)² / Σ_t mask_t
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from ctmarl_baselines.networks import RNNAgent
from ctmarl_baselines.replay import EpisodeReplay
from torch import nn
from torch.nn import functional as F

from ctmarl.config import check_range
from ctmarl.envs.base import EnvInfo
from ctmarl.errors import ConfigError, shorten
from ctmarl.learner import EpisodeBatch, NeuronGroup

OPTIMIZERS = ("adam", "rmsprop")


@dataclass(frozen=True)
class LearnerConfig:
    """Hyperparameters shared by every value-factorisation learner (PyMARL2 defaults)."""

    gamma: float = 0.99
    """Discount."""
    lr: float = 0.001
    """Learning rate."""
    optimizer: str = "adam"
    """'adam' (PyMARL2) or 'rmsprop' (PyMARL, alpha 0.99, eps 1e-5)."""
    batch_size: int = 32
    """Episodes per update."""
    buffer_episodes: int = 5000
    """Replay capacity in episodes (FIFO; it persists across tasks)."""
    updates_per_collect: int = 1
    """Gradient updates after each batch of collected episodes."""
    target_update_interval_episodes: int = 200
    """Episodes collected between target-network copies."""
    grad_clip_norm: float = 10.0
    """Global gradient-norm clip."""
    td_lambda: float = 0.0
    """λ of the TD(λ) target; 0 = one-step targets."""
    double_q: bool = True
    """Pick next actions with the online network, evaluate them with the target."""
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_steps: int = 50000
    """Env steps over which ε falls linearly from start to finish."""
    agent_hidden_dim: int = 64
    """Width of the agent's hidden layer and GRU."""

    def __post_init__(self) -> None:
        """Ranges of every field (see :data:`RANGES`); ``from_mapping`` names the file and key."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: must be one of {', '.join(OPTIMIZERS)}, got {shorten(repr(self.optimizer))}")
        for name, (low, high) in RANGES.items():
            check_range(self, name, low, high, low_open=name in ("lr", "grad_clip_norm"))
        if self.buffer_episodes < self.batch_size:
            raise ValueError(f"buffer_episodes ({self.buffer_episodes}) must be >= batch_size ({self.batch_size})")


#: Allowed range of each numeric field of :class:`LearnerConfig` (``lr`` and ``grad_clip_norm``
#: exclude 0). Widths up to 4096 are 64x PyMARL's; a replay of 10^6 episodes, a batch of 65536
#: and 1000 updates per collection are each far beyond any published setting; the scenario
#: also bounds the replay's float32 values per tier (ctmarl.scenario.MAX_BATCH_VALUES).
RANGES = {
    "gamma": (0.0, 1.0), "lr": (0.0, 10.0), "batch_size": (1, 65536), "buffer_episodes": (1, 10**6),
    "updates_per_collect": (1, 1000), "target_update_interval_episodes": (1, 10**9),
    "grad_clip_norm": (0.0, 1e6), "td_lambda": (0.0, 1.0), "epsilon_start": (0.0, 1.0),
    "epsilon_finish": (0.0, 1.0), "epsilon_anneal_steps": (0, 10**12), "agent_hidden_dim": (1, 4096),
}
#: Range of a mixer's layer widths (the learners' own config fields).
MAX_WIDTH = 4096


def td_lambda_targets(
    reward: torch.Tensor, terminated: torch.Tensor, next_q_tot: torch.Tensor, gamma: float, td_lambda: float
) -> torch.Tensor:
    """TD(λ) targets [B, T] from rewards, terminations and Q'_tot(t+1) [B, T] (see module doc)."""
    not_done = 1.0 - terminated.float()
    if td_lambda == 0.0:
        return reward + gamma * not_done * next_q_tot
    targets = torch.empty_like(reward)
    following = next_q_tot[:, -1]
    for t in range(reward.shape[1] - 1, -1, -1):
        bootstrap = (1.0 - td_lambda) * next_q_tot[:, t] + td_lambda * following
        following = reward[:, t] + gamma * not_done[:, t] * bootstrap
        targets[:, t] = following
    return targets


def masked_max(q: torch.Tensor, avail_actions: torch.Tensor) -> torch.Tensor:
    """Max over available actions [..., A] -> [...]; 0 where none is available (padding)."""
    best = q.masked_fill(~avail_actions, -torch.inf).max(-1).values
    return torch.where(avail_actions.any(-1), best, torch.zeros_like(best))


def flatten_recurrent(module: nn.Module) -> None:
    """Put every recurrent layer's weights of ``module`` back into one flat buffer (a no-op on CPU).

    ``copy.deepcopy`` clones each parameter on its own, so a copied ``nn.GRU`` on CUDA no longer
    has the single weight buffer cuDNN wants: it would warn and compact the weights on every call."""
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase):
            sub.flatten_parameters()


class ValueFactorisationLearner(nn.Module):
    """Recurrent agents + a mixer, trained by the TD update above. Subclasses add the mixer."""

    Config = LearnerConfig

    def __init__(self, info: EnvInfo, config: LearnerConfig, device: torch.device | str = "cpu", seed: int = 0):
        super().__init__()
        self.info, self.config, self.device = info, config, torch.device(device)
        input_dim = info.obs_dim + info.n_actions + info.n_agents
        self.agent = RNNAgent(input_dim, config.agent_hidden_dim, info.n_actions)
        self.mixer = self.make_mixer()
        self.to(self.device)
        self.target_agent = copy.deepcopy(self.agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
        flatten_recurrent(self.target_agent)
        self.optimizer = self.make_optimizer()
        self.replay = EpisodeReplay(config.buffer_episodes, self.device)
        self.sample_generator = torch.Generator(device=self.device)
        self.sample_generator.manual_seed(seed)
        self.agent_ids = torch.eye(info.n_agents, device=self.device)
        self.updates = 0
        self.episodes_seen = 0
        self.episodes_at_target_sync = 0

    # --- slots -------------------------------------------------------------------------------
    def make_mixer(self) -> nn.Module:
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.config.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=self.config.lr, alpha=0.99, eps=1e-5)
        return torch.optim.Adam(params, lr=self.config.lr)

    # --- acting ------------------------------------------------------------------------------
    def agent_inputs(self, obs: torch.Tensor, last_actions: torch.Tensor, agent_axis: int = -2) -> torch.Tensor:
        """[..., O] observations and [...] previous actions (-1 = none) -> [..., input]: observation,
        last action one-hot, agent id one-hot. The agents lie along ``agent_axis`` of ``obs``
        ([..., N, O] by default)."""
        n = self.info.n_agents
        last_onehot = F.one_hot(last_actions.clamp(min=0), self.info.n_actions).to(obs.dtype)
        last_onehot = last_onehot * (last_actions >= 0).unsqueeze(-1).to(obs.dtype)
        shape = [1] * obs.dim()
        shape[agent_axis], shape[-1] = n, n
        ids = self.agent_ids.view(shape).expand(*obs.shape[:-1], n)
        return torch.cat([obs, last_onehot, ids], dim=-1)

    def initial_hidden(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(1, batch_size * self.info.n_agents, self.config.agent_hidden_dim, device=self.device)

    def epsilon(self, env_steps_since_reset: int) -> float:
        c = self.config
        if c.epsilon_anneal_steps == 0:
            return c.epsilon_finish
        fraction = min(env_steps_since_reset / c.epsilon_anneal_steps, 1.0)
        return c.epsilon_start + fraction * (c.epsilon_finish - c.epsilon_start)

    @torch.no_grad()
    def act(self, obs, avail_actions, last_actions, hidden, epsilon, generator):
        e, n = obs.shape[:2]
        inputs = self.agent_inputs(obs, last_actions).reshape(e * n, 1, -1)
        q, hidden = self.agent(inputs, hidden)
        q = q.view(e, n, -1).masked_fill(~avail_actions, -torch.inf)
        actions = q.argmax(-1)
        if epsilon > 0.0:
            noise = torch.rand(avail_actions.shape, generator=generator, device=self.device)
            random_actions = noise.masked_fill(~avail_actions, -1.0).argmax(-1)
            explore = torch.rand((e, n), generator=generator, device=self.device) < epsilon
            actions = torch.where(explore, random_actions, actions)
        return actions, hidden

    # --- training ----------------------------------------------------------------------------
    def add_episodes(self, batch: EpisodeBatch) -> None:
        self.replay.add(batch)
        self.episodes_seen += batch.reward.shape[0]

    def unroll(self, agent: RNNAgent, batch: EpisodeBatch) -> torch.Tensor:
        """Q-values [B, T+1, N, A] of ``agent`` over whole episodes (:meth:`RNNAgent.unroll`)."""
        b, t1, n, _ = batch.obs.shape
        last = torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1)[:, :t1]
        # Concatenated straight into the recurrence's time-major layout ([T+1, B, N, D]): every
        # step then reads one contiguous block, and no finished input is permuted (copied) again.
        inputs = self.agent_inputs(batch.obs.transpose(0, 1), last.transpose(0, 1))
        q = agent.unroll(inputs.view(t1, b * n, -1), self.initial_hidden(b)[0])
        return q.view(t1, b, n, -1).transpose(0, 1)

    def mixed(self, q: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        """Q_tot(s_t, a_t) [B, T] of the online mixer from the online Q-values [B, T(+1), N, A]."""
        steps = batch.actions.shape[1]
        chosen = q[:, :steps].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        max_q = masked_max(q[:, :steps].detach(), batch.avail_actions[:, :steps])
        return self.mixer(chosen, batch.state[:, :steps], batch.actions, max_q)

    def probe_outputs(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The online agents' Q-values [B, T, N, A] and Q_tot of the taken actions [B, T], with
        gradients (what the plasticity probe, ctmarl.probe, fits)."""
        q = self.unroll(self.agent, batch)
        return q[:, :-1], self.mixed(q, batch)

    def loss(self, batch: EpisodeBatch) -> torch.Tensor:
        c = self.config
        q = self.unroll(self.agent, batch)
        q_tot = self.mixed(q, batch)
        with torch.no_grad():
            target_q = self.unroll(self.target_agent, batch)[:, 1:]
            avail_next = batch.avail_actions[:, 1:]
            chooser = q[:, 1:].detach() if c.double_q else target_q
            next_actions = chooser.masked_fill(~avail_next, -torch.inf).argmax(-1)
            next_chosen = target_q.gather(-1, next_actions.unsqueeze(-1)).squeeze(-1)
            next_max = masked_max(target_q, avail_next)
            next_q_tot = self.target_mixer(next_chosen, batch.state[:, 1:], next_actions, next_max)
            targets = td_lambda_targets(batch.reward, batch.terminated, next_q_tot, c.gamma, c.td_lambda)
        td_error = (q_tot - targets) * batch.mask
        return td_error.pow(2).sum() / batch.mask.sum()

    def update(self, after_backward: Callable[[], None] | None = None) -> dict[str, float] | None:
        c = self.config
        if len(self.replay) < c.batch_size:
            return None
        batch = self.replay.sample(c.batch_size, self.sample_generator)
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        grad_norm = nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], c.grad_clip_norm
        )
        self.optimizer.step()
        self.updates += 1
        if self.episodes_seen - self.episodes_at_target_sync >= c.target_update_interval_episodes:
            self.sync_target()
        return {"loss": loss.item(), "grad_norm": grad_norm.item()}

    def sync_target(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())
        self.episodes_at_target_sync = self.episodes_seen

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Online and target networks, optimizer, replay, sampling generator and counters."""
        return {
            "networks": self.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "sample_generator": self.sample_generator.get_state(),
            "counters": {"updates": self.updates, "episodes_seen": self.episodes_seen,
                         "episodes_at_target_sync": self.episodes_at_target_sync},
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        # The networks must already have the checkpoint's structure (a method that grows them
        # restores its growth first); the optimizer's parameter list then matches as well.
        self.load_state_dict(state["networks"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.sample_generator.set_state(state["sample_generator"])
        counters = state["counters"]
        self.updates = int(counters["updates"])
        self.episodes_seen = int(counters["episodes_seen"])
        self.episodes_at_target_sync = int(counters["episodes_at_target_sync"])

    # --- interventions ----------------------------------------------------------------------
    def reinitialise(self, modules: tuple[str, ...], clear_replay: bool = False) -> None:
        """Re-draw the named modules' parameters from their initial distributions (in the order
        they were built, so a seeded call reproduces a fresh learner), copy them into the target
        networks, and drop their optimizer moments. ``clear_replay`` empties the replay."""
        for name in modules:
            if name.startswith("target_") or name not in dict(self.named_modules()):
                known = [n for n, _ in self.named_modules() if n and not n.startswith("target_")]
                raise ConfigError(f"cannot re-initialise {name!r}; modules: {', '.join(known)}")
        for name in modules:
            module = self.get_submodule(name)
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
            self.get_submodule(f"target_{name}").load_state_dict(module.state_dict())
            for param in module.parameters():
                self.optimizer.state.pop(param, None)
        if clear_replay:
            self.replay = EpisodeReplay(self.config.buffer_episodes, self.device)

    def replace_module(self, name: str, build: Callable[[nn.Module], nn.Module]) -> None:
        """Replace online module ``name`` by ``build(module)`` and ``target_<name>`` by
        ``build(target copy)`` (made non-trainable), then make the optimizer hold exactly the
        online trainable parameters: leavers go with their state, newcomers join the first
        parameter group with none (see the Learner protocol)."""
        known = {n for n, _ in self.named_modules() if n and not n.startswith("target_")}
        if name not in known:
            raise ConfigError(f"cannot replace {name!r}; modules: {', '.join(sorted(known))}")
        for prefix, trainable in (("", True), ("target_", False)):
            parent_name, _, child = f"{prefix}{name}".rpartition(".")
            parent = self.get_submodule(parent_name)
            replacement = build(getattr(parent, child))
            setattr(parent, child, replacement if trainable else replacement.requires_grad_(False))
        wanted = [p for p in self.parameters() if p.requires_grad]
        wanted_ids = {id(p) for p in wanted}
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if id(param) not in wanted_ids:
                    self.optimizer.state.pop(param, None)
            group["params"] = [p for p in group["params"] if id(p) in wanted_ids]
        present = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        self.optimizer.param_groups[0]["params"].extend(p for p in wanted if id(p) not in present)

    # --- analysis ----------------------------------------------------------------------------
    def neuron_groups(self) -> list[NeuronGroup]:
        return self.agent.neuron_groups("agent") + self.mixer.neuron_groups("mixer")

    def target_neuron_groups(self) -> list[NeuronGroup]:
        return self.target_agent.neuron_groups("agent") + self.target_mixer.neuron_groups("mixer")

    @torch.no_grad()
    def joint_q(self, batch: EpisodeBatch, actions: torch.Tensor) -> torch.Tensor:
        """Q_tot(s_0, actions) [E] for joint ``actions`` [E, N] at the first step of ``batch``."""
        one_step = EpisodeBatch(batch.obs[:, :1], batch.state[:, :1], batch.avail_actions[:, :1],
                                actions[:, None], batch.reward[:, :1], batch.terminated[:, :1],
                                batch.mask[:, :1])
        q = self.unroll(self.agent, one_step)
        chosen = q.gather(-1, actions[:, None, :, None]).squeeze(-1)
        max_q = masked_max(q, one_step.avail_actions)
        return self.mixer(chosen, one_step.state, actions[:, None], max_q)[:, 0]
