"""``ctmarl export --format marl-eval``: real smoke records -> marl-eval's raw-data JSON.

Every expected value is read from the records themselves (curves, final scores, R, R_return,
metrics), never from the exporter's own output, so a wrong mapping fails here.
"""

import copy
import json
import shutil

import pytest
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.errors import CtmarlError, RecordError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.export import ExportError, export_command, marl_eval_data
from ctmarl.record import load_record

#: (scenario, algo, seed) of the smoke records the tests export.
RUNS = (("matrix_drift", "none", 0), ("matrix_drift", "none", 1), ("matrix_drift", "knife", 0),
        ("matrix_drift_repeat", "none", 0))


def invoke(*args):
    if "export" not in main.commands:  # the CLI module registers it itself once it is wired in
        main.add_command(export_command)
    return CliRunner().invoke(main, ["export", *map(str, args)])


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "records"
    for scenario, algo, seed in RUNS:
        evaluate(RunSpec(scenario, algo=algo, tier="smoke", seed=seed), folder / scenario)
    return folder


@pytest.fixture(scope="module")
def records(records_dir):
    paths = sorted(records_dir.rglob("*.yaml"))
    assert len(paths) == len(RUNS)
    return {path: load_record(path) for path in paths}


@pytest.fixture(scope="module")
def exported(records_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "marl_eval.json"
    result = invoke("--format", "marl-eval", records_dir, "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def expected_task_keys(record):
    """``<position>_<name>``, the position zero-padded to the number of tasks (written out by hand
    for the two smoke tracks below, so a change of key scheme is noticed)."""
    tasks = record["tasks"]
    width = 1 if len(tasks) <= 10 else 2
    return [f"{k:0{width}d}_{name}" for k, name in enumerate(tasks)]


def where(record):
    scenario = record["scenario"]
    env = f"{scenario['name']}-v{scenario['version']}_{scenario['tier']}"
    algo = f"{record['learner']['name']}+{record['method']['name']}"
    return env, algo, f"seed_{record['seed']}"


def test_levels_have_the_documented_keys(records, exported):
    data, _ = exported
    envs = {where(r)[0] for r in records.values()}
    assert set(data) == envs == {"matrix_drift-v1_smoke", "matrix_drift_repeat-v1_smoke"}
    for env in envs:
        mine = [r for r in records.values() if where(r)[0] == env]
        assert list(data[env]) == [*expected_task_keys(mine[0]), "_sequence"]
        for task, by_algo in data[env].items():
            assert set(by_algo) == {where(r)[1] for r in mine}, task
            for algo, by_run in by_algo.items():
                assert set(by_run) == {where(r)[2] for r in mine if where(r)[1] == algo}


def test_steps_equal_the_record_curves(records, exported):
    data, _ = exported
    checked = 0
    for record in records.values():
        env, algo, run = where(record)
        curves = record["curves"]
        for k, task in enumerate(expected_task_keys(record)):
            run_data = data[env][task][algo][run]
            rows = [i for i, t in enumerate(curves["task"]) if t == k]
            assert rows, "every task is evaluated at least once"
            # marl-eval reads the last key of a run as its absolute metrics
            assert list(run_data) == [f"step_{i}" for i in range(1, len(rows) + 1)] + ["absolute_metrics"]
            counts = []
            for i, row in enumerate(rows, start=1):
                step = run_data[f"step_{i}"]
                assert set(step) == {"step_count", "score", "return"}
                assert type(step["step_count"]) is int and step["step_count"] == curves["env_step"][row]
                for metric in ("score", "return"):
                    assert isinstance(step[metric], list) and len(step[metric]) == 1
                    assert type(step[metric][0]) is float and step[metric][0] == curves[metric][row]
                counts.append(step["step_count"])
                checked += 1
            # non-decreasing: one collection crossing two evaluation points evaluates twice at its step
            assert counts == sorted(counts) and counts[-1] > counts[0] or len(counts) == 1
    assert checked == sum(len(r["curves"]["env_step"]) for r in records.values())


def test_absolute_metrics_equal_final_scores_and_last_R_row(records, exported):
    data, _ = exported
    for record in records.values():
        env, algo, run = where(record)
        for k, task in enumerate(expected_task_keys(record)):
            absolute = data[env][task][algo][run]["absolute_metrics"]
            assert absolute == {"score": [record["metrics"]["final_score_per_task"][k]],
                                "return": [record["R_return"][k][k]],
                                "retained_score": [record["R"][-1][k]]}
            assert all(type(v[0]) is float for v in absolute.values())
        metrics = record["metrics"]
        sequence = data[env]["_sequence"][algo][run]
        assert list(sequence) == ["absolute_metrics"]
        assert sequence["absolute_metrics"] == {"auc": [metrics["auc"]], "performance": [metrics["performance"]],
                                                "forgetting": [metrics["forgetting"]]}


def test_the_command_says_what_it_wrote(records, exported):
    _, output = exported
    n_tasks = len({(where(r)[0], t) for r in records.values() for t in r["tasks"]})
    assert f"2 environment(s), {n_tasks} task(s), 2 algorithm(s), {len(RUNS)} run(s)" in output


def test_repeated_tasks_stay_distinct(records, exported):
    data, _ = exported
    (record,) = [r for r in records.values() if r["scenario"]["name"] == "matrix_drift_repeat"]
    definitions = record["task_definition"]
    assert len(set(definitions)) < len(definitions), "the repeat track revisits task definitions"
    env, algo, run = where(record)
    keys = [t for t in data[env] if t != "_sequence"]
    assert len(keys) == len(record["tasks"]) == len(set(keys))
    # identical names (a track that does not rename revisits) still give one key per position
    same_names = copy.deepcopy(record)
    same_names["tasks"] = ["M1"] * len(record["tasks"])
    tasks = marl_eval_data([same_names], ["same.yaml"])[env]
    assert len(tasks) == len(record["tasks"]) + 1
    for k, key in enumerate(expected_task_keys(same_names)):
        steps = tasks[key][algo][run]
        assert steps["absolute_metrics"]["score"] == [record["metrics"]["final_score_per_task"][k]]
        assert len(steps) - 1 == record["curves"]["task"].count(k)


def test_json_round_trip(records, exported):
    data, _ = exported
    paths = list(records)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert marl_eval_data([records[p] for p in paths], [str(p) for p in paths]) == data


def test_no_sequence_leaves_it_out(records_dir, tmp_path):
    out = tmp_path / "plain.json"
    result = invoke(records_dir / "matrix_drift", "--out", out, "--no-sequence")
    assert result.exit_code == 0, result.output
    assert "_sequence" not in json.loads(out.read_text())["matrix_drift-v1_smoke"]


def test_a_duplicate_run_names_both_files(records_dir, tmp_path):
    original = next((records_dir / "matrix_drift").glob("*knife*.yaml"))
    copy_path = tmp_path / "elsewhere" / original.name
    copy_path.parent.mkdir()
    shutil.copy(original, copy_path)
    out = tmp_path / "dup.json"
    result = invoke(records_dir, copy_path, "--out", out)
    assert result.exit_code == 2
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert str(original) in result.output and str(copy_path) in result.output
    assert "seed_0" in result.output and "qmix+knife" in result.output
    assert not out.exists()
    # the same file reached twice (its folder and itself) is one run, not a duplicate
    assert invoke(records_dir, original, "--out", out).exit_code == 0


@pytest.mark.parametrize("damage", ["not yaml: [", "edited"])
def test_a_corrupt_record_is_a_clear_error(records_dir, tmp_path, damage):
    original = next((records_dir / "matrix_drift").glob("*none_seed1.yaml"))
    bad = tmp_path / "bad.yaml"
    if damage == "edited":
        assert "\nseed: 1\n" in original.read_text()
        bad.write_text(original.read_text().replace("\nseed: 1\n", "\nseed: 7\n"))
    else:
        bad.write_text(damage)
    out = tmp_path / "never.json"
    result = invoke(original, bad, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and str(bad) in result.output
    assert "internal error" not in result.output
    assert not out.exists()


def test_a_folder_without_records_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty", "--out", tmp_path / "x.json")
    assert result.exit_code == 2 and "no *.yaml records" in result.output


def test_variant_null_forgetting_and_bad_numbers(records):
    record = copy.deepcopy(next(r for r in records.values() if r["method"]["name"] == "none"))
    env, _, run = where(record)
    record["method"]["variant"] = "1a2b3c4d"
    record["metrics"]["forgetting"] = None
    data = marl_eval_data([record], ["v.yaml"])
    assert set(data[env]["_sequence"]) == {"qmix+none-1a2b3c4d"}
    assert set(data[env]["_sequence"]["qmix+none-1a2b3c4d"][run]["absolute_metrics"]) == {"auc", "performance"}
    record["curves"]["score"][3] = float("nan")
    with pytest.raises(RecordError, match=r"v\.yaml: curves row 3: score"):
        marl_eval_data([record], ["v.yaml"])


def test_one_environment_one_scenario_definition(records):
    first = next(r for r in records.values() if r["scenario"]["name"] == "matrix_drift")
    other = copy.deepcopy(first)
    other["seed"] = 99
    other["scenario"]["definition_hash"] = "0" * 64
    with pytest.raises(ExportError, match="a.yaml and b.yaml") as error:
        marl_eval_data([first, other], ["a.yaml", "b.yaml"])
    assert isinstance(error.value, CtmarlError)
