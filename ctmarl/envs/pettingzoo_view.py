"""A PettingZoo ``ParallelEnv`` view of one copy of any batched env family.

Agents are ``agent_0 .. agent_{N-1}``; observations are ``Box`` vectors, actions ``Discrete(A)``,
and the action mask of each agent is in ``infos[agent]["action_mask"]`` (int8, PettingZoo's
convention for parallel envs). ``state()`` returns the global state.

An unavailable action is passed to the env family, which treats it as a no-op (each family
documents how); with ``strict_masks=True`` the view raises instead, as SMAC does. Non-strict is
the default so that PettingZoo's own conformance tests, which sample actions without masks, run
unmodified.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium
import numpy as np
import torch
from pettingzoo import ParallelEnv

from ctmarl.envs.base import BatchedEnv, Observation


class ParallelEnvView(ParallelEnv):
    """Wraps ``make_env(seed) -> BatchedEnv`` (with ``num_envs == 1``) as a PettingZoo env."""

    metadata = {"name": "ctmarl_parallel_view", "render_modes": []}

    def __init__(self, make_env: Callable[[int], BatchedEnv], seed: int = 0, strict_masks: bool = False):
        self._make_env = make_env
        self.strict_masks = strict_masks
        self._env = make_env(seed)
        if self._env.num_envs != 1:
            raise ValueError("ParallelEnvView wraps exactly one env copy (num_envs=1)")
        info = self._env.info
        self.possible_agents = [f"agent_{i}" for i in range(info.n_agents)]
        self.agents: list[str] = []
        self._obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (info.obs_dim,), np.float32)
        self._act_space = gymnasium.spaces.Discrete(info.n_actions)
        self.state_space = gymnasium.spaces.Box(-np.inf, np.inf, (info.state_dim,), np.float32)
        self._last: Observation | None = None

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._act_space

    def state(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError("call reset() before state()")
        return self._last.state[0].cpu().numpy().astype(np.float32)

    def _split(self, observation: Observation):
        obs = observation.obs[0].cpu().numpy().astype(np.float32)
        masks = observation.avail_actions[0].cpu().numpy().astype(np.int8)
        observations = {a: obs[i] for i, a in enumerate(self.possible_agents) if a in self.agents}
        infos = {
            a: {"action_mask": masks[i]} for i, a in enumerate(self.possible_agents) if a in self.agents
        }
        return observations, infos

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._env = self._make_env(seed)
        self.agents = list(self.possible_agents)
        self._last = self._env.reset(seed=seed)
        return self._split(self._last)

    def step(self, actions: dict):
        if not self.agents:
            raise RuntimeError("step() called after the episode ended; call reset()")
        masks = self._last.avail_actions[0]
        joint = []
        for i, agent in enumerate(self.possible_agents):
            action = int(actions[agent])
            if self.strict_masks and not bool(masks[i, action]):
                raise ValueError(f"{agent}: action {action} is not available")
            joint.append(action)
        result = self._env.step(torch.tensor([joint], device=self._env.device))
        self._last = Observation(result.obs, result.state, result.avail_actions)
        observations, infos = self._split(self._last)
        reward = float(result.reward[0])
        terminated, truncated = bool(result.terminated[0]), bool(result.truncated[0])
        rewards = {a: reward for a in self.agents}
        terminations = {a: terminated for a in self.agents}
        truncations = {a: truncated for a in self.agents}
        if terminated or truncated:
            for agent in self.agents:
                infos[agent]["score"] = float(result.score[0])
            self.agents = []
        return observations, rewards, terminations, truncations, infos
