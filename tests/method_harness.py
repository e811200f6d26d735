"""Shared set-up of the growth-method tests (KNIFE, injection): tiny learners of every registered
kind with a method attached and a filled replay, and the outputs that must not change."""

import copy

import torch
from ctmarl_baselines.learner import masked_max

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import make_learner
from ctmarl.method import MethodContext, make_method
from ctmarl.testing import random_episodes

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=4, episode_limit=6)
#: Small widths so the tests are fast; QPLEX with 3-layer kernels, so a block-diagonal layer is
#: both a group's consumer and another group's incoming layer.
TINY = {
    "qmix": {"agent_hidden_dim": 16, "mixing_embed_dim": 8, "hypernet_hidden_dim": 16},
    "qplex": {"agent_hidden_dim": 16, "hypernet_embed_dim": 16, "num_kernels": 2,
              "adv_hypernet_embed_dim": 8, "adv_hypernet_layers": 3},
}


def build_with(method_name, n_tasks, name, seed=0, method_config=None, **overrides):
    """A tiny ``name`` learner (seeded) with ``method_name`` attached and 16 random episodes."""
    torch.manual_seed(seed)
    learner = make_learner(name, INFO, {**TINY.get(name, {}), "batch_size": 4, "buffer_episodes": 16,
                                        **overrides})
    method = make_method(method_name, method_config or {})
    method.attach(learner, MethodContext(n_tasks=n_tasks, announce_task_boundaries=True, seed=seed))
    for seed_ in range(4):
        learner.add_episodes(random_episodes(INFO, 4, seed=seed_))
    return learner, method


def train(learner, method, updates):
    for _ in range(updates):
        assert learner.update(after_backward=method.after_backward) is not None


@torch.no_grad()
def outputs(learner, batch):
    """Agent Q-values and Q_tot of the online and the target networks on ``batch``."""
    result = []
    for agent, mixer in ((learner.agent, learner.mixer), (learner.target_agent, learner.target_mixer)):
        q = learner.unroll(agent, batch)
        chosen = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        max_q = masked_max(q[:, :-1], batch.avail_actions[:, :-1])
        result += [q, mixer(chosen, batch.state[:, :-1], batch.actions, max_q)]
    return result


def assert_restores_exactly(learner, method, build):
    """Copy ``learner``'s and ``method``'s state into a differently seeded ``build()`` pair, check
    the copy gives the same outputs, then that both train on identically; returns the copy."""
    method_state = copy.deepcopy(method.state_dict())
    learner_state = copy.deepcopy(learner.state_dict())
    optimizer_state = copy.deepcopy(learner.optimizer.state_dict())

    fresh, fresh_method = build()
    fresh_method.load_state_dict(method_state)
    fresh.load_state_dict(learner_state)
    fresh.optimizer.load_state_dict(optimizer_state)
    batch = random_episodes(INFO, 8, seed=12)
    for a, b in zip(outputs(learner, batch), outputs(fresh, batch)):
        assert torch.equal(a, b)
    fresh.sample_generator.set_state(learner.sample_generator.get_state())
    train(learner, method, 3)
    train(fresh, fresh_method, 3)
    for (key, a), b in zip(learner.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    assert fresh_method.summary() == method.summary()
    return fresh, fresh_method
