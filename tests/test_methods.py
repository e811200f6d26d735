"""Method contract tests, generated over the method registry, plus each method's invariant."""

import pytest
import torch

from ctmarl.errors import ConfigError
from ctmarl.learner import make_learner
from ctmarl.method import Method, MethodContext, make_method
from ctmarl.registry import LEARNERS, METHODS
from ctmarl.scenario import make_scenario
from ctmarl.testing import random_episodes

INFO = make_scenario("matrix_drift").env_info("smoke")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_builds_and_attaches(name):
    method = make_method(name)
    assert isinstance(method, Method)
    method.attach(make_learner("qmix", INFO), MethodContext(n_tasks=3, announce_task_boundaries=True, seed=0))
    for k in range(3):
        method.on_task_start(k)
        method.on_task_end(k)


def _drive(name, learner_name, seed=0):
    """A few updates over three announced tasks on the smoke scenario's sizes, with the hooks in
    the runner's order; returns the learner's state and the method's summary and state."""
    torch.manual_seed(seed)
    learner = make_learner(learner_name, INFO, {"batch_size": 4, "buffer_episodes": 8})
    method = make_method(name)
    method.attach(learner, MethodContext(n_tasks=3, announce_task_boundaries=True, seed=seed))
    step = 0
    for k in range(3):
        method.on_task_start(k)
        learner.add_episodes(random_episodes(INFO, 8, seed=seed + k))  # the task's first collection
        for _ in range(3):
            assert learner.update(after_backward=method.after_backward) is not None
            step += 1
            method.after_update(step)
        method.on_task_end(k)
    return _params(learner), method.summary(), method.state_dict()


def _is_plain(value):
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


@pytest.mark.parametrize("learner_name", LEARNERS.names())
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_on_every_learner_deterministically(name, learner_name):
    params, summary, state = _drive(name, learner_name)
    again, summary_again, _ = _drive(name, learner_name)
    assert params.keys() == again.keys() and all(torch.equal(v, again[k]) for k, v in params.items())
    assert summary == summary_again
    assert _is_plain(state), "checkpoints hold plain containers of tensors and numbers"
    assert _is_plain(summary) and not any(isinstance(v, torch.Tensor) for v in summary.values())


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


@pytest.mark.parametrize("learner_name", LEARNERS.names())
def test_l2_init_adds_exactly_its_gradient_term(learner_name):
    """After a backward pass, l2_init adds λ (θ − θ₀) to every trainable agent and mixer
    parameter's gradient and leaves the target networks alone."""
    torch.manual_seed(0)
    learner = make_learner(learner_name, INFO, {"batch_size": 4, "buffer_episodes": 8})
    method = make_method("l2_init", {"strength": 0.25})
    method.attach(learner, MethodContext(n_tasks=1, announce_task_boundaries=True, seed=0))
    initial = {n: p.detach().clone() for n, p in learner.named_parameters()}
    with torch.no_grad():  # move the weights away from θ₀ (as training would)
        for p in learner.parameters():
            p.add_(0.1)
    learner.add_episodes(random_episodes(INFO, 8, seed=1))
    seen = {}

    def capture_then_apply():
        seen.update({n: None if p.grad is None else p.grad.clone() for n, p in learner.named_parameters()})
        method.after_backward()
        for name, p in learner.named_parameters():
            if name.startswith(("agent.", "mixer.")) and seen[name] is not None:
                expected = seen[name] + 0.25 * (p.detach() - initial[name])
                assert torch.allclose(p.grad, expected, rtol=0, atol=1e-7), name
            elif seen[name] is not None:
                assert torch.equal(p.grad, seen[name]), name

    assert learner.update(after_backward=capture_then_apply) is not None
    assert any(n.startswith("mixer.") for n, g in seen.items() if g is not None)
    assert set(method.summary()["relative_distance_to_init"]) == {"agent", "mixer"}


@pytest.mark.parametrize("learner_name", LEARNERS.names())
def test_ln_wd_normalises_every_hidden_layer_and_decays_exactly(learner_name):
    """ln_wd: every neuron group's activation (online and target) becomes activation(LayerNorm(x)),
    whose gain and bias train; after an update every trainable agent and mixer parameter is scaled
    by exactly 1 - lr * weight_decay."""
    from ctmarl_baselines.methods.ln_wd import LayerNormActivation

    torch.manual_seed(0)
    learner = make_learner(learner_name, INFO, {"batch_size": 4, "buffer_episodes": 8})
    method = make_method("ln_wd", {"weight_decay": 0.5})
    method.attach(learner, MethodContext(n_tasks=1, announce_task_boundaries=True, seed=0))
    for groups in (learner.neuron_groups(), learner.target_neuron_groups()):
        assert groups and all(isinstance(g.activation, LayerNormActivation) for g in groups)
        assert all(g.activation.norm.normalized_shape == (g.width,) for g in groups)
    in_optimizer = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert all(id(g.activation.norm.weight) in in_optimizer for g in learner.neuron_groups())
    learner.add_episodes(random_episodes(INFO, 8, seed=1))
    assert learner.update() is not None
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    method.after_update(1)
    factor = 1.0 - learner.config.lr * 0.5
    for name, p in learner.named_parameters():
        expected = before[name] * factor if name.startswith(("agent.", "mixer.")) else before[name]
        assert torch.equal(p, expected), name
    assert method.summary()["layer_norms"] == len(learner.neuron_groups())
