import pytest
import torch

from ctmarl.envs.base import EnvInfo
from ctmarl.learner import make_learner
from ctmarl.testing import random_episodes
from ctmarl_baselines.learner import td_lambda_targets
from ctmarl_baselines.networks import QMixer
from ctmarl_baselines.replay import EpisodeReplay

INFO = EnvInfo(n_agents=3, obs_dim=5, state_dim=7, n_actions=4, episode_limit=6)


def test_qmix_is_monotonic_in_every_agent_q():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=7)
    qs = torch.randn(64, 1, 3, requires_grad=True)
    q_tot = mixer(qs, torch.randn(64, 1, 7))
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert (grad >= 0).all()


def test_fused_unroll_equals_step_by_step_acting():
    """Training unrolls the GRU over whole episodes; acting feeds one step at a time."""
    torch.manual_seed(0)
    learner = make_learner("qmix", INFO)
    batch = random_episodes(INFO)
    fused = learner.unroll(learner.agent, batch)  # [B, T+1, N, A]
    e, n = batch.obs.shape[0], INFO.n_agents
    hidden = learner.initial_hidden(e)
    last = torch.full((e, n), -1)
    for t in range(INFO.episode_limit + 1):
        inputs = learner.agent_inputs(batch.obs[:, t], last).reshape(e * n, 1, -1)
        q, hidden = learner.agent(inputs, hidden)
        assert torch.allclose(q.view(e, n, -1), fused[:, t], atol=1e-5)
        if t < INFO.episode_limit:
            last = batch.actions[:, t]


def test_td_lambda_targets_by_hand():
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    terminated = torch.tensor([[False, False, True]])
    next_q = torch.tensor([[10.0, 20.0, 30.0]])
    gamma, lam = 0.5, 0.5
    one_step = td_lambda_targets(reward, terminated, next_q, gamma, 0.0)
    assert one_step.tolist() == [[1 + 0.5 * 10, 2 + 0.5 * 20, 3.0]]
    g2 = 3.0
    g1 = 2 + gamma * ((1 - lam) * 20 + lam * g2)
    g0 = 1 + gamma * ((1 - lam) * 10 + lam * g1)
    assert td_lambda_targets(reward, terminated, next_q, gamma, lam).tolist() == [[g0, g1, g2]]


def test_qmix_neuron_group_names():
    learner = make_learner("qmix", INFO)
    groups = learner.neuron_groups()
    names = [g.name for g in groups]
    assert names == ["agent.fc1", "mixer.hyper_w1.0", "mixer.hyper_w_final.0", "mixer.V.0"]


def test_epsilon_schedule():
    learner = make_learner("qmix", INFO, {"epsilon_anneal_steps": 100})
    assert learner.epsilon(0) == 1.0
    assert learner.epsilon(50) == pytest.approx(0.525)
    assert learner.epsilon(1000) == pytest.approx(0.05)


def test_greedy_actions_respect_masks():
    learner = make_learner("qmix", INFO)
    g = torch.Generator().manual_seed(0)
    avail = torch.zeros(16, 3, 4, dtype=torch.bool)
    avail[..., 2] = True
    for epsilon in (0.0, 1.0):
        actions, _ = learner.act(torch.randn(16, 3, 5), avail, torch.full((16, 3), -1),
                                 learner.initial_hidden(16), epsilon, g)
        assert (actions == 2).all()


def test_replay_is_fifo_and_cuts_to_longest_episode():
    replay = EpisodeReplay(capacity=6, device=torch.device("cpu"))
    for seed in range(3):
        replay.add(random_episodes(INFO, 4, seed))
    assert len(replay) == 6 and replay.cursor == 0
    # the last 6 episodes added (2 from seed 1, 4 from seed 2) are what remains
    kept = torch.cat([random_episodes(INFO, 4, 1).obs[2:], random_episodes(INFO, 4, 2).obs])
    assert {tuple(x.flatten()[:3].tolist()) for x in replay.storage.obs} == \
           {tuple(x.flatten()[:3].tolist()) for x in kept}
    sample = replay.sample(6, torch.Generator().manual_seed(0))
    longest = int(sample.mask.sum(1).max())
    assert sample.reward.shape[1] == longest and sample.obs.shape[1] == longest + 1


def test_bad_learner_override_names_key():
    from ctmarl.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        make_learner("qmix", INFO, {"batchsize": 3})
    with pytest.raises(ConfigError, match="optimizer: must be one of adam, rmsprop"):
        make_learner("qmix", INFO, {"optimizer": "sgd"})
