"""The plasticity probe (ctmarl.probe): it measures trainability and never changes a run."""

import pytest
import torch

from ctmarl import probe as probe_module
from ctmarl.learner import make_learner
from ctmarl.method import make_method
from ctmarl.protocol import Training, rollout
from ctmarl.scenario import make_scenario


def _run(scenario_name: str, algo: str, probe: bool, seed: int = 3):
    scenario = make_scenario(scenario_name)
    tier = scenario.tier("smoke")
    torch.manual_seed(seed)
    learner = make_learner("qmix", scenario.env_info("smoke"), dict(tier.learner), seed=seed)
    training = Training(scenario, "smoke", learner, make_method(algo), seed, neuron_every_updates=5, probe=probe)
    return training.train(), learner


@pytest.mark.parametrize("algo", ["none", "knife"])
def test_the_probe_leaves_a_runs_numbers_unchanged(algo):
    with_probe, learner_on = _run("matrix_drift", algo, probe=True)
    without, learner_off = _run("matrix_drift", algo, probe=False)
    assert with_probe.curves == without.curves
    assert with_probe.R == without.R
    assert with_probe.neurons == without.neurons
    assert with_probe.q_tot_mse == without.q_tot_mse
    for (name, a), (_, b) in zip(learner_on.state_dict().items(), learner_off.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert without.plasticity_probe is None
    result = with_probe.plasticity_probe
    assert set(result["per_task"]) == {"agent", "q_tot", "total"}
    assert len(result["per_task"]["total"]) == len(with_probe.task_names)
    assert set(result["fresh"]) == {"agent", "q_tot", "total"}


def _probe_setting(seed: int = 0):
    """A QMIX learner on predator-prey smoke and the probe's batch and targets."""
    scenario = make_scenario("predator_prey_penalty")
    task = scenario.tasks("smoke")[0]
    env = task.make_env(16, seed=seed)
    torch.manual_seed(seed)
    learner = make_learner("qmix", env.info, dict(scenario.tier("smoke").learner), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    batch = rollout(env, learner, 1.0, generator).batch
    return learner, batch, probe_module.RandomTargets(batch, seed)


def _linear_layers(learner):
    return [m for m in learner.modules() if isinstance(m, torch.nn.Linear)
            and not any(p is m.weight for p in learner.target_agent.parameters())
            and not any(p is m.weight for p in learner.target_mixer.parameters())]


def test_a_network_made_non_plastic_fits_the_targets_worse_than_a_fresh_one():
    settings = probe_module.ProbeSettings(steps=60)
    learner, batch, targets = _probe_setting()
    fresh = probe_module.probe(learner, batch, targets, settings)["total"]
    assert fresh > 0.3, "a fresh network removes a good share of the probe loss"

    scaled, _, _ = _probe_setting()
    with torch.no_grad():  # weights x100: Adam's steps are now tiny relative to the weights
        for layer in _linear_layers(scaled):
            layer.weight.mul_(100.0)
    assert probe_module.probe(scaled, batch, targets, settings)["total"] < 0.5 * fresh

    dead, _, _ = _probe_setting()
    with torch.no_grad():  # most ReLUs dead: every hidden unit's bias far below its input range
        for group in dead.neuron_groups():
            group.incoming.bias.fill_(-100.0)
    assert probe_module.probe(dead, batch, targets, settings)["total"] < 0.5 * fresh


def test_the_probe_restores_the_learner_exactly():
    learner, batch, targets = _probe_setting()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    optimizer_state = learner.optimizer.state_dict()
    share = probe_module.probe(learner, batch, targets, probe_module.ProbeSettings(steps=5))
    assert 0.0 < share["total"] <= 1.0
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert learner.optimizer.state_dict() == optimizer_state
    assert all(p.grad is None for p in learner.parameters())


def test_the_fresh_reference_does_not_touch_torchs_global_generator():
    learner, batch, targets = _probe_setting()
    state = torch.get_rng_state()
    probe_module.fresh_probe(learner, batch, targets, seed=5, settings=probe_module.ProbeSettings(steps=3))
    assert torch.equal(torch.get_rng_state(), state)


def test_targets_are_a_fixed_function_of_the_inputs():
    _, batch, targets = _probe_setting()
    agent, mixer = targets(batch)
    assert agent.shape == batch.avail_actions[:, :-1].shape and mixer.shape == batch.reward.shape
    real = batch.mask.bool()
    for values in (agent[real].flatten(0, -2), mixer[real][:, None]):  # per output, over real steps
        assert values.mean(0).abs().max() < 1e-4
        assert values.var(0, unbiased=False).sub(1.0).abs().max() < 1e-3
    again = probe_module.RandomTargets(batch, 0)(batch)
    assert torch.equal(again[0], agent) and torch.equal(again[1], mixer)
