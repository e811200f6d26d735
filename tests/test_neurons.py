"""Neuron scores on tiny layers with answers computed by hand (DESIGN.md §6)."""

import math

import pytest
import torch
from torch import nn

from ctmarl import neurons
from ctmarl.learner import Consumer, NeuronGroup


def test_dormant_scores_by_hand():
    h = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, -2.0]])
    # a = [0, 2, 2], mean 4/3 -> s = [0, 1.5, 1.5]
    assert neurons.dormant_scores(h).tolist() == pytest.approx([0.0, 1.5, 1.5])


def test_grama_scores_by_hand():
    weight_grad = torch.tensor([[1.0, -1.0], [0.0, 0.0], [2.0, 2.0]])
    bias_grad = torch.tensor([1.0, 0.0, 2.0])
    # g = [1, 0, 2] (mean over 3 entries each), mean 1 -> s = [1, 0, 2]
    assert neurons.grama_scores(weight_grad, bias_grad).tolist() == pytest.approx([1.0, 0.0, 2.0])


def test_update_ratios_by_hand():
    weight = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    bias = torch.tensor([4.0, 0.0])
    weight_grad = torch.tensor([[0.3, 0.4], [0.0, 0.0]])
    bias_grad = torch.tensor([0.0, 0.5])
    ratios = neurons.update_ratios(weight, bias, weight_grad, bias_grad)
    assert ratios.tolist() == pytest.approx([0.5 / (5 + 1e-8), 0.5 / (1 + 1e-8)])


def test_stagnant_scores_normalise_the_ema():
    assert neurons.stagnant_scores(torch.tensor([0.0, 1.0, 2.0])).tolist() == pytest.approx([0.0, 1.0, 2.0])


def test_effective_rank():
    assert neurons.effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert neurons.effective_rank(torch.ones(5, 3)) == pytest.approx(1.0)
    assert neurons.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)


def make_group():
    """3 neurons: 0 gets no gradient (stagnant), 1 never activates (dormant), 2 is normal."""
    incoming, relu, out = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    with torch.no_grad():
        incoming.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 1.0]]))
        incoming.bias.copy_(torch.tensor([0.0, -10.0, 0.0]))
        out.weight.copy_(torch.tensor([[0.0, 1.0, 1.0]]))  # neuron 0's output is not consumed
        out.bias.zero_()
    return NeuronGroup("toy", incoming, relu, (Consumer(out, "weight"),), "mixer"), out


def test_the_three_criteria_differ_on_a_built_case():
    group, out = make_group()
    monitor = neurons.NeuronMonitor(lambda: [group], interval=1)
    x = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.5, 0.5]])
    monitor.arm()
    loss = out(group.activation(group.incoming(x))).pow(2).sum()
    loss.backward()
    monitor.after_backward()
    snap = monitor.take()["toy"]
    ema = monitor.tracker.ema["toy"]
    # neuron 0: active but zero gradient -> stagnant and low-GraMa, not dormant
    # neuron 1: never active (relu of <= -10) -> dormant; its gradient is zero too
    # neuron 2: active with gradient -> none
    assert ema[0] == 0.0 and ema[1] == 0.0 and ema[2] > 0
    assert snap.stagnant_ratio == pytest.approx(2 / 3)
    assert snap.dormant_ratio == pytest.approx(1 / 3)
    assert snap.grama_ratio == pytest.approx(2 / 3)
    assert snap.stagnant_and_dormant == pytest.approx(1 / 3)
    assert snap.stagnant_and_grama == pytest.approx(2 / 3)
    assert snap.effective_rank >= 1.0
    assert monitor.take() is None, "a snapshot is taken once"


def test_stagnant_but_not_grama_low_when_weights_are_large():
    """Stagnation is relative to the weights: equal gradients, one neuron with huge weights."""
    weight = torch.tensor([[100.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    grad = torch.ones(3, 2)
    ratio = neurons.update_ratios(weight, None, grad, None)
    assert (neurons.stagnant_scores(ratio) <= 0.1).tolist() == [True, False, False]
    assert (neurons.grama_scores(grad, None) <= 0.1).tolist() == [False, False, False]


def test_ema_over_updates_and_restart_on_width_change():
    group, out = make_group()
    tracker = neurons.StagnationTracker(beta=0.9)
    group.incoming.weight.grad = torch.zeros(3, 2)
    group.incoming.bias.grad = torch.tensor([0.0, 0.0, 1.0])
    tracker.observe([group])
    first = tracker.ema["toy"].clone()
    group.incoming.bias.grad = torch.tensor([0.0, 0.0, 3.0])
    tracker.observe([group])
    row_norm = math.sqrt(0**2 + 1**2 + 0**2)
    expected = 0.9 * (1 / (row_norm + 1e-8)) + 0.1 * (3 / (row_norm + 1e-8))
    assert tracker.ema["toy"][2].item() == pytest.approx(expected)
    assert first[2].item() == pytest.approx(1 / (row_norm + 1e-8))


def test_alternative_thresholds_are_logged_from_the_same_scores():
    """Threshold sensitivity: a neuron scoring between 0.1 and 0.25 is stagnant at τ_s = 0.25 only,
    and one scoring between 0.025 and 0.1 is dormant at τ_d = 0.1 only."""
    incoming, relu, out = nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)
    group = NeuronGroup("toy", incoming, relu, (Consumer(out, "weight"),), "mixer")
    # activations a = [0.2, 0.05, 1.9, 1.85] (mean 1.0): dormant scores 0.2, 0.05, 1.9, 1.85
    activations = torch.tensor([[0.2, 0.05, 1.9, 1.85]])
    # stagnation EMA r = [0.2, 0.05, 1.9, 1.85] (mean 1.0): scores 0.2, 0.05, 1.9, 1.85
    ema = torch.tensor([0.2, 0.05, 1.9, 1.85])
    incoming.weight.grad = torch.ones_like(incoming.weight)
    incoming.bias.grad = torch.ones_like(incoming.bias)
    snap = neurons.snapshot_group(group, activations, ema, neurons.Thresholds())
    assert snap.stagnant_ratio == pytest.approx(1 / 4)  # 0.05 <= 0.1
    assert snap.stagnant_ratio_025 == pytest.approx(2 / 4)  # 0.2 and 0.05 <= 0.25
    assert snap.dormant_ratio == pytest.approx(1 / 4)  # 0.05 <= 0.1
    assert snap.dormant_ratio_0025 == pytest.approx(0.0)  # none <= 0.025
