"""Sweeps (``ctmarl.sweep`` and the sweep form of ``ctmarl evaluate``).

A sweep is validated whole before any run; runs on a process pool or Ray give the same records as
in-process runs; a killed sweep resumes to the records an uninterrupted one writes; a failing run is
reported and the others finish; a worker process that dies is retried, then reported.

The test-only methods below are imported by worker processes as ``test_sweep:<Class>``: pool workers
inherit this process's ``sys.path``; Ray workers get the tests folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.errors import ConfigError, CtmarlError, UnknownNameError
from ctmarl.method import Method
from ctmarl.record import load_record
from ctmarl.sweep import (
    DONE, FAILED, SKIPPED, InlineExecutor, PoolExecutor, SweepSpec, expand, load_sweep_file, make_executor, plan,
    run_sweep,
)

TESTS = Path(__file__).resolve().parent
#: 2 methods x 2 seeds of matrix_drift's smoke tier, as command-line options.
AXES = ["--scenario", "matrix_drift", "--tier", "smoke", "--algo", "none", "--algo", "reset",
        "--seed", "0", "--seed", "1"]
SMALL = SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), algos=("none", "reset"), seeds=(0, 1))
#: Record fields that hold what a run measured (not when, where or how fast).
NUMBERS = ("config_hash", "seed", "tasks", "curves", "R", "R_return", "metrics", "neurons", "method_summary")


def numbers(record: dict) -> dict:
    return {key: record.get(key) for key in NUMBERS}


def records(folder: Path) -> dict[str, dict]:
    return {path.name: load_record(path) for path in sorted(folder.glob("*.yaml"))}


# --- test-only methods -----------------------------------------------------------------------------

class FailsAtSecondTask(Method):
    """Passes every check before the run and fails while training."""

    def on_task_start(self, task_index: int) -> None:
        if task_index == 1:
            raise RuntimeError("deliberate failure at the start of task 2")


@dataclass(frozen=True)
class MarkerConfig:
    marker: str = ""
    """A file whose existence means the worker already died once."""


class DiesOnce(Method):
    """Kills its worker process the first time (the marker file remembers), then trains normally."""

    Config = MarkerConfig

    def on_task_start(self, task_index: int) -> None:
        marker = Path(self.config.marker)
        if task_index == 1 and not marker.exists():
            marker.write_text("died once")
            os._exit(3)


class AlwaysDies(Method):
    def on_task_start(self, task_index: int) -> None:
        os._exit(3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The small sweep run in this process, one run after another (torch pinned to 1 thread by conftest)."""
    out = tmp_path_factory.mktemp("reference")
    report = run_sweep(plan(SMALL, out), out, InlineExecutor(threads=1))
    assert [o.status for o in report.outcomes] == [DONE] * 4
    return records(out)


# --- the sweep's definition and validation ---------------------------------------------------------

def test_expand_is_the_product_in_a_fixed_order_without_duplicates():
    sweep = SweepSpec(scenarios=("matrix_drift",), tiers=("smoke", "quick"), algos=("none", "reset", "none"),
                      seeds=(1, 0))
    runs = [(r.tier, r.algo, r.seed) for r in expand(sweep)]
    assert runs == [("smoke", "none", 1), ("smoke", "none", 0), ("smoke", "reset", 1), ("smoke", "reset", 0),
                    ("quick", "none", 1), ("quick", "none", 0), ("quick", "reset", 1), ("quick", "reset", 0)]


def test_sweep_file_with_overrides_and_relative_method_configs(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"scenarios": ["matrix_drift"], "tiers": ["smoke"], "algos": ["none"],
                                    "seeds": [0, 1, 2], "method_configs": {"none": "configs/none.yaml"}}))
    sweep = load_sweep_file(path, {"seeds": (5,)})
    assert sweep.seeds == (5,) and sweep.algos == ("none",)
    assert sweep.method_configs["none"] == str(tmp_path / "configs" / "none.yaml")
    path.write_text(yaml.safe_dump({"scenarios": ["matrix_drift"], "seed": [0]}))
    with pytest.raises(ConfigError, match=r"sweep.yaml: unknown key 'seed'; allowed keys: algos, "):
        load_sweep_file(path)


@pytest.mark.parametrize("args, message", [
    (["--algo", "magic"], "error: unknown method 'magic'; known: "),
    (["--tier", "huge"], "error: unknown tier 'huge'; known: smoke, quick, standard"),
    (["--scenario", "nope"], "error: unknown scenario 'nope'; known: "),
    (["--learner", "vdn9"], "error: unknown learner 'vdn9'; known: "),
])
def test_any_bad_value_fails_the_whole_sweep_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", *AXES, *args, "--workers", "2", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not out.exists()


def test_a_config_that_fits_no_combination_is_named_with_it(tmp_path):
    config = tmp_path / "method.yaml"
    config.write_text("bogus_key: 1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", *AXES, "--method-config", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: matrix_drift-v1 smoke qmix+none: ") and "bogus_key" in result.output
    assert not out.exists()


def test_executor_choices_are_checked(tmp_path):
    with pytest.raises(CtmarlError, match="--workers 3 needs pool or ray"):
        make_executor("inline", workers=3)
    with pytest.raises(CtmarlError, match="--address is for the ray executor"):
        make_executor("pool", workers=2, address="auto")
    assert isinstance(make_executor(None, workers=2), PoolExecutor)
    assert isinstance(make_executor(None), InlineExecutor)
    with pytest.raises(UnknownNameError):
        plan(SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), learners=("nope",)), tmp_path)


def test_the_ray_executor_without_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(main, ["evaluate", *AXES, "--executor", "ray", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == 'error: the ray executor needs Ray: pip install "ctmarl[ray]" (or pip install "ray>=2.9")'
    assert not (tmp_path / "out").exists()


# --- kill and resume on a process pool -------------------------------------------------------------

def _sweep_command(out: Path) -> list[str]:
    # Checkpoints every 8 collections, so a run cut short leaves one to resume from.
    return [sys.executable, "-m", "ctmarl.cli", "evaluate", *AXES, "--workers", "2", "--checkpoint-every", "256",
            "--out", str(out)]


def test_killed_pool_sweep_resumes_to_the_records_of_an_uninterrupted_one(tmp_path, reference):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sweep = subprocess.Popen(_sweep_command(out), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (list(out.glob("*.yaml")) and list(out.glob("*.ckpt"))) and sweep.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)  # the CLI and its pool workers: one process group
        sweep.wait()
    survivors = {path.name: path.read_bytes() for path in out.glob("*.yaml")}
    assert 1 <= len(survivors) < 4, f"the sweep was not killed mid-way: {sorted(survivors)}"
    cut_short = [path.with_suffix(".yaml").name for path in out.glob("*.ckpt")]

    # The same command again (in this process: it is the same code path, without a second start-up).
    resumed = CliRunner().invoke(main, _sweep_command(out)[3:])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count(" skipped ") == len(survivors)
    for name, content in survivors.items():
        assert (out / name).read_bytes() == content  # skipped runs are not written again
    finished = records(out)
    assert sorted(finished) == sorted(reference)
    for name, record in finished.items():
        assert numbers(record) == numbers(reference[name]), name
        assert record["provenance"]["torch_threads"] == 1
        if name in cut_short:  # continued from the checkpoint the kill left, to the same numbers
            assert record["provenance"]["resumed_at_env_steps"], name
    assert not list(out.glob("*.ckpt")) and not list(out.glob(".*.tmp"))


# --- failures ----------------------------------------------------------------------------------------

def test_failed_run_is_reported_and_the_others_finish_with_a_dying_worker_retried(tmp_path):
    config = tmp_path / "dies_once.yaml"
    config.write_text(yaml.safe_dump({"marker": str(tmp_path / "died")}))
    sweep = SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",),
                      algos=("none", "test_sweep:FailsAtSecondTask", "test_sweep:DiesOnce"), seeds=(0,),
                      neuron_every=0, method_configs={"test_sweep:DiesOnce": str(config)})
    out = tmp_path / "out"
    report = run_sweep(plan(sweep, out), out, PoolExecutor(workers=2, retries=1))
    statuses = {o.label.split("+")[1]: o.status for o in report.outcomes}
    assert statuses == {"none seed 0": DONE, "test_sweep:FailsAtSecondTask seed 0": FAILED,
                        "test_sweep:DiesOnce seed 0": DONE}
    (failed,) = report.failed
    assert failed.error == ("PluginError: method 'test_sweep:FailsAtSecondTask' raised RuntimeError in on_task_start "
                            "at task 1 (M2): deliberate failure at the start of task 2")
    log = next(out.glob("*FailsAtSecondTask*.error.log")).read_text()
    assert "Traceback" in log and "deliberate failure" in log
    assert (tmp_path / "died").exists()  # the worker did die, and the retry finished the run
    assert len(list(out.glob("*.yaml"))) == 2


def test_cli_reports_a_failed_run_and_exits_nonzero(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--algo", "none",
                                       "--algo", "test_sweep:FailsAtSecondTask", "--neuron-every", "0",
                                       "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "raised RuntimeError in on_task_start at task 1 (M2): deliberate failure at the start of task 2" in result.output
    assert "sweep finished: 1 done, 1 failed" in result.output
    assert [p.name for p in out.glob("*.yaml")] == ["matrix_drift-v1_smoke_qmix_none_seed0.yaml"]


def test_a_record_of_another_configuration_is_not_taken_as_done(tmp_path, reference):
    out = tmp_path / "out"
    out.mkdir()
    name = "matrix_drift-v1_smoke_qmix_none_seed0.yaml"
    runs = plan(SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), seeds=(0,)), out)
    (out / name).write_text(yaml.safe_dump(reference[name], sort_keys=False))
    assert [o.status for o in run_sweep(runs, out, InlineExecutor(threads=1)).outcomes] == [SKIPPED]
    other = plan(SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), seeds=(0,), neuron_every=0), out)
    notes = []
    report = run_sweep(other, out, InlineExecutor(threads=1), on_note=lambda run, note: notes.append(note))
    assert [o.status for o in report.outcomes] == [DONE]
    assert "neuron-metrics interval differs" in notes[0]


# --- Ray ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # Ray workers start from the raylet's environment: give them the test-only methods' folder.
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), previous) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    yield ray
    ray.shutdown()


# ray.init starts its processes with fork+exec; JAX (imported by other test modules) warns on any fork.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_ray_executor_gives_the_same_records_and_retries_or_reports_dead_workers(tmp_path, reference, ray_instance):
    from ctmarl.sweep import RayExecutor

    out = tmp_path / "out"
    report = run_sweep(plan(SMALL, out), out, RayExecutor(retries=1))
    assert [o.status for o in report.outcomes] == [DONE] * 4
    finished = records(out)
    assert {name: numbers(r) for name, r in finished.items()} == {name: numbers(r) for name, r in reference.items()}

    config = tmp_path / "dies_once.yaml"
    config.write_text(yaml.safe_dump({"marker": str(tmp_path / "died")}))
    dying = SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), seeds=(0,), neuron_every=0,
                      algos=("test_sweep:DiesOnce", "test_sweep:AlwaysDies"),
                      method_configs={"test_sweep:DiesOnce": str(config)})
    report = run_sweep(plan(dying, out), out, RayExecutor(retries=1))
    once, always = report.outcomes
    assert once.status == DONE and (tmp_path / "died").exists()
    assert always.status == FAILED and "Ray could not complete it after 1 retries" in always.error


def test_inline_executor_runs_at_the_asked_thread_count_and_restores_the_callers(tmp_path, monkeypatch):
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # configure_process sets them; undone after the test
        monkeypatch.setenv(name, "1")
    before = torch.get_num_threads()
    one = SweepSpec(scenarios=("matrix_drift",), tiers=("smoke",), algos=("none",), seeds=(0,))
    report = run_sweep(plan(one, tmp_path), tmp_path, InlineExecutor(threads=before + 1))
    assert [o.status for o in report.outcomes] == [DONE]
    (record,) = records(tmp_path).values()
    assert record["provenance"]["torch_threads"] == before + 1
    assert torch.get_num_threads() == before
