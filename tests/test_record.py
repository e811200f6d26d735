import os

import pytest
import yaml

from ctmarl.errors import OutputError, RecordError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.record import load_record, write_yaml_atomic


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    record, path = evaluate(RunSpec("matrix_drift", tier="smoke", seed=3), out)
    return record, path


def test_record_round_trips_and_validates(smoke_record):
    record, path = smoke_record
    assert path.name == "matrix_drift-v1_smoke_qmix_none_seed3.yaml"
    loaded = load_record(path)
    assert loaded == record
    assert len(loaded["R"]) == 6 and all(len(row) == 6 for row in loaded["R"])
    assert loaded["scenario"]["version"] == 1 and loaded["seed"] == 3
    assert set(loaded["metrics"]) >= {"performance", "auc", "auc_per_task", "forgetting"}
    assert loaded["provenance"]["device"] == "cpu"


def test_same_seed_same_numbers(smoke_record, tmp_path):
    record, _ = smoke_record
    again, _ = evaluate(RunSpec("matrix_drift", tier="smoke", seed=3), tmp_path)
    for key in ("curves", "R", "metrics", "config_hash"):
        assert again[key] == record[key], key
    other, _ = evaluate(RunSpec("matrix_drift", tier="smoke", seed=4), None)
    assert other["config_hash"] != record["config_hash"]


def test_record_file_honours_the_umask(smoke_record):
    _, path = smoke_record
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_edited_number_is_detected(smoke_record, tmp_path):
    _, path = smoke_record
    data = yaml.safe_load(path.read_text())
    data["metrics"]["auc"] = 0.999
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    with pytest.raises(RecordError, match="content_hash does not match"):
        load_record(edited)


@pytest.mark.parametrize("text, message", [
    ("a: [1,\n", "not valid YAML"),
    ("- 1\n- 2\n", "not a run record"),
    ("schema_version: 1\n", "missing key 'scenario'"),
])
def test_corrupt_records_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecordError, match=message):
        load_record(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Unrepresentable:
        pass

    with pytest.raises(Exception):
        write_yaml_atomic({"x": Unrepresentable()}, tmp_path / "r.yaml")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(OutputError):
        write_yaml_atomic({"x": 1}, tmp_path / "r.yaml")
