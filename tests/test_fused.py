"""The fused nn.GRU unroll against the classic PyMARL GRUCell loop (ctmarl_baselines.reference)."""

import pytest
import torch

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import make_learner
from ctmarl.testing import random_episodes as _random_episodes
from ctmarl_baselines.reference import loop_unroll, reference_loss

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=4, episode_limit=9)


def random_episodes(episodes=5, seed=0):
    return _random_episodes(INFO, episodes, seed)


@pytest.mark.parametrize("learner_name", ["qmix", "qplex"])
def test_fused_unroll_equals_grucell_loop(learner_name):
    torch.manual_seed(0)
    learner = make_learner(learner_name, INFO)
    batch = random_episodes()
    fused = learner.unroll(learner.agent, batch)
    looped = loop_unroll(learner, learner.agent, batch)
    assert fused.shape == looped.shape == (5, INFO.episode_limit + 1, 3, 4)
    assert torch.allclose(fused, looped, atol=1e-5)


@pytest.mark.parametrize("learner_name", ["qmix", "qplex"])
def test_fused_td_loss_and_gradients_equal_the_loop(learner_name):
    torch.manual_seed(0)
    learner = make_learner(learner_name, INFO, {"td_lambda": 0.6})
    batch = random_episodes()
    params = [p for p in learner.parameters() if p.requires_grad]
    fused_loss = learner.loss(batch)
    fused_grads = torch.autograd.grad(fused_loss, params)
    loop_loss = reference_loss(learner, batch)
    loop_grads = torch.autograd.grad(loop_loss, params)
    assert torch.allclose(fused_loss, loop_loss, atol=1e-5)
    for p, a, b in zip(params, fused_grads, loop_grads):
        assert torch.allclose(a, b, atol=1e-5), [n for n, q in learner.named_parameters() if q is p]
    assert "unroll" not in vars(learner)  # the loop path is undone after use
