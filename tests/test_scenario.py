from pathlib import Path

import pytest
import yaml

from ctmarl.errors import ConfigError, UnknownNameError
from ctmarl.scenario import TIER_NAMES, make_scenario, scenario_ids, scenario_names

STANDARD = Path(__file__).resolve().parents[1] / "scenarios" / "matrix_drift.yaml"


def test_standard_scenarios_load_and_validate():
    """Every shipped version, older ones included, loads with fixed sizes across its tasks; a bare
    name is its newest version."""
    assert "matrix_drift" in scenario_names()
    assert {"predator_prey_drift-v1", "predator_prey_drift-v2", "matrix_drift-v1"} <= set(scenario_ids())
    for name in scenario_names():
        newest = max(int(i.rsplit("-v", 1)[1]) for i in scenario_ids() if i.rsplit("-v", 1)[0] == name)
        assert make_scenario(name) is make_scenario(f"{name}-v{newest}")
    for scenario_id in scenario_ids():
        scenario = make_scenario(scenario_id)
        assert scenario.id == scenario_id
        for tier in TIER_NAMES:
            infos = {task.make_env(2).info for task in scenario.tasks(tier)}
            assert len(infos) == 1, "sizes must be fixed across tasks"


def test_matrix_drift_is_as_designed():
    scenario = make_scenario("matrix_drift-v1")
    assert [t.name for t in scenario.spec.tasks] == ["M1", "M2", "M3", "M4", "M5", "M1-return"]
    tasks = scenario.tasks("quick")
    assert tasks[0].settings == tasks[5].settings


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="unknown scenario 'nope'; known: .*matrix_drift"):
        make_scenario("nope")
    with pytest.raises(UnknownNameError, match="unknown tier 'huge'; known: smoke, quick, standard"):
        make_scenario("matrix_drift").tier("huge")


def _write_variant(tmp_path, edit, name="matrix_drift"):
    data = yaml.safe_load(STANDARD.read_text())
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("protocol"), r"missing required key 'protocol'"),
        (lambda d: d.update(colour="red"), r"unknown key 'colour'"),
        (lambda d: d["tiers"]["quick"].update(env_steps_per_task=-5),
         r"tiers.quick: env_steps_per_task: must be a positive integer, got -5"),
        (lambda d: d["tiers"].pop("smoke"), r"tiers: missing required key 'smoke'"),
        (lambda d: d["tasks"][1]["settings"].update(payoff=[[1, 2, 3]]),
         r"tasks\[1\] \(M2\) under tier 'smoke': payoff: must be a square table"),
        (lambda d: d["env"].update(family="nowhere"), r"env.family: unknown env family 'nowhere'"),
        (lambda d: d["tasks"][0]["settings"].update(speed=3), r"tasks\[0\] \(M1\) under tier 'smoke': unknown key 'speed'"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, edit, message):
    path = _write_variant(tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as info:
        make_scenario(path)
    assert path in str(info.value)


def test_sizes_must_not_change_across_tasks(tmp_path):
    def edit(d):
        d["tasks"][1]["settings"]["payoff"] = [[1, 2], [3, 4]]
    with pytest.raises(ConfigError, match="sizes must be fixed across tasks"):
        make_scenario(_write_variant(tmp_path, edit))


def test_malformed_yaml_and_name_mismatch(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_scenario(str(bad))
    with pytest.raises(ConfigError, match="does not match the file name"):
        make_scenario(_write_variant(tmp_path, lambda d: None, name="other"))
