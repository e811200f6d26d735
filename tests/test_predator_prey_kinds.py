"""Prey kinds in the ``predator_prey`` family (``prey_kinds``, ``paying_kind``, ``decoy_reward``) and
the ``predator_prey_drift`` scenario: exact rules on hand-built grids, the one-kind world unchanged,
fixed shapes across the scenario's tasks, and the PettingZoo view."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import ctmarl
from ctmarl.config import from_mapping
from ctmarl.envs.pettingzoo_view import ParallelEnvView
from ctmarl.envs.predator_prey import CATCH, STAY, PredatorPreyEnv, PredatorPreySettings
from ctmarl.errors import ConfigError

PUNISHMENT = -0.5
DECOY = -1.0


def make(grid=5, agents=3, prey=2, kinds=2, paying=0, decoy=DECOY, punishment=PUNISHMENT, limit=50,
         prey_moves=False, num_envs=1, seed=0):
    settings = PredatorPreySettings(grid_size=grid, n_agents=agents, n_prey=prey, episode_limit=limit,
                                    miscapture_punishment=punishment, prey_moves=prey_moves,
                                    prey_kinds=kinds, paying_kind=paying, decoy_reward=decoy)
    return PredatorPreyEnv(settings, num_envs, seed=seed)


def place(env, agents, prey, **kwargs):
    return env.reset_to([agents] * env.num_envs, [prey] * env.num_envs, **kwargs)


def step(env, *actions):
    return env.step(torch.tensor([list(actions)] * env.num_envs))


def random_available(avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(avail.shape, generator=generator).masked_fill(~avail, -1.0).argmax(-1)


# --- settings ------------------------------------------------------------------------------------
def test_kinds_split_the_prey_in_contiguous_blocks():
    assert make(prey=4, agents=2).prey_kind.tolist() == [0, 0, 1, 1]
    assert make(grid=6, prey=5, agents=2).prey_kind.tolist() == [0, 0, 0, 1, 1]
    assert make(grid=6, prey=5, agents=2, kinds=3).prey_kind.tolist() == [0, 0, 1, 1, 2]
    assert make(prey=3, agents=2, kinds=1, decoy=0.0).prey_kind.tolist() == [0, 0, 0]
    settings = make(grid=6, prey=5, agents=8, paying=1).settings
    assert (settings.paying_prey, settings.capturable_prey) == (2, 2)  # min(2 paying, 8 // 2)
    settings = make(grid=6, prey=5, agents=2, paying=0).settings
    assert (settings.paying_prey, settings.capturable_prey) == (3, 1)  # min(3 paying, 2 // 2)


@pytest.mark.parametrize("change, message", [
    ({"prey_kinds": 0}, "prey_kinds"),
    ({"prey_kinds": 3}, "prey_kinds"),  # more kinds than prey
    ({"prey_kinds": 2, "paying_kind": 2}, "paying_kind"),
    ({"prey_kinds": 2, "paying_kind": -1}, "paying_kind"),
    ({"prey_kinds": 2, "decoy_reward": 0.5}, "decoy_reward: must be <= 0"),
    ({"decoy_reward": -1.0}, "decoy_reward: has no effect with prey_kinds 1"),
])
def test_kind_settings_are_checked(change, message):
    data = {"grid_size": 5, "n_agents": 2, "n_prey": 2, "episode_limit": 10, "miscapture_punishment": 0.0}
    with pytest.raises(ConfigError, match=message):
        from_mapping(PredatorPreySettings, {**data, **change}, "test.yaml")
    from_mapping(PredatorPreySettings, {**data, "prey_kinds": 2, "paying_kind": 1, "decoy_reward": -3.0},
                 "test.yaml")


def test_sizes_depend_on_the_kinds_only():
    one = make(grid=10, agents=8, prey=8, kinds=1, decoy=0.0).info
    assert (one.obs_dim, one.state_dim) == (75, 48)
    two = [make(grid=10, agents=8, prey=8, paying=k, decoy=d).info for k in (0, 1) for d in (0.0, -2.0)]
    assert {(i.obs_dim, i.state_dim) for i in two} == {(100, 3 * 8 + 5 * 8)}
    three = make(grid=10, agents=8, prey=8, kinds=3).info
    assert (three.obs_dim, three.state_dim) == (125, 3 * 8 + 6 * 8)


def test_set_settings_blends_rewards_but_not_the_paying_kind():
    env = make()
    assert env.interpolable == ("miscapture_punishment", "capture_reward", "decoy_reward")
    env.set_settings(dataclasses.replace(env.settings, decoy_reward=-0.25, miscapture_punishment=-1.0))
    assert env.settings.decoy_reward == -0.25
    with pytest.raises(ValueError, match="set_settings may change only"):
        env.set_settings(dataclasses.replace(env.settings, paying_kind=1))


def test_record_notes_of_the_one_kind_world_are_unchanged():
    # the notes are part of every record's config_hash: existing records must keep theirs
    assert PredatorPreyEnv.notes_for(make(kinds=1, decoy=0.0).settings) == PredatorPreyEnv.record_notes
    assert "paying kind" in PredatorPreyEnv.notes_for(make().settings)


# --- observation and state -----------------------------------------------------------------------
def test_one_channel_per_kind():
    env = make(grid=5, agents=2, prey=2)  # prey 0 is kind 0, prey 1 kind 1
    first = place(env, [(2, 2), (4, 4)], [(2, 3), (0, 2)])
    view = first.obs[0, 0].view(5, 5, 4)  # agent 0 in the centre: the window is the whole grid
    expected = torch.zeros(5, 5, 4)
    expected[4, 4, 0] = 1  # agent 1 at offset (+2, +2)
    expected[2, 3, 1] = 1  # kind 0 at offset (0, +1)
    expected[0, 2, 2] = 1  # kind 1 at offset (-2, 0); nothing is outside the grid
    assert torch.equal(view, expected)
    corner = first.obs[0, 1].view(5, 5, 4)  # agent 1 in the bottom-right corner
    assert corner[:, :, 3].tolist() == [[0, 0, 0, 1, 1]] * 3 + [[1.0] * 5] * 2
    assert corner[0, 0, 0] == 1 and corner[0, 1, 1] == 1  # agent 0 at (-2, -2), kind 0 at (-2, -1)
    assert corner[:, :, 1:3].sum() == 1  # kind 1 is out of sight
    assert env.render_text() == "..1..\n.....\n..A0.\n.....\n....A"


def test_state_holds_each_prey_kind_while_alive():
    env = make(grid=5, agents=2, prey=2, paying=1)
    first = place(env, [(1, 2), (3, 2)], [(2, 2), (4, 4)])
    agents = [0.25, 0.5, 1, 0.75, 0.5, 1]
    assert first.state[0].tolist() == agents + [0.5, 0.5, 1, 1, 0] + [1, 1, 1, 0, 1]
    result = step(env, CATCH, CATCH)  # a decoy capture: its kind vanishes with it
    assert result.state[0].tolist() == [0.0] * 6 + [0.0] * 5 + [1, 1, 1, 0, 1]


# --- captures ------------------------------------------------------------------------------------
def test_capture_of_the_paying_kind_pays_and_counts():
    env = make(grid=5, agents=3, prey=2, paying=0)
    place(env, [(1, 2), (2, 1), (0, 0)], [(2, 2), (4, 4)])
    result = step(env, CATCH, CATCH, STAY)
    assert result.reward.tolist() == [10.0]
    assert env.prey_alive[0].tolist() == [False, True]
    assert env.agent_active[0].tolist() == [False, False, True]
    assert result.score.tolist() == [1.0]  # capturable = min(1 paying prey, 3 // 2)
    assert result.terminated.tolist() == [True]  # every paying prey is captured; the decoy is left


def test_capture_of_a_decoy_costs_its_catchers_and_does_not_count():
    env = make(grid=5, agents=3, prey=2, paying=1)
    place(env, [(1, 2), (2, 1), (0, 0)], [(2, 2), (4, 4)])
    result = step(env, CATCH, CATCH, STAY)
    assert result.reward.tolist() == [DECOY]
    assert env.prey_alive[0].tolist() == [False, True]  # removed like a real capture
    assert env.agent_active[0].tolist() == [False, False, True]  # its catchers are frozen
    assert result.score.tolist() == [0.0]
    assert result.terminated.tolist() == [False] and result.obs[0, :2].abs().sum() == 0
    assert result.avail_actions[0, :2].tolist() == [[False] * 4 + [True, False]] * 2


def test_a_decoy_capture_with_zero_decoy_reward_still_freezes():
    env = make(grid=5, agents=2, prey=2, paying=1, decoy=0.0)
    place(env, [(1, 2), (2, 1)], [(2, 2), (4, 4)])
    result = step(env, CATCH, CATCH)
    assert result.reward.tolist() == [0.0] and result.score.tolist() == [0.0]
    assert result.terminated.tolist() == [True]  # every agent is frozen: the paying prey is out of reach


def test_a_lone_catch_of_a_decoy_is_a_miscapture():
    env = make(grid=5, agents=2, prey=2, paying=0)
    place(env, [(3, 4), (0, 0)], [(2, 2), (4, 4)])  # agent 0 is next to the decoy only
    result = step(env, CATCH, STAY)
    assert result.reward.tolist() == [PUNISHMENT]
    assert env.prey_alive[0].all() and env.agent_active[0].all() and result.score.tolist() == [0.0]


def test_paying_capture_decoy_capture_and_miscapture_in_one_step():
    env = make(grid=7, agents=5, prey=4, paying=0)  # kinds 0, 0, 1, 1
    place(env, [(0, 1), (1, 0), (4, 5), (5, 4), (3, 4)], [(1, 1), (3, 3), (5, 5), (6, 0)])
    result = step(env, *[CATCH] * 5)  # a pair on prey 0, a pair on decoy 2, a lone catch of prey 1
    assert result.reward.tolist() == [10.0 + DECOY + PUNISHMENT]
    assert env.prey_alive[0].tolist() == [False, True, False, True]
    assert env.agent_active[0].tolist() == [False, False, False, False, True]
    assert result.score.tolist() == [0.5]  # 1 of min(2 paying, 5 // 2)
    assert result.terminated.tolist() == [False]


# --- the one-kind world is unchanged; kinds change only rewards, score, end and channels ---------
def _trace_digest(settings_class, env_class) -> str:
    digest = hashlib.sha256()
    for grid, agents, prey, limit, punishment in ((10, 8, 8, 40, -1.5), (5, 2, 2, 20, 0.0)):
        settings = settings_class(grid_size=grid, n_agents=agents, n_prey=prey, episode_limit=limit,
                                  miscapture_punishment=punishment)
        env = env_class(settings, 8, seed=7)
        generator = torch.Generator().manual_seed(1)
        observation = env.reset()
        for t in range(2 * limit):
            actions = random_available(observation.avail_actions, generator)
            observation = env.step(actions)
            for value in observation:
                digest.update(value.numpy().tobytes())
            if t == limit:
                observation = env.reset()
    return digest.hexdigest()


def test_the_one_kind_world_replays_bit_for_bit():
    # Computed with ctmarl/envs/predator_prey.py as it was before prey kinds were added.
    assert _trace_digest(PredatorPreySettings, PredatorPreyEnv) == (
        "bd9639a0db9a5f848d5b5093509c7228c990f7e7508b19a42fe9e300e37c0f0f")


def test_kinds_change_no_movement_and_refine_the_prey_channel():
    one = make(grid=7, agents=4, prey=4, kinds=1, decoy=0.0, limit=40, prey_moves=True, num_envs=16)
    two = make(grid=7, agents=4, prey=4, paying=1, limit=40, prey_moves=True, num_envs=16)
    first_one, first_two = one.reset(seed=3), two.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    decoys = 0
    for _ in range(40):
        # the kind channels sum to the one-kind prey channel; the state adds each prey's kind
        view = first_two.obs.view(16, 4, -1, 4)
        merged = torch.stack([view[..., 0], view[..., 1] + view[..., 2], view[..., 3]], -1)
        assert torch.equal(merged.view(16, 4, -1), first_one.obs)
        prey_state = first_two.state[:, 12:].view(16, 4, 5)
        assert torch.equal(torch.cat([first_two.state[:, :12], prey_state[..., :3].reshape(16, -1)], 1),
                           first_one.state)
        assert torch.equal(prey_state[..., 3:], torch.eye(2)[two.prey_kind] * one.prey_alive[..., None])
        assert torch.equal(first_two.avail_actions, first_one.avail_actions)
        alive_before = two.prey_alive.clone()
        actions = random_available(first_one.avail_actions, generator)
        actions[first_one.avail_actions[..., CATCH]] = CATCH  # catch whenever possible: many captures
        first_one, first_two = one.step(actions), two.step(actions)
        assert torch.equal(one.cell, two.cell) and torch.equal(one.present, two.present)
        newly = alive_before & ~two.prey_alive
        decoy_captures = (newly & (two.prey_kind != 1)).sum(1)
        decoys += int(decoy_captures.sum())
        assert torch.allclose(first_two.reward, first_one.reward + (DECOY - 10.0) * decoy_captures)
        paying = (~two.prey_alive & (two.prey_kind == 1)).sum(1)
        assert torch.equal(first_two.score, paying.float() / 2)
    assert decoys > 0  # random play did capture decoys


# --- the scenario --------------------------------------------------------------------------------
DRIFT_VERSIONS = {
    # id: (tasks per pass, passes, names of the first pass, paying kinds, punishments)
    "predator_prey_drift-v1": (6, 4, ["A0", "B0", "A-0.25", "B-0.25", "A-0.5", "B-0.5"], [0, 1, 0, 1, 0, 1],
                               [0.0, 0.0, -0.25, -0.25, -0.5, -0.5]),
    "predator_prey_drift-v2": (4, 5, ["A0", "B0", "A-0.1", "B-0.1"], [0, 1, 0, 1], [0.0, 0.0, -0.1, -0.1]),
    "predator_prey_drift-v3": (4, 4, ["A0", "B0", "A-0.1", "B-0.1"], [0, 1, 0, 1], [0.0, 0.0, -0.1, -0.1]),
    "predator_prey_drift-v4": (4, 4, ["A0", "B0", "A-0.1", "B-0.1"], [0, 1, 0, 1], [0.0, 0.0, -0.1, -0.1]),
    "predator_prey_drift_long-v1": (4, 6, ["A0", "B0", "A-0.1", "B-0.1"], [0, 1, 0, 1], [0.0, 0.0, -0.1, -0.1]),
}


@pytest.mark.parametrize("tier", ["smoke", "quick", "standard"])
@pytest.mark.parametrize("scenario_id", sorted(DRIFT_VERSIONS))
def test_drift_scenario_shapes_are_fixed_across_tasks(scenario_id, tier):
    per_pass, passes, names, kinds, punishments = DRIFT_VERSIONS[scenario_id]
    scenario = ctmarl.make_scenario(scenario_id)
    tasks = scenario.tasks(tier)
    assert len(tasks) == per_pass * passes and scenario.protocol.repeat == passes
    assert [t.name for t in tasks[:per_pass + 1]] == names + ["A0#2"]
    assert [t.settings.paying_kind for t in tasks[:per_pass]] == kinds
    assert [t.settings.miscapture_punishment for t in tasks[:per_pass]] == punishments
    assert [t.definition for t in tasks] == list(range(per_pass)) * passes
    # every visit of a task is the same task: settings equal pass after pass
    assert all(t.settings == tasks[t.definition].settings for t in tasks)
    # consecutive tasks always switch the paying kind (the drift that forces new learning)
    assert all(a.settings.paying_kind != b.settings.paying_kind for a, b in zip(tasks, tasks[1:]))
    assert {(t.settings.prey_kinds, t.settings.decoy_reward) for t in tasks} == {(2, -1.0)}
    shapes = set()
    for task in tasks[:per_pass]:
        env = task.make_env(2)
        first = env.reset(seed=0)
        shapes.add((env.info, tuple(first.obs.shape), tuple(first.state.shape), tuple(first.avail_actions.shape)))
    assert len(shapes) == 1
    info = next(iter(shapes))[0]
    assert info.obs_dim == 100 and info.state_dim == 3 * info.n_agents + 5 * tasks[0].settings.n_prey


@pytest.mark.parametrize("scenario_id", ["predator_prey_drift-v2", "predator_prey_drift-v3", "predator_prey_drift-v4"])
def test_drift_quick_world(scenario_id):
    """v2's, v3's and v4's quick world: one pair, two prey of each kind, so the capturable paying prey is one."""
    settings = ctmarl.make_scenario(scenario_id).tasks("quick")[0].settings
    assert (settings.grid_size, settings.n_agents, settings.n_prey, settings.episode_limit) == (6, 2, 4, 40)
    assert settings.paying_prey == 2 and settings.capturable_prey == 1


def test_the_long_track_is_v4_visited_six_times():
    """predator_prey_drift_long changes only what its header says: six passes (24 visits) instead of
    four; the env, the tasks, the replay emptied at every switch and every tier are v4's."""
    v4, long = ctmarl.make_scenario("predator_prey_drift-v4"), ctmarl.make_scenario("predator_prey_drift_long")
    assert long.id == "predator_prey_drift_long-v1"
    assert (long.spec.env, long.spec.tasks, long.spec.tiers) == (v4.spec.env, v4.spec.tasks, v4.spec.tiers)
    assert long.spec.protocol == dataclasses.replace(v4.spec.protocol, repeat=6)
    assert long.spec.protocol.clear_replay
    for tier in ("smoke", "quick", "standard"):
        assert [t.settings for t in long.tasks(tier)[:16]] == [t.settings for t in v4.tasks(tier)]
    assert len(long.tasks("quick")) == 24 and long.tasks("quick")[-1].name == "B-0.1#6"


def test_drift_v3_is_v2_with_a_longer_exploration():
    """v3 changes only what its header says: the quick tier's epsilon schedule and steps per visit,
    and four passes instead of five; the env, the tasks and every other setting are v2's."""
    v2, v3 = (ctmarl.make_scenario(f"predator_prey_drift-v{v}").spec for v in (2, 3))
    assert (v3.env, v3.tasks, v3.tiers.smoke, v3.tiers.standard) == (v2.env, v2.tasks, v2.tiers.smoke, v2.tiers.standard)
    assert v3.protocol == dataclasses.replace(v2.protocol, repeat=4)
    q2, q3 = v2.tiers.quick, v3.tiers.quick
    assert (q2.env_steps_per_task, q3.env_steps_per_task) == (40_000, 60_000)
    assert (q2.learner["epsilon_anneal_steps"], q3.learner["epsilon_anneal_steps"]) == (10_000, 25_000)
    assert dict(q3.learner, epsilon_anneal_steps=0) == dict(q2.learner, epsilon_anneal_steps=0)
    assert (q3.num_envs, q3.env) == (q2.num_envs, q2.env)


def _drift_view(task_index=1, scenario_id="predator_prey_drift-v1"):
    task = ctmarl.make_scenario(scenario_id).tasks("quick")[task_index]
    return lambda seed: task.make_env(1, seed=seed)


def test_drift_pettingzoo_parallel_api():
    view = ParallelEnvView(_drift_view())
    parallel_api_test(view, num_cycles=100)
    obs, infos = view.reset(seed=1)
    assert view.state().shape == (32,) and obs["agent_0"].shape == (100,)


def test_drift_pettingzoo_parallel_seed():
    parallel_seed_test(lambda: ParallelEnvView(_drift_view(2)), num_cycles=100)


def test_drift_v2_pettingzoo_parallel_api():
    view = ParallelEnvView(_drift_view(3, "predator_prey_drift-v2"))  # B-0.1: kind B pays, p = -0.1
    parallel_api_test(view, num_cycles=100)
    obs, infos = view.reset(seed=1)
    assert view.state().shape == (3 * 2 + 5 * 4,) and obs["agent_0"].shape == (100,)
    assert sorted(obs) == ["agent_0", "agent_1"]


def test_drift_v2_pettingzoo_parallel_seed():
    parallel_seed_test(lambda: ParallelEnvView(_drift_view(2, "predator_prey_drift-v2")), num_cycles=100)


def test_drift_v4_is_v3_with_the_replay_cleared_at_task_starts():
    """v4 changes only ``protocol.clear_replay`` (its header: v3's replay held a whole visit of the
    previous task's transitions); the env, tasks, tiers and the rest of the protocol are v3's."""
    v3, v4 = (ctmarl.make_scenario(f"predator_prey_drift-v{v}").spec for v in (3, 4))
    assert ctmarl.make_scenario("predator_prey_drift").version == 4  # the bare name is the newest
    assert (v4.env, v4.tasks, v4.tiers) == (v3.env, v3.tasks, v3.tiers)
    assert (v3.protocol.clear_replay, v4.protocol.clear_replay) == (False, True)
    assert v4.protocol == dataclasses.replace(v3.protocol, clear_replay=True)
