import itertools

import pytest
import torch

from ctmarl.envs.base import EnvInfo
from ctmarl.errors import ConfigError
from ctmarl.learner import EpisodeBatch, make_learner
from ctmarl.testing import random_episodes as _random_episodes
from ctmarl_baselines.qplex import BlockDiagonalLinear, DuplexMixer

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=3, episode_limit=6)


def random_episodes(episodes=4, seed=0, avail_prob=0.7):
    return _random_episodes(INFO, episodes, seed, avail_prob)


def mixer_inputs(mixer, m=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, a = mixer.n_agents, mixer.n_actions
    all_qs = torch.randn(m, 1, n, a, generator=g)
    actions = torch.randint(0, a, (m, 1, n), generator=g)
    chosen = all_qs.gather(-1, actions[..., None]).squeeze(-1)
    return chosen, torch.randn(m, 1, mixer.state_dim, generator=g), actions, all_qs.max(-1).values


def test_qplex_uses_the_duplex_mixer():
    assert isinstance(make_learner("qplex", INFO).mixer, DuplexMixer)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_joint_action_maximises_q_tot(seed):
    """IGM: per-agent argmaxes (over available actions) give the argmax of Q_tot over all
    available joint actions, for random networks, observations, states and masks."""
    torch.manual_seed(seed)
    learner = make_learner("qplex", INFO, seed=seed)
    one = random_episodes(episodes=1, seed=seed, avail_prob=0.6)
    avail = one.avail_actions[0, 0]  # [N, A]
    joint = torch.tensor([c for c in itertools.product(range(INFO.n_actions), repeat=INFO.n_agents)
                          if all(avail[i, c[i]] for i in range(INFO.n_agents))])
    count = joint.shape[0]
    batch = EpisodeBatch(*(x[:, :1].expand(count, *[-1] * (x.dim() - 1)) for x in one))  # step 0
    q_tot = learner.joint_q(batch, joint)
    q_agents = learner.unroll(learner.agent, batch)[0, 0].masked_fill(~avail, -torch.inf)
    greedy = q_agents.argmax(-1)
    assert torch.equal(joint[q_tot.argmax()], greedy)
    assert (q_tot < q_tot.max()).sum() == count - 1  # the maximum is strict


@pytest.mark.parametrize("is_minus_one", [True, False])
def test_mixer_value_matches_the_formula(is_minus_one):
    torch.manual_seed(0)
    mixer = DuplexMixer(n_agents=3, n_actions=4, state_dim=7, is_minus_one=is_minus_one)
    chosen, states, actions, max_qs = mixer_inputs(mixer)
    s = states[:, 0]
    w = mixer.transform_w(s).abs() + 1e-10
    b = mixer.transform_b(s)
    lam = mixer.attention(s, torch.nn.functional.one_hot(actions[:, 0], 4).flatten(1).float())
    v_prime, a_prime = w * max_qs[:, 0] + b, w * (chosen[:, 0] - max_qs[:, 0])
    weight = lam if is_minus_one else 1.0 + lam
    expected = v_prime.sum(-1) + (weight * a_prime).sum(-1)
    assert (lam > 0).all()
    assert torch.allclose(mixer(chosen, states, actions, max_qs)[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_agents_receive_w_with_the_stop_gradient_and_lambda_w_without(stop_gradient):
    """∂Q_tot/∂Q_i = w_i(s) with the stop-gradient (PyMARL2), λ_i w_i without it."""
    torch.manual_seed(0)
    mixer = DuplexMixer(n_agents=3, n_actions=4, state_dim=7, stop_gradient_advantage=stop_gradient)
    chosen, states, actions, max_qs = mixer_inputs(mixer)
    chosen.requires_grad_(True)
    (grad,) = torch.autograd.grad(mixer(chosen, states, actions, max_qs).sum(), chosen)
    with torch.no_grad():
        s = states[:, 0]
        w = mixer.transform_w(s).abs() + 1e-10
        lam = mixer.attention(s, torch.nn.functional.one_hot(actions[:, 0], 4).flatten(1).float())
    assert torch.allclose(grad[:, 0], w if stop_gradient else lam * w, atol=1e-5)


def test_block_diagonal_linear_equals_independent_kernels():
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(kernels=3, in_per_kernel=4, out_per_kernel=2)
    x = torch.randn(5, 12)
    y = layer(x)
    for k in range(3):
        block = layer.weight[2 * k:2 * k + 2, 4 * k:4 * k + 4]
        assert torch.allclose(y[:, 2 * k:2 * k + 2], x[:, 4 * k:4 * k + 4] @ block.T + layer.bias[2 * k:2 * k + 2])
    assert torch.equal(layer.weight * (1 - layer.block_mask), torch.zeros_like(layer.weight))
    y.pow(2).sum().backward()
    assert torch.equal(layer.weight.grad * (1 - layer.block_mask), torch.zeros_like(layer.weight))
    assert layer.weight.abs().max() <= 0.5  # nn.Linear's init bound for a fan-in of 4


@pytest.mark.parametrize("layers, expected", [
    (2, ["agent.fc1", "mixer.transform_w.0", "mixer.transform_b.0", "mixer.attention.key.0",
         "mixer.attention.agents.0", "mixer.attention.action.0"]),
    (3, ["agent.fc1", "mixer.transform_w.0", "mixer.transform_b.0", "mixer.attention.key.0",
         "mixer.attention.key.2", "mixer.attention.agents.0", "mixer.attention.agents.2",
         "mixer.attention.action.0", "mixer.attention.action.2"]),
])
def test_neuron_groups_have_consistent_shapes_and_unique_names(layers, expected):
    learner = make_learner("qplex", INFO, {"adv_hypernet_layers": layers})
    groups = learner.neuron_groups()
    assert [g.name for g in groups] == expected
    modules = dict(learner.named_modules())
    for group in groups:
        group.check_shapes()
        assert modules[group.name] is group.incoming  # the name is the module path
        assert all(c.weight.shape[1] == group.incoming.out_features for c in group.consumers)
        assert group.part == ("agent" if group.name.startswith("agent") else "mixer")
    assert len({id(g.activation) for g in groups}) == len(groups)


def test_activation_hooks_see_exactly_their_layer():
    learner = make_learner("qplex", INFO)
    seen = {}
    handles = [g.activation.register_forward_hook(
        lambda module, args, out, name=g.name: seen.setdefault(name, []).append(out.shape[-1]))
        for g in learner.neuron_groups()]
    learner.loss(random_episodes())
    for handle in handles:
        handle.remove()
    widths = {g.name: g.width for g in learner.neuron_groups()}
    # Each activation runs once for the online networks (the target networks are copies).
    assert seen == {name: [width] for name, width in widths.items()}


def test_bad_qplex_override_names_key():
    with pytest.raises(ConfigError, match="num_kernels: must be >= 1"):
        make_learner("qplex", INFO, {"num_kernels": 0})
