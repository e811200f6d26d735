"""KNIFE's invariants on every registered learner: function unchanged at replacement, frozen parts
bitwise still, active neurons learning, stagnation falling, the cap, the growth record, and a
checkpoint round trip (DESIGN.md §7)."""

import pytest
import torch
from ctmarl_baselines.methods.growth import draw_composite
from method_harness import INFO, assert_restores_exactly, build_with, outputs, train

from ctmarl import neurons
from ctmarl.errors import ConfigError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.learner import make_learner
from ctmarl.method import MethodContext, make_method
from ctmarl.registry import LEARNERS
from ctmarl.testing import random_episodes

NAMES = LEARNERS.names()


def build(name, seed=0, method_config=None, **overrides):
    return build_with("knife", 3, name, seed, method_config, **overrides)


def replace_in_every_group(method, learner):
    for group in learner.neuron_groups():
        trainable = group.trainable.nonzero().squeeze(1)
        method.replace(group.name, trainable[torch.tensor([0, 2, 5])])


def stagnant_ratio(method, group):
    """Stagnant fraction of the group's trainable neurons, from KNIFE's own tracker."""
    scores = method.tracker.scores(group)
    return float((scores[group.trainable] <= 0.1).float().mean())


def make_stagnant(group, neurons_):
    """Rows x100 and outgoing columns x0.01: the same function (ReLU is positively homogeneous),
    an update ratio 10^4 times smaller."""
    with torch.no_grad():
        group.incoming.weight[neurons_] *= 100.0
        group.incoming.bias[neurons_] *= 100.0
        for consumer in group.consumers:
            consumer.weight[:, neurons_] *= 0.01


@pytest.mark.parametrize("name", NAMES)
def test_replacement_leaves_q_values_and_q_tot_unchanged(name):
    learner, method = build(name)
    train(learner, method, 3)
    batch = random_episodes(INFO, 8, seed=11)
    before = outputs(learner, batch)
    widths = [group.width for group in learner.neuron_groups()]
    replace_in_every_group(method, learner)
    replace_in_every_group(method, learner)  # again on the grown layers
    after = outputs(learner, batch)
    assert [g.width for g in learner.neuron_groups()] == [w + 12 for w in widths]
    for old, new in zip(before, after):  # agent Q, Q_tot, target agent Q, target Q_tot
        assert old.shape == new.shape and (old - new).abs().max() <= 1e-6
    learner.sync_target()  # the target kept the online structure: its copy still loads
    for group, target in zip(learner.neuron_groups(), learner.target_neuron_groups()):
        assert torch.equal(group.frozen, target.frozen)
        assert torch.equal(getattr(group.incoming, "block_mask", torch.ones(1)),
                           getattr(target.incoming, "block_mask", torch.ones(1)))


@pytest.mark.parametrize("name", NAMES)
def test_composite_structure(name):
    learner, method = build(name)
    group = learner.neuron_groups()[-1]
    width = group.width
    incoming = group.incoming.weight.detach().clone()
    method.replace(group.name, torch.tensor([1, 3]))
    group = learner.neuron_groups()[-1]
    weight, bias = group.incoming.weight.detach(), group.incoming.bias.detach()
    active, compensation = [width, width + 1], [width + 2, width + 3]
    assert torch.equal(weight[:width], incoming), "knowledge neurons keep their weights"
    assert torch.equal(weight[active], weight[compensation]) and torch.equal(bias[active], bias[compensation])
    for consumer in group.consumers:
        assert torch.equal(consumer.weight[:, active], -consumer.weight[:, compensation])
        assert consumer.weight[:, active].abs().sum() > 0, "the active neurons can pass on gradient"
    assert group.frozen.tolist() == [i in (1, 3) for i in range(width)] + [False, False, True, True]
    mask = getattr(group.incoming, "block_mask", None)
    if mask is not None:  # a new neuron joins the kernel block of the neuron it replaces
        assert torch.equal(mask[active], mask[[1, 3]]) and torch.equal(mask[compensation], mask[[1, 3]])
        assert torch.equal(weight * mask, weight)
        for consumer in group.consumers:
            consumer_mask = consumer.module.block_mask
            assert torch.equal(consumer_mask[:, active], consumer_mask[:, [1, 3]])
            assert torch.equal(consumer.weight * consumer_mask, consumer.weight)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
@pytest.mark.parametrize("name", NAMES)
def test_frozen_parts_never_move_and_active_neurons_learn(name, optimizer):
    learner, method = build(name, optimizer=optimizer)
    train(learner, method, 5)
    replace_in_every_group(method, learner)
    frozen_before, active_before = {}, {}
    for group in learner.neuron_groups():
        frozen, active = group.frozen, group.trainable.clone()
        active[: group.width - 6] = False  # the 3 newest trainable neurons are the active ones
        frozen_before[group.name] = [group.incoming.weight[frozen].clone(), group.incoming.bias[frozen].clone()]
        frozen_before[group.name] += [c.weight[:, frozen].clone() for c in group.consumers]
        active_before[group.name] = [group.incoming.weight[active].clone()]
        active_before[group.name] += [c.weight[:, active].clone() for c in group.consumers]
    seen_gradient = {}

    def after_backward():
        method.after_backward()
        for group in learner.neuron_groups():
            active = group.trainable.clone()
            active[: group.width - 6] = False
            assert group.incoming.weight.grad[group.frozen].abs().max() == 0
            seen_gradient[group.name] = seen_gradient.get(group.name, 0.0) + float(
                group.incoming.weight.grad[active].abs().sum())

    for _ in range(30):
        learner.update(after_backward=after_backward)
    for group in learner.neuron_groups():
        frozen, active = group.frozen, group.trainable.clone()
        active[: group.width - 6] = False
        now = [group.incoming.weight[frozen], group.incoming.bias[frozen]] + [c.weight[:, frozen] for c in group.consumers]
        for old, new in zip(frozen_before[group.name], now):
            assert torch.equal(old, new), f"{group.name}: a frozen entry moved"
        moved = [group.incoming.weight[active]] + [c.weight[:, active] for c in group.consumers]
        for old, new in zip(active_before[group.name], moved):
            assert not torch.equal(old, new), f"{group.name}: active neurons did not learn"
        assert seen_gradient[group.name] > 0, f"{group.name}: active neurons got no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_detection_replaces_stagnant_neurons_and_stagnation_falls(name):
    learner, method = build(name, method_config={"max_replaced_fraction": 0.5})
    chosen = {}
    for group in learner.neuron_groups()[:2]:  # the agent's layer and a mixer layer
        chosen[group.name] = [0, 3, 4]
        make_stagnant(group, chosen[group.name])
    train(learner, method, 10)
    before = {g.name: stagnant_ratio(method, g) for g in learner.neuron_groups() if g.name in chosen}
    replaced = method.detect()
    events = {event["group"]: event["neurons"] for event in method.events}
    for group_name, neurons_ in chosen.items():
        assert 0 < replaced[group_name] <= 8  # cap: floor(0.5 x 16)
        assert set(neurons_) <= set(events[group_name])
    train(learner, method, 1)
    for group in learner.neuron_groups():
        if group.name in chosen:
            assert set(group.frozen.nonzero().squeeze(1).tolist()) >= set(chosen[group.name])
            assert stagnant_ratio(method, group) < before[group.name], group.name


@pytest.mark.parametrize("name", NAMES)
def test_cap_per_detection_and_trainable_count_kept(name):
    learner, method = build(name, agent_hidden_dim=40)
    group = learner.neuron_groups()[0]  # agent.fc1, 40 neurons: cap floor(0.1 x 40) = 4
    make_stagnant(group, list(range(10)))
    train(learner, method, 10)
    replaced = method.detect()
    assert replaced["agent.fc1"] == 4
    group = learner.neuron_groups()[0]
    assert group.width == 48 and int(group.trainable.sum()) == 40
    assert set(group.frozen[:40].nonzero().squeeze(1).tolist()) <= set(range(10))
    train(learner, method, 10)
    assert method.detect().get("agent.fc1", 0) <= 4


def test_no_detection_at_task_zero_and_a_schedule():
    learner, method = build("qmix", method_config={"every_updates": 5})
    make_stagnant(learner.neuron_groups()[0], [0, 1])
    method.on_task_start(0)
    assert method.events == []  # no gradient history yet
    for step in range(1, 11):
        learner.update(after_backward=method.after_backward)
        method.after_update(step)
    assert {event["update"] for event in method.events} <= {5, 10} and method.events
    method.on_task_start(1)
    assert all(event["task"] in (0, 1) for event in method.events)


@pytest.mark.parametrize("name", NAMES)
def test_growth_is_recorded(name):
    learner, method = build(name)

    def count():
        return sum(p.numel() for p in learner.agent.parameters()) + sum(p.numel() for p in learner.mixer.parameters())

    initial = count()
    train(learner, method, 2)
    expected_growth = 0
    for group in learner.neuron_groups():
        # 3 replacements = 6 new neurons, each with its incoming row and bias and one column per
        # consumer row (shapes now: an earlier group may have grown this group's inputs).
        group = method._group(group.name, learner.neuron_groups())
        consumer_rows = sum(c.weight.shape[0] for c in group.consumers)
        expected_growth += 6 * (group.incoming.in_features + 1 + consumer_rows)
        method.replace(group.name, torch.tensor([0, 2, 5]))
    summary = method.summary()
    assert summary["parameters_initial"] == initial and summary["parameters_final"] == count()
    assert summary["parameters_final"] - initial == expected_growth
    assert summary["parameter_growth"] == pytest.approx((count() - initial) / initial)
    assert summary["replaced"] == 3 * len(learner.neuron_groups())
    assert summary["replaced_per_task"][0] == summary["replaced"]
    frozen = sum(int(p.numel()) for p in learner.parameters() if p.requires_grad) - summary["trainable_parameters"]
    assert frozen == summary["frozen_parameters"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name):
    learner, method = build(name, seed=0)
    train(learner, method, 5)
    replace_in_every_group(method, learner)
    train(learner, method, 5)
    replace_in_every_group(method, learner)
    train(learner, method, 3)
    _, fresh_method = assert_restores_exactly(learner, method, lambda: build(name, seed=1))
    assert fresh_method.detect() == method.detect()


def test_frozen_neurons_are_left_out_of_the_metrics():
    learner, method = build("qmix")
    group = learner.neuron_groups()[0]
    method.replace(group.name, torch.tensor([0]))
    group = learner.neuron_groups()[0]
    ema = torch.arange(1.0, group.width + 1.0)
    ema[0] = ema[-1] = 0.0  # the two frozen neurons (knowledge 0, compensation last)
    scores = neurons.stagnant_scores(ema, group.frozen)
    trainable_mean = ema[group.trainable].mean()
    assert torch.isinf(scores[group.frozen]).all()
    assert torch.allclose(scores[group.trainable], ema[group.trainable] / trainable_mean)
    activations = torch.rand(10, group.width)
    learner.update(after_backward=method.after_backward)
    snapshot = neurons.snapshot_group(group, activations, ema, neurons.Thresholds())
    assert snapshot.stagnant_ratio == 0.0  # frozen zeros are not counted as stagnant
    assert snapshot.update_ratio_mean == pytest.approx(float(trainable_mean))


def test_config_errors():
    with pytest.raises(ConfigError, match="matches no neuron group"):
        build("qmix", method_config={"groups": ["critic.*"]})
    with pytest.raises(ConfigError, match="max_replaced_fraction"):
        make_method("knife", {"max_replaced_fraction": 0.0})
    with pytest.raises(ConfigError, match="would never act"):
        make_method("knife", {"every_updates": 0, "at_task_start": False})
    learner = make_learner("qmix", INFO)
    with pytest.raises(ConfigError, match="announces task boundaries"):
        make_method("knife").attach(learner, MethodContext(2, False, 0))


def test_group_patterns_select_groups():
    learner, method = build("qplex", method_config={"groups": ["mixer.attention.*"]})
    assert [g.name for g in method.selected_groups()] == [
        g.name for g in learner.neuron_groups() if g.name.startswith("mixer.attention.")]


def test_selected_groups_follow_growth():
    """The matched groups are cached for the per-update tracker; after a replacement they must
    read the grown parameters, not the ones the growth swapped out."""
    learner, method = build("qmix")
    before = method.selected_groups()
    assert method.selected_groups() is before  # matched once
    replace_in_every_group(method, learner)
    after = method.selected_groups()
    current = learner.neuron_groups()
    assert [g.name for g in after] == [g.name for g in current]
    for cached, live in zip(after, current, strict=True):
        assert cached.incoming.weight is live.incoming.weight and cached.width == live.width
        assert all(c.weight is d.weight for c, d in zip(cached.consumers, live.consumers, strict=True))


def test_draws_are_seeded():
    learner, _ = build("qmix")
    group = learner.neuron_groups()[0]
    a = draw_composite(group, torch.tensor([1]), torch.Generator().manual_seed(3))
    b = draw_composite(group, torch.tensor([1]), torch.Generator().manual_seed(3))
    assert torch.equal(a.incoming, b.incoming) and torch.equal(a.outgoing[0], b.outgoing[0])
    assert a.incoming.abs().max() <= 1 / INFO_INPUT ** 0.5


INFO_INPUT = INFO.obs_dim + INFO.n_actions + INFO.n_agents


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_smoke_run_records_growth(name):
    record, _ = evaluate(RunSpec(scenario="matrix_drift", algo="knife", tier="smoke", learner=name,
                                 neuron_every_updates=8), out=None)
    summary = record["method_summary"]
    assert summary["parameters_final"] >= summary["parameters_initial"] > 0
    assert len(summary["replaced_per_task"]) == 6 and summary["replaced_per_task"][0] == 0
    for columns in record["neurons"]["groups"].values():
        assert 0.0 <= min(columns["stagnant_ratio"]) <= max(columns["stagnant_ratio"]) <= 1.0
