"""The ``predator_prey`` env family: exact rules on hand-built grids, a reference check under random
play, batched == single-copy equivalence, the PettingZoo view, and the scenario's fixed shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import ctmarl
from ctmarl.config import from_mapping
from ctmarl.envs.pettingzoo_view import ParallelEnvView
from ctmarl.envs.predator_prey import (
    CATCH, DOWN, LEFT, RIGHT, STAY, UP, PredatorPreyEnv, PredatorPreySettings,
)
from ctmarl.errors import ConfigError
from ctmarl.registry import ENVS

PUNISHMENT = -1.5


def make(grid=5, agents=2, prey=1, limit=50, punishment=PUNISHMENT, prey_moves=False, num_envs=1, seed=0):
    settings = PredatorPreySettings(grid_size=grid, n_agents=agents, n_prey=prey, episode_limit=limit,
                                    miscapture_punishment=punishment, prey_moves=prey_moves)
    return PredatorPreyEnv(settings, num_envs, seed=seed)


def place(env, agents, prey, **kwargs):
    """One copy (or the same layout in every copy) from lists of (row, col)."""
    e = env.num_envs
    return env.reset_to([agents] * e, [prey] * e, **kwargs)


def step(env, *actions):
    return env.step(torch.tensor([list(actions)] * env.num_envs))


def positions(env, copy=0):
    return env.agent_positions[copy].tolist(), env.prey_positions[copy].tolist()


def random_available(avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(avail.shape, generator=generator).masked_fill(~avail, -1.0).argmax(-1)


# --- settings and sizes --------------------------------------------------------------------------
def test_registered_and_sizes():
    assert ENVS.load("predator_prey") is PredatorPreyEnv
    env = make(grid=10, agents=8, prey=8, limit=200)
    info = env.info
    assert (info.n_agents, info.obs_dim, info.state_dim, info.n_actions, info.episode_limit) == (8, 75, 48, 6, 200)
    first = env.reset(seed=0)
    assert first.obs.shape == (1, 8, 75) and first.obs.dtype == torch.float32
    assert first.state.shape == (1, 48) and first.avail_actions.shape == (1, 8, 6)
    assert first.avail_actions.dtype == torch.bool


@pytest.mark.parametrize("change, message", [
    ({"miscapture_punishment": 0.5}, "miscapture_punishment"),
    ({"n_agents": 20, "n_prey": 10}, "must fit"),
    ({"catchers_required": 3}, "catchers_required"),
    ({"sight_range": -1}, "sight_range"),
    ({"episode_limit": 0}, "episode_limit"),
])
def test_settings_ranges_are_checked(change, message):
    data = {"grid_size": 5, "n_agents": 2, "n_prey": 2, "episode_limit": 10, "miscapture_punishment": 0.0}
    with pytest.raises(ConfigError, match=message):
        from_mapping(PredatorPreySettings, {**data, **change}, "test.yaml")
    with pytest.raises(ConfigError, match="unknown key 'penalty'"):
        from_mapping(PredatorPreySettings, {**data, "penalty": -1}, "test.yaml")


def test_reset_to_rejects_overlaps():
    env = make(agents=2, prey=1)
    with pytest.raises(ValueError, match="distinct"):
        place(env, [(1, 1), (1, 1)], [(3, 3)])
    # a captured prey may share a cell with an agent
    place(env, [(1, 1), (2, 2)], [(1, 1)], prey_alive=[[False]])


# --- observation, state and masks on a hand-built grid -------------------------------------------
def test_observation_window_state_and_masks():
    env = make(grid=5, agents=2, prey=1)
    first = place(env, [(0, 0), (1, 2)], [(2, 0)])
    view = first.obs[0, 0].view(5, 5, 3)  # agent 0 at the top-left corner: window rows/cols -2..2
    assert view[:, :, 2].tolist() == [[1.0] * 5] * 2 + [[1, 1, 0, 0, 0]] * 3  # outside the grid
    others = torch.zeros(5, 5)
    others[3, 4] = 1  # agent 1 at offset (+1, +2); the agent itself is not shown
    assert torch.equal(view[:, :, 0], others)
    prey = torch.zeros(5, 5)
    prey[4, 2] = 1  # prey at offset (+2, 0)
    assert torch.equal(view[:, :, 1], prey)
    # agent 1 sees agent 0 at (-1, -2) and the prey at (+1, -2)
    view1 = first.obs[0, 1].view(5, 5, 3)
    assert view1[1, 0, 0] == 1 and view1[3, 0, 1] == 1 and view1[:, :, :2].sum() == 2
    # state: per agent then prey (row/(G-1), col/(G-1), present)
    assert first.state[0].tolist() == [0, 0, 1, 0.25, 0.5, 1, 0.5, 0, 1]
    # masks: agent 0 in the corner cannot go up or left; no prey is next to either agent
    assert first.avail_actions[0, 0].tolist() == [True, True, False, False, True, False]
    assert first.avail_actions[0, 1].tolist() == [True, True, True, True, True, False]


def test_catch_is_available_only_next_to_a_prey():
    env = make(grid=5, agents=3, prey=1)
    first = place(env, [(1, 2), (1, 1), (4, 4)], [(2, 2)])  # agent 1 is diagonal to the prey
    assert first.avail_actions[0, :, CATCH].tolist() == [True, False, False]


# --- captures and the miscapture punishment ------------------------------------------------------
def test_two_catchers_capture_and_are_frozen():
    env = make(grid=5, agents=3, prey=2)
    place(env, [(1, 2), (2, 1), (0, 0)], [(2, 2), (4, 4)])
    result = step(env, CATCH, CATCH, STAY)
    assert result.reward.tolist() == [10.0]
    assert env.prey_alive[0].tolist() == [False, True]
    assert env.agent_active[0].tolist() == [False, False, True]
    assert not result.terminated[0] and not result.truncated[0]
    assert result.score.tolist() == [1.0]  # capturable = min(2 prey, 3 agents // 2) = 1
    # frozen agents observe nothing, may only stay, vanish from the state and from others' views
    assert result.obs[0, :2].abs().sum() == 0
    assert result.avail_actions[0, :2].tolist() == [[False] * 4 + [True, False]] * 2
    assert result.state[0, :6].tolist() == [0.0] * 6 and result.state[0, 9:12].tolist() == [0.0] * 3
    assert result.obs[0, 2].view(5, 5, 3)[:, :, 0].sum() == 0


def test_frozen_agents_ignore_actions_and_do_not_block():
    env = make(grid=5, agents=3, prey=2)
    place(env, [(1, 2), (2, 1), (0, 2)], [(2, 2), (4, 4)])
    step(env, CATCH, CATCH, STAY)
    step(env, RIGHT, UP, DOWN)  # agent 2 walks into the cell of frozen agent 0
    agents, _ = positions(env)
    assert agents == [[1, 2], [2, 1], [1, 2]]
    assert env.agent_active[0].tolist() == [False, False, True]


def test_one_catcher_is_punished_once_per_prey():
    env = make(grid=5, agents=2, prey=2)
    place(env, [(2, 3), (0, 0)], [(2, 2), (2, 4)])  # agent 0 is next to both prey
    result = step(env, STAY, STAY)
    assert result.reward.tolist() == [0.0]
    result = step(env, CATCH, STAY)
    assert result.reward.tolist() == [2 * PUNISHMENT]
    assert env.prey_alive[0].all() and env.agent_active[0].all()


def test_prey_are_resolved_one_at_a_time_in_random_order():
    env = make(grid=5, agents=3, prey=2, num_envs=64)
    place(env, [(2, 3), (1, 2), (4, 0)], [(2, 2), (2, 4)])
    result = step(env, CATCH, CATCH, STAY)
    # prey 0 has two catchers (agents 0, 1). Agent 0 also touches prey 1: if prey 1 comes first it
    # is a lone catch (punished); if prey 0 comes first, agent 0 is already frozen.
    assert set(result.reward.tolist()) == {10.0, 10.0 + PUNISHMENT}
    assert env.prey_alive.tolist() == [[False, True]] * 64
    assert env.agent_active.tolist() == [[False, False, True]] * 64


def test_an_agent_takes_part_in_one_capture_only():
    # W p0 X p1 Y p2 Z in one row, all catching: in the original's sequential rule at most two
    # prey can be captured, whatever the order (a shared catcher is frozen by its first capture).
    env = make(grid=7, agents=4, prey=3, punishment=-1.0, num_envs=128)
    place(env, [(3, 0), (3, 2), (3, 4), (3, 6)], [(3, 1), (3, 3), (3, 5)])
    result = step(env, CATCH, CATCH, CATCH, CATCH)
    outcomes = set(zip(result.reward.tolist(), (~env.prey_alive).sum(1).tolist()))
    # first p1: 1 capture + 2 lone catches; first p0 or p2: 2 captures, + 1 lone catch when the
    # middle prey comes before the other end
    assert outcomes == {(8.0, 1), (19.0, 2), (20.0, 2)}
    assert (result.score <= 1.0).all()

def test_zero_punishment_and_three_catchers():
    env = make(grid=5, agents=4, prey=1, punishment=0.0)
    place(env, [(1, 2), (2, 1), (3, 2), (0, 0)], [(2, 2)])
    assert step(env, CATCH, STAY, STAY, STAY).reward.tolist() == [0.0]
    result = step(env, CATCH, CATCH, CATCH, STAY)
    assert result.reward.tolist() == [10.0]
    assert env.agent_active[0].tolist() == [False, False, False, True]
    assert result.terminated.tolist() == [True]  # every prey captured


def test_two_pairs_capture_two_prey():
    env = make(grid=6, agents=4, prey=2)
    place(env, [(0, 1), (1, 0), (4, 5), (5, 4)], [(0, 0), (5, 5)])
    result = step(env, CATCH, CATCH, CATCH, CATCH)
    assert result.reward.tolist() == [20.0] and result.score.tolist() == [1.0]
    assert result.terminated.tolist() == [True]


# --- movement and collisions ---------------------------------------------------------------------
def test_moves_and_blocked_moves():
    env = make(grid=5, agents=3, prey=1)
    place(env, [(0, 0), (2, 2), (4, 4)], [(3, 2)])
    step(env, DOWN, DOWN, LEFT)  # agent 1 runs into the prey: blocked
    assert positions(env)[0] == [[1, 0], [2, 2], [4, 3]]
    step(env, UP, UP, UP)
    assert positions(env)[0] == [[0, 0], [1, 2], [3, 3]]
    step(env, UP, STAY, DOWN)  # off-grid moves (masked) are no-ops
    assert positions(env)[0] == [[0, 0], [1, 2], [4, 3]]


def test_following_and_swapping_are_blocked():
    env = make(grid=5, agents=2, prey=1)
    place(env, [(2, 1), (2, 2)], [(4, 4)])
    step(env, RIGHT, RIGHT)  # agent 0 follows agent 1: the cell was not empty at the start
    assert positions(env)[0] == [[2, 1], [2, 3]]
    place(env, [(2, 1), (2, 2)], [(4, 4)])
    step(env, RIGHT, LEFT)  # swap
    assert positions(env)[0] == [[2, 1], [2, 2]]


def test_contested_cell_goes_to_exactly_one_agent_at_random():
    env = make(grid=5, agents=2, prey=1, num_envs=64)
    place(env, [(2, 1), (2, 3)], [(4, 4)])
    step(env, RIGHT, LEFT)
    cells = env.agent_positions.tolist()
    winners = [[2, 2] in copy for copy in cells]
    assert all(winners)
    first_wins = sum(copy == [[2, 2], [2, 3]] for copy in cells)
    second_wins = sum(copy == [[2, 1], [2, 2]] for copy in cells)
    assert first_wins + second_wins == 64 and first_wins > 10 and second_wins > 10


# --- prey ----------------------------------------------------------------------------------------
def test_prey_stays_when_surrounded_and_takes_the_only_free_cell():
    env = make(grid=5, agents=2, prey=1, prey_moves=True)
    place(env, [(0, 1), (1, 0)], [(0, 0)])
    for _ in range(5):
        step(env, STAY, STAY)
        assert positions(env)[1] == [[0, 0]]
    place(env, [(0, 1), (2, 0)], [(0, 0)])
    step(env, STAY, STAY)
    assert positions(env)[1] == [[1, 0]]


def test_prey_contest_a_cell_and_choose_directions_uniformly():
    env = make(grid=3, agents=3, prey=2, prey_moves=True, num_envs=64)
    place(env, [(1, 0), (1, 1), (1, 2)], [(0, 0), (0, 2)])  # both prey can only go to (0, 1)
    step(env, STAY, STAY, STAY)
    layouts = [tuple(map(tuple, copy)) for copy in env.prey_positions.tolist()]
    assert set(layouts) == {((0, 1), (0, 2)), ((0, 0), (0, 1))}

    env = make(grid=5, agents=2, prey=1, prey_moves=True, num_envs=800)
    place(env, [(4, 4), (4, 3)], [(2, 2)])
    step(env, STAY, STAY)
    moves = (env.prey_positions[:, 0] - torch.tensor([2, 2])).tolist()
    counts = {d: moves.count(list(d)) for d in [(0, 1), (1, 0), (0, -1), (-1, 0)]}
    assert sum(counts.values()) == 800 and all(150 < c < 250 for c in counts.values()), counts


def test_capture_happens_before_prey_move():
    env = make(grid=5, agents=2, prey=1, prey_moves=True)
    place(env, [(1, 2), (3, 2)], [(2, 2)])
    assert step(env, CATCH, CATCH).reward.tolist() == [10.0]


# --- episode end ---------------------------------------------------------------------------------
def test_truncation_at_the_episode_limit():
    env = make(grid=5, agents=2, prey=1, limit=3)
    place(env, [(0, 0), (4, 4)], [(2, 2)])
    flags = [(bool(r.terminated[0]), bool(r.truncated[0])) for r in (step(env, STAY, STAY) for _ in range(3))]
    assert flags == [(False, False), (False, False), (False, True)]


def test_termination_when_every_agent_is_frozen():
    env = make(grid=5, agents=2, prey=2)
    place(env, [(1, 2), (2, 1)], [(2, 2), (4, 4)])
    result = step(env, CATCH, CATCH)
    assert result.terminated.tolist() == [True] and result.score.tolist() == [1.0]


def test_ended_copies_can_keep_stepping():
    env = make(grid=5, agents=2, prey=1, limit=2, num_envs=3)
    env.reset(seed=0)
    for _ in range(5):
        result = env.step(torch.full((3, 2), CATCH))  # unavailable actions are no-ops
    assert result.truncated.all() and result.obs.shape == (3, 2, 75)


# --- random play against a slow reference, determinism and batching ------------------------------
def reference_observation(env: PredatorPreyEnv, copy: int):
    """Observation, state and mask of one copy, recomputed cell by cell from positions."""
    g, r = env.grid_size, env.settings.sight_range
    agents, prey = positions(env, copy)
    active, alive = env.agent_active[copy].tolist(), env.prey_alive[copy].tolist()
    live_agents = {tuple(p) for p, a in zip(agents, active) if a}
    live_prey = {tuple(p) for p, a in zip(prey, alive) if a}
    obs, avail = [], []
    for i, (row, col) in enumerate(agents):
        features, mask = [], [False] * 4 + [True, False]
        if active[i]:
            for dr in range(-r, r + 1):
                for dc in range(-r, r + 1):
                    cell = (row + dr, col + dc)
                    outside = not (0 <= cell[0] < g and 0 <= cell[1] < g)
                    other = cell in live_agents and (dr, dc) != (0, 0)
                    features += [float(other), float(cell in live_prey), float(outside)]
            for a, (dr, dc) in enumerate([(0, 1), (1, 0), (0, -1), (-1, 0)]):
                mask[a] = 0 <= row + dr < g and 0 <= col + dc < g
            mask[CATCH] = any(abs(row - pr) + abs(col - pc) == 1 for pr, pc in live_prey)
        else:
            features = [0.0] * env.info.obs_dim
        obs.append(features)
        avail.append(mask)
    state = []
    for cells, present in ((agents, active), (prey, alive)):
        for (row, col), here in zip(cells, present):
            state += [row / (g - 1), col / (g - 1), 1.0] if here else [0.0, 0.0, 0.0]
    return obs, state, avail


def test_random_play_matches_the_reference_and_keeps_cells_distinct():
    env = make(grid=7, agents=4, prey=4, limit=60, prey_moves=True, num_envs=16)
    observation = env.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    miscaptures = 0
    for _ in range(60):
        for copy in range(env.num_envs):
            obs, state, avail = reference_observation(env, copy)
            assert observation.obs[copy].tolist() == obs
            assert observation.state[copy].tolist() == pytest.approx(state)
            assert observation.avail_actions[copy].tolist() == avail
            cells = [tuple(p) for p, here in zip(
                env.agent_positions[copy].tolist() + env.prey_positions[copy].tolist(),
                env.present[copy].tolist()) if here]
            assert len(cells) == len(set(cells))
        observation = env.step(random_available(observation.avail_actions, generator))
        miscaptures += int((observation.reward < 0).sum())
        frozen, captured = (~env.agent_active).sum(1), (~env.prey_alive).sum(1)
        assert (frozen >= 2 * captured).all() and (observation.score <= 1).all()
    assert (~env.prey_alive).sum() > 0 and miscaptures > 0  # the random play did exercise the rules


def test_same_seed_same_episodes():
    def play(seed):
        env = make(grid=10, agents=8, prey=8, limit=30, prey_moves=True, num_envs=4, seed=seed)
        observation, generator, out = env.reset(), torch.Generator().manual_seed(1), []
        for _ in range(30):
            result = env.step(random_available(observation.avail_actions, generator))
            observation = result
            out.append(torch.cat([result.obs.flatten(), result.state.flatten(), result.reward]))
        return torch.stack(out)

    assert torch.equal(play(5), play(5))
    assert not torch.equal(play(5), play(6))
    env = make(grid=10, agents=8, prey=8, num_envs=2)
    assert torch.equal(env.reset(seed=9).state, env.reset(seed=9).state)


def test_each_batched_copy_equals_a_single_copy_env_with_its_key():
    batched = make(grid=10, agents=8, prey=8, limit=40, prey_moves=True, num_envs=5)
    observation = batched.reset(seed=11)
    singles = []
    for copy in range(5):
        single = make(grid=10, agents=8, prey=8, limit=40, prey_moves=True, seed=123)
        single.reset_to(batched.agent_positions[copy:copy + 1], batched.prey_positions[copy:copy + 1],
                        copy_keys=batched.copy_keys[copy:copy + 1])
        singles.append(single)
    generator = torch.Generator().manual_seed(2)
    for _ in range(40):
        actions = random_available(observation.avail_actions, generator)
        observation = batched.step(actions)
        for copy, single in enumerate(singles):
            alone = single.step(actions[copy:copy + 1])
            for name, value in alone._asdict().items():
                assert torch.equal(value, getattr(observation, name)[copy:copy + 1]), name


# --- PettingZoo view -----------------------------------------------------------------------------
def _view_settings():
    return PredatorPreySettings(grid_size=7, n_agents=4, n_prey=4, episode_limit=50,
                                miscapture_punishment=-1.0)


def test_pettingzoo_parallel_api():
    view = ParallelEnvView(lambda seed: PredatorPreyEnv(_view_settings(), 1, seed=seed))
    parallel_api_test(view, num_cycles=100)
    obs, infos = view.reset(seed=1)
    assert view.state().shape == (24,) and set(obs) == set(view.possible_agents)
    assert infos["agent_0"]["action_mask"].dtype == np.int8


def test_pettingzoo_parallel_seed():
    parallel_seed_test(
        lambda: ParallelEnvView(lambda seed: PredatorPreyEnv(_view_settings(), 1, seed=seed)),
        num_cycles=100,
    )


def test_strict_view_rejects_unavailable_actions():
    view = ParallelEnvView(lambda seed: PredatorPreyEnv(_view_settings(), 1, seed=seed), strict_masks=True)
    _, infos = view.reset(seed=0)
    masks = {a: info["action_mask"] for a, info in infos.items()}
    blocked = next((a, int(np.flatnonzero(m == 0)[0])) for a, m in masks.items() if (m == 0).any())
    actions = {a: 4 for a in view.agents}  # stay is always available
    actions[blocked[0]] = blocked[1]
    with pytest.raises(ValueError, match=f"{blocked[0]}: action {blocked[1]} is not available"):
        view.step(actions)


# --- the scenario --------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["smoke", "quick", "standard"])
def test_scenario_shapes_are_fixed_across_tasks(tier):
    scenario = ctmarl.make_scenario("predator_prey_penalty")
    tasks = scenario.tasks(tier)
    punishments = [t.settings.miscapture_punishment for t in tasks]
    assert punishments == [0.0, -0.5, -1.0, -1.5, -2.0]
    shapes = set()
    for task in tasks:
        env = task.make_env(2)
        first = env.reset(seed=0)
        shapes.add((env.info, tuple(first.obs.shape), tuple(first.state.shape), tuple(first.avail_actions.shape)))
    assert len(shapes) == 1
