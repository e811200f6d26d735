"""The ``smax`` env family on its default backend (JaxMARL's SMAX): settings, sizes fixed across
tasks, the unit-type drift (frequencies over many resets), action masks, wins and truncation,
zero-copy dlpack hand-over, checkpoints, the PettingZoo view, and a CLI run at the smoke tier.

JIT compilation dominates the cost of these tests (seconds per program on 2 cores), so they share
one env structure (the smoke tier's: 5v5, 32x32, 30-step episodes) and two batch sizes: 32 copies
(the smoke tier's training and evaluation batches, so the CLI run compiles nothing new) and 1 for
the PettingZoo view. Compiled programs are cached per structure and reused by every env here.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pettingzoo.test import parallel_api_test

import ctmarl
from ctmarl.config import from_mapping
from ctmarl.envs.pettingzoo_view import ParallelEnvView
from ctmarl.envs.smax import (
    STOP,
    UNIT_TYPES,
    SMAXEnv,
    SMAXSettings,
    race_of,
    smax_sizes,
)
from ctmarl.errors import ConfigError
from ctmarl.registry import ENVS

pytest.importorskip("jaxmarl")

N, M = 5, 5
LIMIT = 30  # the smoke tier's episode limit: every env below shares one compiled structure
COPIES = 32
N_TYPES = len(UNIT_TYPES)
UNIT_FEATURES = 7 + N_TYPES  # per unit in an observation
STATE_UNIT_FEATURES = 4 + N_TYPES  # per unit in the state


def settings(weights=None, **changes) -> SMAXSettings:
    data = {"unit_weights": weights or {"stalker": 0.5, "zealot": 0.5}, "episode_limit": LIMIT, **changes}
    return from_mapping(SMAXSettings, data, "test")


def make(num_envs=COPIES, seed=0, **kwargs) -> SMAXEnv:
    return SMAXEnv(settings(**kwargs), num_envs, seed=seed)


def random_available(avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(avail.shape, generator=generator).masked_fill(~avail, -1.0).argmax(-1)


def unit_table(state: torch.Tensor) -> dict[str, torch.Tensor]:
    """The world state [E, S] split into per-unit columns (allies then enemies); positions in map
    units (the state holds them divided by the 32-unit map)."""
    units = state[:, : (N + M) * STATE_UNIT_FEATURES].view(-1, N + M, STATE_UNIT_FEATURES)
    return {"health": units[..., 0], "position": units[..., 1:3] * 32, "cooldown": units[..., 3],
            "type_one_hot": units[..., 4:], "type": state[:, -(N + M):].long()}


@pytest.fixture(scope="module")
def env() -> SMAXEnv:
    env = make()
    env.warm_up()
    return env


# --- settings, registration, sizes --------------------------------------------------------------
def test_registered_and_sizes(env):
    assert ENVS.load("smax") is SMAXEnv
    info = env.info
    assert (info.n_agents, info.obs_dim, info.state_dim, info.n_actions, info.episode_limit) == (5, 127, 120, 10, 30)
    first = env.reset(seed=0)
    assert first.obs.shape == (COPIES, 5, 127) and first.obs.dtype == torch.float32
    assert first.state.shape == (COPIES, 120) and first.state.dtype == torch.float32
    assert first.avail_actions.shape == (COPIES, 5, 10) and first.avail_actions.dtype == torch.bool
    # ctmarl's size formula agrees with jaxmarl's own (the program checks it too when built)
    smax = env.backend.runner.program.env
    assert (smax.obs_size, smax.state_size, smax.num_ally_actions) == (127, 120, 10)
    assert smax_sizes(3, 4).obs_dim == UNIT_FEATURES * (2 + 4) + 4 + N_TYPES


@pytest.mark.parametrize("change, message", [
    ({"unit_weights": {"stalker": 0.5, "colossus": 0.5}}, "unknown unit type 'colossus' for backend smax"),
    ({"unit_weights": {"stalker": 0.5, "zealot": 0.4}}, "must sum to 1"),
    ({"unit_weights": {"stalker": 1.5, "zealot": -0.5}}, r"unit_weights.zealot: must be a number >= 0"),
    ({"unit_weights": {}}, "at least one unit type"),
    ({"start_positions": "random"}, "start_positions: must be one of"),
    ({"reflect_probability": 1.5}, "reflect_probability"),
    ({"backend": "pysc2"}, "backend: must be one of smax, sc2"),
    ({"backend": "sc2", "unit_weights": {"stalker": 0.5, "marine": 0.5}}, "units of one race"),
    ({"backend": "sc2", "map_size": 24}, "32 x 32"),
    ({"n_units": 0}, "n_units"),
    ({"enemy_unit_weights": {"zealot": 0.5}}, "enemy_unit_weights: must sum to 1"),
    ({"enemy_unit_weights": {"colossus": 1.0}}, "enemy_unit_weights: unknown unit type 'colossus'"),
    ({"enemy_unit_weights": {}}, "enemy_unit_weights: give at least one unit type"),
    ({"backend": "sc2", "enemy_unit_weights": {"zealot": 1.0}}, "only the smax backend has them"),
])
def test_settings_ranges_are_checked(change, message):
    data = {"unit_weights": {"stalker": 0.5, "zealot": 0.5}, **change}
    with pytest.raises(ConfigError, match=message):
        from_mapping(SMAXSettings, data, "test.yaml")
    with pytest.raises(ConfigError, match="unknown key 'weights'"):
        from_mapping(SMAXSettings, {"weights": {"stalker": 1.0}}, "test.yaml")


def test_races():
    assert race_of(["stalker", "zealot"]) == "protoss"
    assert race_of(["marine"]) == "terran"
    assert race_of(["zergling", "baneling"]) == "zerg"
    assert race_of(["stalker", "marine"]) is None
    assert settings({"stalker": 1.0, "zealot": 0.0}).team_units == ("stalker",)


def test_importing_ctmarl_and_reading_sizes_does_not_import_jax():
    code = ("import sys, ctmarl; s = ctmarl.make_scenario('smacv2_drift'); s.env_info('quick'); "
            "print('jax' in sys.modules, 'jaxmarl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_importing_the_backend_leaves_the_streams_alone():
    """jaxmarl prints on import and resets sys.stdout / sys.stderr; the backend's import does neither."""
    code = ("import contextlib, io, sys\nbuf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
            "    import ctmarl.envs.smax_jax\n    kept = sys.stdout is buf\n"
            "print(kept, repr(buf.getvalue()), sys.stderr is sys.__stderr__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout == "True '' True\n" and "submoduled" not in run.stderr.lower()


def test_standard_scenarios_are_single_race_tasks_of_fixed_size():
    drift = ctmarl.make_scenario("smacv2_drift")
    cross = ctmarl.make_scenario("smacv2_cross_race")
    assert len(drift.spec.tasks) >= 4
    for scenario in (drift, cross):
        for tier in ("smoke", "quick", "standard"):
            tasks = scenario.tasks(tier)
            assert len({task.make_env(2).info for task in tasks}) == 1
            for task in tasks:
                assert task.settings.backend == "smax"
                assert race_of(task.settings.team_units) is not None  # so backend sc2 can run it too
    races = [race_of(t.settings.team_units) for t in cross.tasks("quick")]
    assert races[:3] == ["protoss", "terran", "zerg"]


# --- the drift: unit-type distributions ---------------------------------------------------------
def test_task_drift_changes_the_unit_type_distribution():
    """Sample many resets of every task: the allies' type frequencies match the task's weights,
    the enemy team mirrors the allies, and the distributions differ from task to task."""
    scenario = ctmarl.make_scenario("smacv2_drift")
    frequencies = []
    for task in scenario.tasks("smoke"):
        env = task.make_env(COPIES, seed=task.index)
        counts = torch.zeros(N_TYPES)
        resets = 8
        for _ in range(resets):
            first = env.reset()
            types = unit_table(first.state)["type"]
            assert torch.equal(types[:, N:], types[:, :N])  # enemies mirror allies (SMACv2's weighted_teams)
            # every agent's own type one-hot (the last N_TYPES observation features) agrees
            assert torch.equal(first.obs[..., -N_TYPES:].argmax(-1), types[:, :N])
            counts += torch.bincount(types[:, :N].reshape(-1), minlength=N_TYPES)
        draws = resets * COPIES * N
        observed = counts / draws
        expected = torch.tensor(task.settings.type_probabilities())
        # binomial standard error <= 0.5 / sqrt(1280) = 0.014: 0.06 is over 4 standard errors
        assert torch.allclose(observed, expected, atol=0.06), (task.name, observed, expected)
        assert bool((observed[expected == 0] == 0).all())
        frequencies.append(observed)
    stalker = UNIT_TYPES.index("stalker")
    assert frequencies[0][stalker] > 0.7 and frequencies[2][stalker] < 0.3  # the protoss mix shifts
    for earlier, later in itertools.pairwise(frequencies):
        assert (earlier - later).abs().sum() > 0.4


def test_enemy_unit_weights_draw_the_enemies_on_their_own():
    """With ``enemy_unit_weights`` the enemies' types follow their own weights, independently of
    the allies' (no mirror); the allies' draw is the mirrored setting's, key for key."""
    mirrored = SMAXEnv(settings({"stalker": 0.5, "zealot": 0.5}, n_units=N, n_enemies=N), COPIES, seed=3)
    asymmetric = SMAXEnv(settings({"stalker": 0.5, "zealot": 0.5}, n_units=N, n_enemies=N,
                                  enemy_unit_weights={"zealot": 0.25, "hydralisk": 0.75}), COPIES, seed=3)
    counts, same_as_ally, resets = torch.zeros(N_TYPES), 0, 8
    for _ in range(resets):
        a, b = unit_table(mirrored.reset().state)["type"], unit_table(asymmetric.reset().state)["type"]
        assert torch.equal(a[:, :N], b[:, :N])  # the allies are drawn exactly as before
        counts += torch.bincount(b[:, N:].reshape(-1), minlength=N_TYPES)
        same_as_ally += int((b[:, N:] == b[:, :N]).sum())
    draws = resets * COPIES * N
    expected = torch.zeros(N_TYPES)
    expected[UNIT_TYPES.index("zealot")], expected[UNIT_TYPES.index("hydralisk")] = 0.25, 0.75
    assert torch.allclose(counts / draws, expected, atol=0.06), counts / draws  # > 4 standard errors
    # Independent of the allies: an enemy shares its ally's type only when both are zealots,
    # P = 0.5 * 0.25 = 0.125 (a mirror would give 1).
    assert abs(same_as_ally / draws - 0.125) < 0.05


@pytest.mark.parametrize("scenario_id, n_defs, repeat", [("smacv2_matchups-v1", 4, 3), ("smacv2_matchups-v2", 3, 5)])
def test_matchups_scenario_pits_one_unit_type_against_another(scenario_id, n_defs, repeat):
    """smacv2_matchups: every task's allies are all of one type and its enemies all of another, the
    match-ups differ, sizes never change, and each repeat replays the same definitions."""
    scenario = ctmarl.make_scenario(scenario_id)
    tasks = scenario.tasks("smoke")
    assert len(tasks) == n_defs * repeat and [t.definition for t in tasks] == list(range(n_defs)) * repeat
    assert len({task.make_env(2).info for task in tasks}) == 1
    seen = set()
    for task in tasks[:n_defs]:
        types = task.make_env(COPIES, seed=task.index).reset().state[:, -6:].long()  # 3 allies, 3 enemies
        ally, enemy = UNIT_TYPES.index(task.settings.team_units[0]), UNIT_TYPES.index(
            next(iter(task.settings.enemy_unit_weights)))
        assert bool((types[:, :3] == ally).all()) and bool((types[:, 3:] == enemy).all()) and ally != enemy
        seen.add((ally, enemy))
    assert len(seen) == n_defs


def test_matchups_v2_keeps_v1s_world_and_learner():
    """v2 changes only the match-ups, the number of passes and the quick tier's budget."""
    v1, v2 = ctmarl.make_scenario("smacv2_matchups-v1"), ctmarl.make_scenario("smacv2_matchups")
    assert v2.version == 2
    one, two = v1.tasks("quick")[0], v2.tasks("quick")[0]
    assert one.make_env(2).info == two.make_env(2).info
    for tier in ("smoke", "quick", "standard"):
        assert v1.tier(tier).learner == v2.tier(tier).learner
    assert v1.tier("quick").env_steps_per_task == 120_000 and v2.tier("quick").env_steps_per_task == 100_000


def test_start_positions_follow_smacv2():
    """Reflect: enemies mirror the allies across the vertical midline; surrounded: allies start
    near the centre, enemies on the diagonals."""
    reflect = SMAXEnv(settings(start_positions="reflect"), COPIES, seed=1)
    units = unit_table(reflect.reset().state)
    ally, enemy = units["position"][:, :N], units["position"][:, N:]
    assert bool((ally[..., 0] < 16).all()) and bool((enemy[..., 0] > 16).all())
    # mirror images up to SMAX's push-apart of overlapping units
    assert torch.allclose(enemy[..., 0], 32 - ally[..., 0], atol=1.0)
    assert torch.allclose(enemy[..., 1], ally[..., 1], atol=1.0)
    surrounded = SMAXEnv(settings(start_positions="surrounded"), COPIES, seed=1)
    units = unit_table(surrounded.reset().state)
    ally, enemy = units["position"][:, :N] - 16, units["position"][:, N:] - 16
    assert bool((ally.abs() < 2.5).all())
    # on a diagonal, up to the start noise and the push-apart of a group's units
    assert torch.allclose(enemy[..., 0].abs(), enemy[..., 1].abs(), atol=2.5)
    assert bool((enemy.abs() >= 1.0).all()) and bool((units["position"] >= 1.0).all())


# --- stepping ----------------------------------------------------------------------------------
def test_masks_follow_the_rules_under_random_play(env):
    """Stop is always available; a dead ally may only stop; attack k iff ally and enemy k are
    alive and enemy k is within the ally's attack range."""
    smax = env.backend.runner.program.env
    attack_range = torch.tensor(np.asarray(smax.unit_type_attack_ranges), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    observation = env.reset(seed=1)
    avail, state = observation.avail_actions, observation.state
    seen_dead = seen_attack = False
    for _ in range(LIMIT):
        units = unit_table(state)
        alive = units["health"] > 0
        position = units["position"]
        distance = (position[:, :N, None] - position[:, None, N:]).norm(dim=-1)  # [E, N, M]
        in_range = distance < attack_range[units["type"][:, :N]][..., None]
        expected_attack = alive[:, :N, None] & alive[:, None, N:] & in_range
        assert bool(avail[..., STOP].all())
        assert torch.equal(avail[..., :4], alive[:, :N, None].expand(-1, -1, 4))
        # allow float disagreement for units right at the edge of their range
        borderline = (distance - attack_range[units["type"][:, :N]][..., None]).abs() < 1e-3
        assert bool(((avail[..., 5:] == expected_attack) | borderline).all())
        seen_dead |= bool((~alive[:, :N]).any())
        seen_attack |= bool(avail[..., 5:].any())
        result = env.step(random_available(avail, generator))
        avail, state = result.avail_actions, result.state
    assert seen_attack and seen_dead  # both rules were exercised (seed 1 has deaths within 30 steps)


def test_move_directions_and_unavailable_actions_are_no_ops(env):
    """Actions 0-3 move north, east, south, west; an unavailable attack changes nothing in the world."""
    def after_one_step(action_of_agent_0) -> torch.Tensor:
        env.reset(seed=7)
        actions = torch.full((COPIES, N), STOP)
        actions[:, 0] = action_of_agent_0
        return env.step(actions).state

    stay = unit_table(after_one_step(STOP))["position"][:, 0]
    for action, direction in enumerate(([0, 1], [1, 0], [0, -1], [-1, 0])):
        moved = unit_table(after_one_step(action))["position"][:, 0] - stay
        along = moved @ torch.tensor(direction, dtype=torch.float32)
        assert bool((along > 0.5).all()), (action, moved)
    first = env.reset(seed=7)
    unavailable = ~first.avail_actions[:, 0, 5:]  # attacks agent 0 cannot make (enemy out of range)
    has_one = unavailable.any(-1)
    assert int(has_one.sum()) >= 2
    attack = torch.where(has_one, 5 + unavailable.float().argmax(-1), STOP)
    assert torch.equal(after_one_step(STOP), after_one_step(attack))


RACE_MIXES = ({"stalker": 0.5, "zealot": 0.5}, {"marine": 0.5, "marauder": 0.5},
              {"zergling": 0.5, "hydralisk": 0.5})


def as_stop_where_unavailable(actions: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """[..., N] ``actions`` with each one masked in ``avail`` [..., N, A] replaced by stop."""
    available = avail.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return torch.where(available, actions, STOP)


def last_attacks_seen(obs: torch.Tensor, n_actions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(last attack action id [E, N, N - 1] each observer sees of each other ally (0: none or out
    of sight), index of that ally [N, N - 1]) from observations [E, N, O]."""
    slots = torch.arange(N - 1)
    ally_of_slot = slots + (slots[None, :] >= torch.arange(N)[:, None]).long()  # others skip self
    seen = obs[..., : (N - 1) * UNIT_FEATURES].unflatten(-1, (N - 1, UNIT_FEATURES))[..., 5]
    return (seen * (n_actions - 1)).round().long(), ally_of_slot


def test_unavailable_actions_are_true_no_ops_under_random_play():
    """With random actions, masked ones included, in every race: the step equals the step in which
    each masked action was stop (observations, state, masks, reward, flags and SMAX's whole episode
    state: health, positions, cooldowns, last actions), and no masked attack shows in a teammate's
    observation as its last attack. SMAX alone lands a masked attack on an enemy that walks into
    range during the step and records it as the last attack, which fails both checks."""
    generator = torch.Generator().manual_seed(0)
    masked_attacks = 0
    for weights in RACE_MIXES:
        free, stopped = make(weights=weights, seed=5), make(weights=weights, seed=5)
        first, again = free.reset(), stopped.reset()
        assert torch.equal(first.avail_actions, again.avail_actions)
        avail = first.avail_actions
        for _ in range(LIMIT):
            actions = torch.randint(0, M + 5, (COPIES, N), generator=generator)
            masked_attacks += int(((actions >= 5) & (as_stop_where_unavailable(actions, avail) == STOP)).sum())
            a = free.step(actions)
            b = stopped.step(as_stop_where_unavailable(actions, avail))
            assert all(torch.equal(x, y) for x, y in zip(a, b))
            assert all(torch.equal(x, y) for x, y in zip(free.state_dict()["episode"]["leaves"],
                                                            stopped.state_dict()["episode"]["leaves"]))
            seen, ally_of_slot = last_attacks_seen(a.obs, M + 5)
            chosen = actions[:, ally_of_slot]  # [E, N, N - 1]: what each seen ally was sent
            shown_available = avail.gather(-1, actions.unsqueeze(-1)).squeeze(-1)[:, ally_of_slot]
            assert bool(((seen == 0) | ((seen == chosen) & shown_available)).all())
            avail = a.avail_actions
    assert masked_attacks > 1000  # most random attacks are masked: the rule was exercised


def test_episodes_end_by_the_limit_and_flags_are_exclusive(env):
    generator = torch.Generator().manual_seed(1)
    avail = env.reset(seed=2).avail_actions
    ended_at = torch.full((COPIES,), -1)
    for t in range(1, LIMIT + 1):
        result = env.step(random_available(avail, generator))
        avail = result.avail_actions
        assert not bool((result.terminated & result.truncated).any())
        assert bool((result.truncated == ((t >= LIMIT) & ~result.terminated)).all())
        assert set(result.score.tolist()) <= {0.0, 1.0}
        ended = result.terminated | result.truncated
        ended_at = torch.where((ended_at < 0) & ended, t, ended_at)
    assert bool((ended_at > 0).all())


def test_a_won_battle_scores_one_and_a_lost_one_zero(env):
    """Enemies at 1 hit point next to the allies: attacking wins at once (reward includes the win
    bonus); allies at 1 hit point next to full-health enemies lose to the heuristic enemy."""
    import jax.numpy as jnp

    runner = env.backend.runner
    env.reset(seed=3)
    world = runner.state.state
    centre = jnp.array([16.0, 16.0])
    positions = world.unit_positions.at[:, :N].set(centre + jnp.array([-0.6, 0.0]) + jnp.arange(N)[:, None] * jnp.array([0.0, 1.3]))
    positions = positions.at[:, N:].set(centre + jnp.array([0.6, 0.0]) + jnp.arange(M)[:, None] * jnp.array([0.0, 1.3]))
    health = world.unit_health.at[:, N:].set(0.01)
    runner.state = runner.state.replace(state=world.replace(unit_positions=positions, unit_health=health))
    result = env.step(5 + torch.arange(N).expand(COPIES, N))  # ally i attacks enemy i
    assert result.terminated.all() and not result.truncated.any()
    assert result.score.tolist() == [1.0] * COPIES
    assert bool((result.reward > 1.0).all())  # damage share plus the win bonus of 1

    env.reset(seed=3)
    world = runner.state.state
    health = world.unit_health.at[:, :N].set(0.01)
    runner.state = runner.state.replace(state=world.replace(unit_positions=positions, unit_health=health))
    for _ in range(10):
        result = env.step(torch.full((COPIES, N), STOP))
        if result.terminated.all():
            break
    assert result.terminated.all() and result.score.tolist() == [0.0] * COPIES


def test_dlpack_hand_over_is_zero_copy_on_cpu(env):
    """Observations, state and masks are views of the JAX buffers, not copies."""
    runner = env.backend.runner
    first = env.reset(seed=0)
    obs_array, state_array, avail_array = runner.outputs[2:5]
    assert first.obs.data_ptr() == obs_array.unsafe_buffer_pointer()
    assert first.state.data_ptr() == state_array.unsafe_buffer_pointer()
    assert first.avail_actions.data_ptr() == avail_array.unsafe_buffer_pointer()
    result = env.step(torch.full((COPIES, N), STOP))
    pointers = [array.unsafe_buffer_pointer() for array in runner.outputs[2:]]
    assert [t.data_ptr() for t in result] == pointers


def test_one_compiled_program_serves_every_task(env):
    """Task parameters are arguments: other tasks of the same structure compile nothing new."""
    program = env.backend.runner.program
    other = make(weights={"zergling": 0.3, "hydralisk": 0.7}, seed=5)
    other.reset()
    other.step(torch.full((COPIES, N), STOP))
    assert other.backend.runner.program is program
    assert program.step._cache_size() == 1  # reset returns exactly the types a step returns


# --- seeds and checkpoints ---------------------------------------------------------------------
def test_reset_seed_determinism(env):
    a = env.reset(seed=11)
    b = env.reset(seed=11)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.state, b.state)
    c = env.reset()
    assert not torch.equal(a.state, c.state)
    # all 64 bits of a seed count (jax.random.PRNGKey alone would drop the high 32 without x64)
    assert not torch.equal(env.reset(seed=2**40).state, env.reset(seed=0).state)


def test_state_dict_resumes_identically(env):
    """Mid-episode and between episodes, a fresh env loaded with state_dict() continues exactly;
    the state survives torch.save / torch.load(weights_only=True)."""
    generator = torch.Generator().manual_seed(4)
    avail = env.reset(seed=21).avail_actions
    for _ in range(3):
        avail = env.step(random_available(avail, generator)).avail_actions
    buffer = io.BytesIO()
    torch.save(env.state_dict(), buffer)
    buffer.seek(0)
    restored = make(seed=999)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    actions = random_available(avail, generator)
    for _ in range(4):
        a, b = env.step(actions), restored.step(actions)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    again = make(seed=999)
    again.load_state_dict(env.state_dict())
    assert torch.equal(env.reset().state, again.reset().state)


def test_state_dict_before_any_reset_is_plain():
    fresh = make(seed=5)
    assert fresh.state_dict() == {"seed": 5, "resets": 0, "episode": None}


# --- PettingZoo view and independence of copies -------------------------------------------------
def test_pettingzoo_view_passes_the_parallel_api_test():
    view = ParallelEnvView(lambda seed: make(num_envs=1, seed=seed))
    parallel_api_test(view, num_cycles=60)
    observations, infos = view.reset(seed=3)
    assert observations["agent_0"].shape == (127,) and view.state().shape == (120,)
    assert infos["agent_0"]["action_mask"][STOP] == 1


def test_pettingzoo_view_inherits_the_no_op():
    """Through the PettingZoo view (non-strict), a masked action gives exactly what stop gives."""
    rng = np.random.default_rng(0)
    free, stopped = (ParallelEnvView(lambda seed: make(num_envs=1, seed=seed, weights=RACE_MIXES[0]))
                     for _ in range(2))
    for seed in (3, 4):
        infos_a = free.reset(seed=seed)[1]
        stopped.reset(seed=seed)
        masked = 0
        while free.agents:
            masks = {agent: infos_a[agent]["action_mask"] for agent in free.agents}
            actions = {agent: int(rng.integers(M + 5)) for agent in free.agents}
            masked += sum(not masks[agent][action] for agent, action in actions.items())
            a = free.step(actions)
            b = stopped.step({agent: action if masks[agent][action] else STOP
                              for agent, action in actions.items()})
            assert np.array_equal(free.state(), stopped.state())
            for x, y in zip(a, b):
                assert x.keys() == y.keys()
                for agent in x:
                    if isinstance(x[agent], dict):
                        assert all(np.array_equal(x[agent][k], y[agent][k]) for k in x[agent])
                    else:
                        assert np.array_equal(x[agent], y[agent])
            infos_a = a[4]
        assert masked > 0


def test_a_copy_does_not_depend_on_the_number_of_copies(env):
    single = make(num_envs=1, seed=0)
    batched = env.reset(seed=13)
    alone = single.reset(seed=13)
    assert torch.allclose(batched.state[:1], alone.state) and torch.allclose(batched.obs[:1], alone.obs)


# --- end to end ---------------------------------------------------------------------------------
def test_cli_smoke_run_records_win_rates(tmp_path):
    from ctmarl.cli import main
    from ctmarl.record import load_record

    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["evaluate", "--algo", "none", "--scenario", "smacv2_drift",
                                       "--tier", "smoke", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.yaml")
    record = load_record(path)
    assert record["scenario"]["env_family"] == "smax"
    assert "SMACv2-like, not SMACv2" in record["scenario"]["notes"]
    assert "win rate" in record["scenario"]["score"]
    assert len(record["R"]) == 5 and all(0.0 <= s <= 1.0 for row in record["R"] for s in row)
