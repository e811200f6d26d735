"""Long, repeated and gradual tracks: repeat, task generators, task definitions and transitions."""

from pathlib import Path

import pytest
import torch
import yaml

from ctmarl.envs.base import blend_settings
from ctmarl.envs.matrix import MatrixGameEnv, MatrixSettings
from ctmarl.errors import ConfigError
from ctmarl.learner import make_learner
from ctmarl.method import Method, make_method
from ctmarl.protocol import Training
from ctmarl.scenario import load_scenario_file, make_scenario

M1 = ((-10.0, -10.0, 12.0), (-9.0, -12.0, -8.0), (-4.0, -8.0, -11.0))


def _optimum(payoff) -> tuple[int, int]:
    return max((v, i, j) for i, row in enumerate(payoff) for j, v in enumerate(row))[1:]


def test_a_repeated_sequence_visits_the_same_task_definitions():
    scenario = make_scenario("matrix_drift_repeat")
    tasks = scenario.tasks("quick")
    assert len(tasks) == scenario.n_tasks == 25
    listed = scenario.task_specs()
    for task in tasks:
        first = tasks[task.index % len(listed)]
        assert task.settings == first.settings and task.definition == first.definition
        visit = task.index // len(listed) + 1
        assert task.name == (first.name if visit == 1 else f"{first.name}#{visit}")
    assert [t.definition for t in tasks[:5]] == [0, 1, 2, 3, 4]


def test_equal_settings_share_a_definition():
    tasks = make_scenario("matrix_drift").tasks("quick")
    assert [t.definition for t in tasks] == [0, 1, 2, 3, 4, 0]  # M1-return is M1


def test_generated_permutations_are_deterministic_equally_hard_and_switch_optimum():
    scenario = make_scenario("matrix_drift_long")
    tasks = scenario.tasks("quick")
    assert len(tasks) == 100
    assert [t.settings for t in tasks] == [t.settings for t in make_scenario("matrix_drift_long").tasks("quick")]
    base_rows = sorted(sorted(row) for row in M1)
    for task in tasks:
        payoff = task.settings.payoff
        # a row/column permutation keeps the multiset of row contents and of column contents
        assert sorted(sorted(row) for row in payoff) == base_rows
        # the optimum's row and column have the best means (reachable by a monotonic mixer)
        i, j = _optimum(payoff)
        row_means = [sum(r) / 3 for r in payoff]
        col_means = [sum(payoff[r][c] for r in range(3)) / 3 for c in range(3)]
        assert row_means[i] == max(row_means) and col_means[j] == max(col_means)
    optima = [_optimum(t.settings.payoff) for t in tasks]
    assert all(a != b for a, b in zip(optima, optima[1:]))
    definitions = {t.definition for t in tasks}
    assert len(definitions) == 34 and max(definitions) == 33


def test_generator_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown generator"):
        MatrixGameEnv.generate_tasks("shuffle", 3, 0, {"payoff": M1})
    with pytest.raises(ValueError, match="exactly one key"):
        MatrixGameEnv.generate_tasks("row_column_permutations", 3, 0, {"payoff": M1, "extra": 1})


def test_adding_the_new_keys_did_not_change_old_definition_hashes():
    """Records of scenarios written before repeat/transition/task_generator/clear_replay keep matching."""
    for name in ("matrix_drift-v1", "predator_prey_penalty-v1", "smacv2_drift-v1", "predator_prey_drift-v3"):
        scenario = make_scenario(name)
        record = next(Path(__file__).parents[1].glob(f"leaderboard/records/{name}_*.yaml"))
        assert yaml.safe_load(record.read_text())["scenario"]["definition_hash"] == scenario.definition_hash


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_tasks_and_a_generator_are_exclusive(tmp_path):
    data = yaml.safe_load(Path(make_scenario("matrix_drift").source).read_text())
    data["task_generator"] = {"kind": "row_column_permutations", "count": 3, "settings": {"payoff": [list(r) for r in M1]}}
    with pytest.raises(ConfigError, match="not both"):
        load_scenario_file(_write(tmp_path, data))


def test_a_transition_needs_an_interpolable_family(tmp_path):
    data = yaml.safe_load(Path(make_scenario("smacv2_drift").source).read_text())
    data["protocol"]["transition"] = {"share": 0.5}
    data["name"] = "smacv2_gradual"
    if "interpolable" in vars(make_scenario("smacv2_drift").tasks("smoke")[0].family):
        pytest.skip("the smax family interpolates")
    with pytest.raises(ConfigError, match="transition"):
        load_scenario_file(_write(tmp_path, data))


def test_blend_settings_is_linear():
    start, end = MatrixSettings(M1), MatrixSettings(tuple(tuple(v + 10 for v in row) for row in M1))
    half = blend_settings(start, end, 0.5, ("payoff",))
    assert half.payoff == tuple(tuple(v + 5 for v in row) for row in M1)
    assert blend_settings(start, end, 1.0, ("payoff",)) == end
    assert blend_settings(start, end, 0.25, ("payoff",)).payoff[0][2] == pytest.approx(12 + 2.5)


def test_a_gradual_switch_trains_on_blended_payoffs(monkeypatch):
    scenario = make_scenario("matrix_drift_gradual")
    tier = scenario.tier("smoke")
    torch.manual_seed(0)
    learner = make_learner("qmix", scenario.env_info("smoke"), dict(tier.learner), seed=0)
    training = Training(scenario, "smoke", learner, make_method("none"), 0, probe=False)
    seen: list[tuple[int, int, float]] = []
    original = MatrixGameEnv.set_settings

    def spy(self, settings):
        seen.append((training.position.task, training.position.task_steps, settings.payoff[0][0]))
        original(self, settings)

    monkeypatch.setattr(MatrixGameEnv, "set_settings", spy)
    result = training.train()
    span = 0.25 * tier.env_steps_per_task
    tasks = scenario.tasks("smoke")
    for task_index, steps, corner in seen:
        if task_index == 0:
            continue  # the first env is built with task 0's own settings
        alpha = min(steps / span, 1.0)
        previous, current = tasks[task_index - 1].settings.payoff[0][0], tasks[task_index].settings.payoff[0][0]
        assert corner == pytest.approx((1 - alpha) * previous + alpha * current)
    assert {t for t, _, _ in seen if t > 0} == set(range(1, len(tasks)))
    # evaluations use the task's own table: the last curve point is what R's diagonal holds
    assert [row[k] for k, row in enumerate(result.R)] == [c[-1] for c in result.task_curves()]


def test_old_scenario_versions_keep_loading_and_their_records_check():
    """The versions on the leaderboard still load (their records are checked in CI)."""
    for name in ("matrix_drift-v1", "predator_prey_penalty-v1", "smacv2_drift-v1", "smacv2_cross_race-v1"):
        assert make_scenario(name).version == 1


class _ReplaySizeAtTaskStart(Method):
    """Notes the replay's size each time a task starts (after the protocol's own work)."""

    touches = "nothing"

    def attach(self, learner, context) -> None:
        super().attach(learner, context)
        self.sizes: list[int] = []

    def on_task_start(self, task_index: int) -> None:
        self.sizes.append(len(self.learner.replay))


@pytest.mark.parametrize("clear", [False, True])
def test_protocol_clear_replay_empties_the_replay_at_every_later_task_start(clear, tmp_path):
    data = yaml.safe_load((Path(__file__).parents[1] / "scenarios" / "predator_prey_drift-v4.yaml").read_text())
    assert data["protocol"]["clear_replay"] is True  # v4 is v3 with the replay cleared
    data["protocol"]["clear_replay"] = clear
    scenario = load_scenario_file(_write(tmp_path, data))
    tier = scenario.tier("smoke")
    learner = make_learner("qmix", scenario.env_info("smoke"), dict(tier.learner), seed=0)
    method = _ReplaySizeAtTaskStart()
    Training(scenario, "smoke", learner, method, 0, probe=False).train()
    assert method.sizes[0] == 0 and len(method.sizes) == scenario.n_tasks
    later = method.sizes[1:]
    assert all(size == 0 for size in later) if clear else all(size > 0 for size in later)
