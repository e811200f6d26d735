"""QMIX (Rashid et al. 2018): recurrent agents mixed by a monotonic hypernetwork mixer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ctmarl.config import check_range
from ctmarl_baselines.learner import MAX_WIDTH, LearnerConfig, ValueFactorisationLearner
from ctmarl_baselines.networks import QMixer


@dataclass(frozen=True)
class QMIXConfig(LearnerConfig):
    mixing_embed_dim: int = 32
    """Width of the mixer's hidden (embedding) layer."""
    hypernet_hidden_dim: int = 64
    """Width of the hidden layer of the 2-layer hypernetworks."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mixing_embed_dim", "hypernet_hidden_dim"):
            check_range(self, name, 1, MAX_WIDTH)


class QMIXLearner(ValueFactorisationLearner):
    Config = QMIXConfig

    def make_mixer(self) -> nn.Module:
        return QMixer(self.info.n_agents, self.info.state_dim, self.config.mixing_embed_dim,
                      self.config.hypernet_hidden_dim)
