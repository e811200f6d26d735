import copy

import pytest
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.report import continual_summary, find_scratch, neuron_ratios_by_task


@pytest.fixture(scope="module")
def record_and_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return evaluate(RunSpec("matrix_drift", tier="smoke", seed=0, neuron_every_updates=8), out)


def test_neuron_metrics_are_logged_for_every_group(record_and_path):
    record, _ = record_and_path
    log = record["neurons"]
    assert log["every_updates"] == 8 and log["update"][:2] == [8, 16]
    assert set(log["groups"]) == {"agent.fc1", "mixer.hyper_w1.0", "mixer.hyper_w_final.0", "mixer.V.0"}
    for columns in log["groups"].values():
        assert len(columns["stagnant_ratio"]) == len(log["update"])
        assert all(0.0 <= v <= 1.0 for v in columns["dormant_ratio"])
    by_task = neuron_ratios_by_task(record)
    assert set(by_task) == {"agent", "mixer", "all"}
    assert len(by_task["mixer"]["stagnant_ratio"]) == 6


def test_metrics_logging_does_not_change_the_run(record_and_path):
    record, _ = record_and_path
    silent, _ = evaluate(RunSpec("matrix_drift", tier="smoke", seed=0, neuron_every_updates=0), None)
    assert silent["curves"] == record["curves"] and silent["R"] == record["R"]
    assert silent["neurons"]["update"] == []


def test_plasticity_ratio_needs_the_scratch_record(record_and_path):
    record, _ = record_and_path
    assert find_scratch(record, [record]) is None
    missing = continual_summary(record, None)
    assert missing["plasticity_ratio"].startswith("n/a: no reset_all record for matrix_drift-v1 smoke qmix seed 0")
    scratch = copy.deepcopy(record)
    scratch["method"]["name"] = "reset_all"
    scratch["metrics"]["auc_per_task"] = [1.0] * 6
    assert find_scratch(record, [record, scratch]) is scratch
    summary = continual_summary(record, scratch)
    assert summary["plasticity_ratio_per_task"] == pytest.approx(record["metrics"]["auc_per_task"])
    assert summary["forward_transfer_per_task"] == [None] * 6


def test_plot_command_writes_pngs_data_and_summary(record_and_path, tmp_path):
    _, path = record_and_path
    result = CliRunner().invoke(main, ["plot", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = {p.name.removeprefix(path.stem) for p in tmp_path.iterdir()}
    assert names == {"_curves.png", "_curves.csv", "_neurons.png", "_neurons.csv", "_R.png", "_R.csv",
                     "_probe.png", "_probe.csv", "_summary.yaml"}
    assert "plasticity_ratio: 'n/a: no reset_all record" in result.output
