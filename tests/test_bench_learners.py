"""The learner benchmark's matmul-only bound: it must find the products the update really does."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_learners import matmul_only_per_second, matrix_products  # noqa: E402

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import make_learner
from ctmarl.testing import random_episodes

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=4, episode_limit=6)


@pytest.mark.parametrize("name", ["qmix", "qplex"])
def test_matrix_products_are_the_updates_own(name):
    torch.manual_seed(0)
    learner = make_learner(name, INFO, {"batch_size": 2, "buffer_episodes": 2, "agent_hidden_dim": 8})
    learner.add_episodes(random_episodes(INFO, 2, full_length=True))
    products = matrix_products(learner)
    rows = 2 * INFO.n_agents  # sequences: episodes x agents
    steps = INFO.episode_limit + 1
    inputs = INFO.obs_dim + INFO.n_actions + INFO.n_agents
    # fc1 over every step of both unrolls (online and target), then its weight gradient once
    assert products.count(((steps * rows, inputs), (inputs, 8))) == 2
    assert products.count(((8, steps * rows), (steps * rows, inputs))) == 1
    # the recurrence: h W_hh^T at every step of both unrolls; dh W_hh at every step of the backward
    assert products.count(((rows, 8), (8, 24))) == 2 * steps
    assert products.count(((rows, 24), (24, 8))) == steps
    assert matmul_only_per_second(products, updates=1, repeats=1) > 0
