"""Helpers for testing and benchmarking learners and methods (also for third-party plug-ins)."""

from __future__ import annotations

import torch

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import EpisodeBatch


def random_episodes(
    info: EnvInfo, episodes: int = 4, seed: int = 0, avail_prob: float = 0.7, full_length: bool = False
) -> EpisodeBatch:
    """Random padded episodes of ``info``'s sizes.

    Action 0 is always available and chosen actions are available. Episode lengths are random in
    1..T and the last step terminates, unless ``full_length``: then every episode runs all T
    steps and is truncated (the shape of a training batch in a fixed-length env).
    """
    g = torch.Generator().manual_seed(seed)
    t, n, a = info.episode_limit, info.n_agents, info.n_actions
    avail = torch.rand(episodes, t + 1, n, a, generator=g) < avail_prob
    avail[..., 0] = True
    actions = torch.randint(0, a, (episodes, t, n), generator=g)
    actions = torch.where(avail[:, :-1].gather(-1, actions[..., None]).squeeze(-1), actions, 0)
    if full_length:
        lengths = torch.full((episodes,), t)
    else:
        lengths = torch.randint(1, t + 1, (episodes,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    terminated = (torch.arange(t)[None] == (lengths[:, None] - 1)) & (lengths[:, None] < t) \
        if full_length else torch.arange(t)[None] == (lengths[:, None] - 1)
    return EpisodeBatch(
        torch.randn(episodes, t + 1, n, info.obs_dim, generator=g),
        torch.randn(episodes, t + 1, info.state_dim, generator=g),
        avail, actions, torch.randn(episodes, t, generator=g) * mask, terminated, mask,
    )
