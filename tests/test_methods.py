"""Method contract tests, generated over the method registry, plus each method's invariant."""

import pytest
import torch

from ctmarl.errors import ConfigError
from ctmarl.learner import make_learner
from ctmarl.method import Method, MethodContext, make_method
from ctmarl.registry import METHODS
from ctmarl.scenario import make_scenario

INFO = make_scenario("matrix_drift").env_info("smoke")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_builds_and_attaches(name):
    method = make_method(name)
    assert isinstance(method, Method)
    method.attach(make_learner("qmix", INFO), MethodContext(n_tasks=3, announce_task_boundaries=True, seed=0))
    for k in range(3):
        method.on_task_start(k)
        method.on_task_end(k)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_reset_all_reproduces_a_fresh_initialisation():
    torch.manual_seed(5)
    fresh = make_learner("qmix", INFO)
    torch.manual_seed(0)
    learner = make_learner("qmix", INFO)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(1.0)
    learner.optimizer.state[next(learner.agent.parameters())] = {"step": torch.tensor(3.0)}
    method = make_method("reset_all")
    method.attach(learner, MethodContext(2, True, 0))
    torch.manual_seed(5)
    method.on_task_start(1)
    for name, value in _params(fresh).items():
        assert torch.equal(learner.state_dict()[name], value), name
    assert torch.equal(learner.target_mixer.hyper_w1[0].weight, learner.mixer.hyper_w1[0].weight)
    assert len(learner.optimizer.state) == 0 and len(learner.replay) == 0


def test_reset_touches_only_mixer_and_agent_head():
    torch.manual_seed(0)
    learner = make_learner("qmix", INFO)
    before = _params(learner)
    method = make_method("reset")
    method.attach(learner, MethodContext(2, True, 0))
    method.on_task_start(0)
    assert all(torch.equal(learner.state_dict()[k], v) for k, v in before.items()), "no reset at task 0"
    method.on_task_start(1)
    after = learner.state_dict()
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        expected = name.startswith(("mixer.", "target_mixer.", "agent.fc2.", "target_agent.fc2."))
        assert changed == expected, name


def test_reset_rejects_unknown_modules_and_silent_protocols():
    learner = make_learner("qmix", INFO)
    method = make_method("reset", {"modules": ["mixer", "critic"]})
    method.attach(learner, MethodContext(2, True, 0))
    with pytest.raises(ConfigError, match="cannot re-initialise 'critic'"):
        method.on_task_start(1)
    with pytest.raises(ConfigError, match="needs a protocol that announces task boundaries"):
        make_method("reset").attach(learner, MethodContext(2, False, 0))
