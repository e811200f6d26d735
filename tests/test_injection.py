"""Plasticity injection's invariants on every registered learner: output unchanged at injection,
trainable parameter count unchanged, frozen parts bitwise still, the fresh head learning, and a
checkpoint round trip (DESIGN.md §7)."""

import copy

import pytest
import torch
from ctmarl_baselines.methods.injection import InjectedHead
from method_harness import INFO, assert_restores_exactly, build_with, outputs, train

from ctmarl.errors import ConfigError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.learner import make_learner
from ctmarl.method import MethodContext, make_method
from ctmarl.registry import LEARNERS
from ctmarl.testing import random_episodes

NAMES = LEARNERS.names()


def build(name, seed=0, method_config=None, **overrides):
    return build_with("injection", 4, name, seed, method_config, **overrides)


def injected(module):
    """How many times ``module``'s first injected network was injected (0: never)."""
    heads = [m for m in module.modules() if isinstance(m, InjectedHead)]
    if not heads:
        return 0
    depth, head = 0, heads[0]
    while isinstance(head, InjectedHead):
        depth, head = depth + 1, head.frozen
    return depth


def trainable_count(learner):
    return sum(p.numel() for p in learner.parameters() if p.requires_grad)


@pytest.mark.parametrize("whole_modules", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_injection_leaves_outputs_and_trainable_count_unchanged(name, whole_modules):
    learner, method = build(name, method_config={"whole_modules": whole_modules})
    batch = random_episodes(INFO, 8, seed=11)
    trainable = trainable_count(learner)
    optimizer_size = sum(p.numel() for g in learner.optimizer.param_groups for p in g["params"])
    method.on_task_start(0)
    assert not injected(learner.mixer) and not injected(learner.agent), "no injection at the first task"
    for task in (1, 2):
        train(learner, method, 4)
        before = outputs(learner, batch)
        method.on_task_start(task)
        after = outputs(learner, batch)
        for old, new in zip(before, after):  # agent Q, Q_tot, target agent Q, target Q_tot
            assert (old - new).abs().max() <= 1e-5
        assert trainable_count(learner) == trainable
        assert sum(p.numel() for g in learner.optimizer.param_groups for p in g["params"]) == optimizer_size
    assert isinstance(learner.agent.fc2, InjectedHead) and isinstance(learner.mixer, InjectedHead) == whole_modules
    assert injected(learner.mixer) == injected(learner.target_mixer) == 2, "twice, the target alike"
    learner.sync_target()  # same structure: the target copy still loads
    assert [g.name for g in learner.neuron_groups()] == [g.name for g in learner.target_neuron_groups()]


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
@pytest.mark.parametrize("name", NAMES)
def test_frozen_heads_never_move_and_the_fresh_head_learns(name, optimizer):
    learner, method = build(name, optimizer=optimizer)
    train(learner, method, 5)
    method.on_task_start(1)
    heads = [learner.mixer, learner.agent.fc2]
    frozen = {f"{i}.{k}": v.detach().clone() for i, head in enumerate(heads)
              for k, v in head.named_parameters() if not v.requires_grad}
    fresh = {f"{i}.{k}": v.detach().clone() for i, head in enumerate(heads)
             for k, v in head.named_parameters() if v.requires_grad}
    assert frozen and fresh and all(".fresh." in k for k in fresh)
    train(learner, method, 30)
    now = {f"{i}.{k}": v for i, head in enumerate(heads) for k, v in head.named_parameters()}
    for key, value in frozen.items():
        assert torch.equal(now[key], value), f"frozen {key} moved"
    assert all(not torch.equal(now[key], value) for key, value in fresh.items() if key.endswith("weight"))


def test_qmix_stays_monotonic_after_injection():
    """Networks inside the mixer are injected, so QMIX's abs() keeps dQ_tot/dQ_i >= 0; injecting
    the mixer as a whole (whole_modules) does not keep it."""
    slopes = {}
    for whole_modules in (False, True):
        learner, method = build("qmix", method_config={"whole_modules": whole_modules})
        method.on_task_start(1)
        with torch.no_grad():  # the trained copy drifts away from its frozen twin
            for param in learner.mixer.parameters():
                if param.requires_grad:
                    param.mul_(0.2)
        qs = torch.randn(64, 1, INFO.n_agents, requires_grad=True)
        states = torch.randn(64, 1, INFO.state_dim)
        learner.mixer(qs, states).sum().backward()
        slopes[whole_modules] = float(qs.grad.min())
    assert slopes[False] >= 0.0 > slopes[True]


@pytest.mark.parametrize("name", NAMES)
def test_fresh_head_is_freshly_initialised_and_seeded(name):
    learner, method = build(name)
    old = copy.deepcopy(learner.agent.fc2)
    method.on_task_start(1)
    head = learner.agent.fc2
    assert torch.equal(head.frozen.weight, old.weight)
    assert not torch.equal(head.fresh.weight, old.weight)
    assert torch.equal(head.fresh.weight, head.fresh_frozen.weight)
    assert head.fresh.weight.abs().max() <= 1 / head.fresh.in_features ** 0.5
    other, other_method = build(name)
    other_method.on_task_start(1)
    assert torch.equal(other.agent.fc2.fresh.weight, head.fresh.weight), "same seed, same draw"
    assert torch.equal(learner.target_agent.fc2.fresh.weight, head.fresh.weight)


@pytest.mark.parametrize("name", NAMES)
def test_summary_records_growth(name):
    learner, method = build(name)
    initial = trainable_count(learner)
    head = sum(p.numel() for p in learner.mixer.parameters()) + sum(p.numel() for p in learner.agent.fc2.parameters())
    method.on_task_start(1)
    method.on_task_start(2)
    summary = method.summary()
    assert summary["injections"] == 2 and summary["injected_at_tasks"] == [1, 2]
    assert summary["trainable_parameters"] == initial == summary["parameters_initial"]
    assert summary["frozen_parameters"] == 2 * 2 * head
    total = sum(p.numel() for p in learner.agent.parameters()) + sum(p.numel() for p in learner.mixer.parameters())
    assert summary["parameters_final"] == total == initial + 4 * head
    assert summary["parameter_growth"] == pytest.approx(4 * head / initial)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name):
    learner, method = build(name)
    train(learner, method, 3)
    method.on_task_start(1)
    train(learner, method, 3)
    method.on_task_start(2)
    train(learner, method, 3)
    assert_restores_exactly(learner, method, lambda: build(name, seed=1))


def test_config_errors():
    learner = make_learner("qmix", INFO)
    with pytest.raises(ConfigError, match="announces task boundaries"):
        make_method("injection").attach(learner, MethodContext(2, False, 0))
    method = make_method("injection", {"modules": ["critic"]})
    method.attach(learner, MethodContext(2, True, 0))
    with pytest.raises(ConfigError, match="cannot replace 'critic'"):
        method.on_task_start(1)
    with pytest.raises(ConfigError, match="distinct"):
        make_method("injection", {"modules": ["mixer", "mixer"]})


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_smoke_run_records_growth(name):
    record, _ = evaluate(RunSpec(scenario="matrix_drift", algo="injection", tier="smoke", learner=name,
                                 neuron_every_updates=8), out=None)
    summary = record["method_summary"]
    assert summary["injected_at_tasks"] == [1, 2, 3, 4, 5]
    assert summary["trainable_parameters"] == summary["parameters_initial"]
    assert 0.0 <= record["metrics"]["auc"] <= 1.0
