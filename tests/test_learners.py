"""The Learner contract, generated over every registered learner."""

import pytest
import torch

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import Learner, make_learner
from ctmarl.registry import LEARNERS
from ctmarl.testing import random_episodes

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=4, episode_limit=6)
NAMES = LEARNERS.names()


def test_reference_learners_are_registered():
    assert {"qmix", "qplex"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_satisfies_the_protocol(name):
    assert isinstance(make_learner(name, INFO), Learner)


@pytest.mark.parametrize("name", NAMES)
def test_neuron_groups_are_consistent(name):
    groups = make_learner(name, INFO).neuron_groups()
    assert len({g.name for g in groups}) == len(groups), "names must be unique"
    assert {g.part for g in groups} == {"agent", "mixer"}
    assert len({id(g.activation) for g in groups}) == len(groups), "one activation module per group"
    for group in groups:
        group.check_shapes()


@pytest.mark.parametrize("name", NAMES)
def test_update_reduces_td_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    learner = make_learner(name, INFO, {"batch_size": 4, "buffer_episodes": 4})
    batch = random_episodes(INFO)
    learner.add_episodes(batch)
    before = learner.loss(batch).item()
    for _ in range(50):
        stats = learner.update()
    assert stats is not None and learner.loss(batch).item() < before


@pytest.mark.parametrize("name", NAMES)
def test_update_waits_for_enough_episodes_and_calls_the_hook_with_gradients(name):
    learner = make_learner(name, INFO, {"batch_size": 8, "buffer_episodes": 8})
    learner.add_episodes(random_episodes(INFO, 4))
    assert learner.update() is None
    learner.add_episodes(random_episodes(INFO, 4, seed=1))
    seen = []
    learner.update(after_backward=lambda: seen.append(learner.agent.fc1.weight.grad is not None))
    assert seen == [True]
