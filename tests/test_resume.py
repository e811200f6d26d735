"""A run killed or interrupted anywhere and resumed writes the record of an uninterrupted run, and
faults (NaN loss, full disk, Ctrl-C, a corrupt or foreign checkpoint) lose nothing (DESIGN.md §11).

In-process "crashes" raise from the progress callback, i.e. between two collections but before
that collection's checkpoint: the state of the process is then thrown away and a fresh ``prepare``
resumes from the file, exactly as after a kill. Two tests kill a real ``ctmarl evaluate``
subprocess (SIGKILL, SIGINT) at a random moment after its first checkpoint.
"""

import errno
import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ctmarl import checkpoint
from ctmarl.checkpoint import read_checkpoint
from ctmarl.cli import main
from ctmarl.errors import CheckpointError, NonFiniteLossError, OutputError, RunInterrupted
from ctmarl.evaluate import RunSpec, checkpoint_path, evaluate
from ctmarl.method import method_class
from ctmarl.record import load_record
from ctmarl.registry import METHODS
from ctmarl.scenario import make_scenario

#: Record fields holding what a run measured (wall time and provenance legitimately differ).
MEASURED = ("tasks", "config_hash", "curves", "R", "R_return", "metrics", "neurons", "method_summary")


def numbers(record: dict) -> dict:
    return {**{key: record.get(key) for key in MEASURED},
            "env_steps": record["timing"]["env_steps"], "updates": record["timing"]["updates"]}


@functools.cache
def _reference(spec: RunSpec) -> str:
    record, _ = evaluate(spec, None)
    return yaml.safe_dump(numbers(record))  # a string: cached results must not be mutable


def reference(spec: RunSpec) -> dict:
    """The numbers of the uninterrupted run."""
    return yaml.safe_load(_reference(spec))


class Crash(Exception):
    """Stands in for a kill: raised between two collections, before their checkpoint."""


def crash_after(collects: int):
    seen = 0

    def progress(*_):
        nonlocal seen
        seen += 1
        if seen == collects:
            raise Crash
    return progress


def crash_and_resume(spec: RunSpec, out, crashes: list[int], every: int) -> dict:
    """Crash after each number of collections in turn (each segment resuming the last), then run
    to the end; check the record against the uninterrupted run's and return it."""
    path = checkpoint_path(spec, out)
    resumed_at = []
    for collects in crashes:
        with pytest.raises(Crash):
            evaluate(spec, out, crash_after(collects), resume=True, checkpoint_every=every)
        assert path.exists() and not list(out.glob("*.yaml"))
        resumed_at.append(read_checkpoint(path)["env_steps"])
    record, record_path = evaluate(spec, out, resume=True, checkpoint_every=every)
    assert numbers(record) == reference(spec)
    assert record["provenance"]["resumed_at_env_steps"] == resumed_at
    assert load_record(record_path)["content_hash"] == record["content_hash"]
    assert not path.exists()  # the record is written: the checkpoint is gone
    return record


def loadable(name: str) -> None:
    try:
        method_class(name)
    except Exception as exc:  # another plug-in's missing module is not this test's failure
        pytest.skip(f"method {name} does not load: {exc}")


# --- every method, both learners, in process ---------------------------------------------------
@pytest.mark.parametrize("algo", METHODS.names())
def test_every_method_resumes_exactly(tmp_path, algo):
    loadable(algo)
    # matrix smoke: 16 collections of 32 env steps per task; the crash is in the third task,
    # after two task starts (where reset, injection and knife act).
    spec = RunSpec("matrix_drift", algo=algo, tier="smoke", seed=1, neuron_every_updates=8)
    crash_and_resume(spec, tmp_path, crashes=[41], every=256)


@pytest.mark.parametrize("algo", ["none", "reset", "knife"])
def test_qplex_resumes_exactly(tmp_path, algo):
    loadable(algo)
    spec = RunSpec("matrix_drift", algo=algo, tier="smoke", learner="qplex", seed=2, neuron_every_updates=8)
    crash_and_resume(spec, tmp_path, crashes=[23, 50], every=160)


def test_knife_growth_survives_two_restores_in_predator_prey(tmp_path):
    loadable("knife")
    spec = RunSpec("predator_prey_penalty", algo="knife", tier="smoke", seed=0, neuron_every_updates=5)
    # ~13 collections per task: the crashes fall in tasks 3 and 4, after growth at task starts.
    record = crash_and_resume(spec, tmp_path, crashes=[33, 14], every=500)
    grown_before_resume = [e for e in record["method_summary"]["events"] if e["task"] <= 2]
    assert grown_before_resume, "knife never grew before the first crash: the test lost its point"


# --- killed processes ----------------------------------------------------------------------------
def cli_command(out, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "ctmarl.cli", "evaluate", "--tier", "smoke", "--quiet",
            "--out", str(out), *args]


#: Bit-identical numbers need the thread count of the in-process reference (see conftest.py).
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize("learner, algo, sig", [
    ("qmix", "none", signal.SIGKILL),
    ("qplex", "reset", signal.SIGINT),
])
def test_killed_process_resumes_exactly(tmp_path, learner, algo, sig):
    spec = RunSpec("predator_prey_penalty", algo=algo, tier="smoke", learner=learner, seed=2)
    args = ["--scenario", spec.scenario, "--learner", learner, "--algo", algo, "--seed", "2",
            "--checkpoint-every", "300"]
    ckpt = checkpoint_path(spec, tmp_path)
    process = subprocess.Popen(cli_command(tmp_path, args), env=SINGLE_THREAD, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # rename is atomic: once it exists, it is whole
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        time.sleep(random.Random(f"{learner}-{algo}").uniform(0.0, 0.3))
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if sig == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert "checkpoint written to" in stderr and "run the same command with --resume" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not list(tmp_path.glob("*.yaml"))
    stopped_at = read_checkpoint(ckpt)["env_steps"]

    resumed = subprocess.run(cli_command(tmp_path, [*args, "--resume"]), env=SINGLE_THREAD,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    (path,) = tmp_path.glob("*.yaml")
    record = load_record(path)
    assert record["provenance"]["resumed_at_env_steps"] == [stopped_at]
    assert numbers(record) == reference(spec)
    assert not ckpt.exists()


# --- Ctrl-C and SIGTERM, in process ------------------------------------------------------------------
@pytest.mark.parametrize("sig, by, status", [(signal.SIGINT, "", 130), (signal.SIGTERM, " by SIGTERM", 143)])
def test_ctrl_c_or_sigterm_checkpoints_at_the_next_safe_point(tmp_path, sig, by, status):
    spec = RunSpec("matrix_drift", tier="smoke", seed=3)
    default = signal.getsignal(sig)
    seen = 0

    def send_signal(*_):
        nonlocal seen
        seen += 1
        if seen == 30:
            os.kill(os.getpid(), sig)

    with pytest.raises(RunInterrupted) as info:
        evaluate(spec, tmp_path, send_signal, checkpoint_every=10**9)  # no periodic checkpoint
    ckpt = checkpoint_path(spec, tmp_path)
    assert str(info.value) == (f"interrupted{by} at env step 960 (task 2/6 M2); checkpoint written to {ckpt}; "
                               "run the same command with --resume to continue")
    assert info.value.exit_status == status
    assert signal.getsignal(sig) is default  # the run's handler is gone
    assert read_checkpoint(ckpt)["env_steps"] == 30 * 32
    record, _ = evaluate(spec, tmp_path, resume=True)
    assert numbers(record) == reference(spec)


def test_no_checkpoints_when_switched_off(tmp_path):
    spec = RunSpec("matrix_drift", tier="smoke", seed=3)
    ckpt = checkpoint_path(spec, tmp_path)
    existed = []
    evaluate(spec, tmp_path, lambda *_: existed.append(ckpt.exists()), checkpoint_every=0)
    assert existed and not any(existed)


# --- bad input loses nothing ---------------------------------------------------------------------
def crashed_run(spec, out, every=64) -> bytes:
    with pytest.raises(Crash):
        evaluate(spec, out, crash_after(20), checkpoint_every=every)
    return checkpoint_path(spec, out).read_bytes()


def invoke(*args):
    return CliRunner().invoke(main, ["evaluate", "--tier", "smoke", "--quiet", *args])


def test_existing_checkpoint_is_never_overwritten_by_a_fresh_start(tmp_path):
    spec = RunSpec("matrix_drift", tier="smoke", seed=4)
    saved = crashed_run(spec, tmp_path)
    result = invoke("--scenario", "matrix_drift", "--seed", "4", "--out", str(tmp_path))
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line == (f"error: {checkpoint_path(spec, tmp_path)} holds a checkpoint of this run, left by an "
                    "interrupted run: pass --resume to continue it, or delete it to start over")
    assert checkpoint_path(spec, tmp_path).read_bytes() == saved


def test_corrupt_checkpoint_is_one_error_line_and_stays(tmp_path):
    spec = RunSpec("matrix_drift", tier="smoke", seed=4)
    saved = crashed_run(spec, tmp_path)
    ckpt = checkpoint_path(spec, tmp_path)
    ckpt.write_bytes(saved[: len(saved) // 3])
    result = invoke("--scenario", "matrix_drift", "--seed", "4", "--out", str(tmp_path), "--resume")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: checkpoint {ckpt} is corrupt or truncated (")
    assert ckpt.read_bytes() == saved[: len(saved) // 3] and not list(tmp_path.glob("*.yaml"))


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    result = invoke("--scenario", "matrix_drift", "--seed", "3", "--out", str(tmp_path), "--resume")
    assert result.exit_code == 0, result.output
    assert "note: no checkpoint at " in result.output and ": starting from the beginning" in result.output
    (path,) = tmp_path.glob("*.yaml")
    assert numbers(load_record(path)) == reference(RunSpec("matrix_drift", tier="smoke", seed=3))


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    spec = RunSpec("matrix_drift", tier="smoke", seed=4, neuron_every_updates=8)
    saved = crashed_run(spec, tmp_path)
    other = RunSpec("matrix_drift", tier="smoke", seed=4, neuron_every_updates=16)
    with pytest.raises(CheckpointError, match=r"was written by a different run \(neuron_every_updates: "
                                              r"checkpoint 8, requested 16\); refusing to resume"):
        evaluate(other, tmp_path, resume=True)
    assert checkpoint_path(spec, tmp_path).read_bytes() == saved


def test_checkpoint_of_an_edited_scenario_is_refused(tmp_path):
    # The same scenario file, edited between the crash and the resume (two folders: scenarios are
    # cached by path within a process).
    text = Path(make_scenario("matrix_drift").source).read_text()
    original, edited = tmp_path / "a" / "matrix_drift.yaml", tmp_path / "b" / "matrix_drift.yaml"
    for path, content in ((original, text), (edited, text.replace("eval_episodes: 8", "eval_episodes: 4"))):
        path.parent.mkdir()
        path.write_text(content)
    out = tmp_path / "runs"
    saved = crashed_run(RunSpec(str(original), tier="smoke", seed=4), out)
    with pytest.raises(CheckpointError) as info:
        evaluate(RunSpec(str(edited), tier="smoke", seed=4), out, resume=True)
    assert "config_hash: checkpoint" in str(info.value) and "scenario_definition_hash: checkpoint" in str(info.value)
    assert checkpoint_path(RunSpec(str(original), tier="smoke", seed=4), out).read_bytes() == saved


# --- faults during the run -----------------------------------------------------------------------
def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    # Task 2 pays 1e30: its squared TD error overflows float32, the loss becomes inf.
    scenario = {
        "name": "blowup", "version": 1, "description": "a payoff too large for float32",
        "env": {"family": "matrix"},
        "tasks": [{"name": "sane", "settings": {"payoff": [[1, 0], [0, 2]]}},
                  {"name": "huge", "settings": {"payoff": [[1e30, 0], [0, 2]]}}],
        "protocol": {"evals_per_task": 4, "eval_episodes": 4},
        "tiers": {tier: {"env_steps_per_task": 256, "num_envs": 16,
                         "learner": {"batch_size": 16, "buffer_episodes": 64}}
                  for tier in ("smoke", "quick", "standard")},
    }
    yaml_path = tmp_path / "blowup.yaml"
    yaml_path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / "runs"
    result = invoke("--scenario", str(yaml_path), "--out", str(out), "--checkpoint-every", "64")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    ckpt = checkpoint_path(RunSpec(str(yaml_path), tier="smoke"), out)
    # 16 episodes per collection; the first collection of task 2 (env step 272) has update 17.
    assert line == (f"error: the TD loss became inf at update 17 (env step 272, task 2/2 huge); training "
                    f"stopped; its last checkpoint (env step 256) is kept at {ckpt}")
    assert read_checkpoint(ckpt)["env_steps"] == 256 and not list(out.glob("*.yaml"))
    with pytest.raises(NonFiniteLossError):  # deterministic: resuming meets it again
        evaluate(RunSpec(str(yaml_path), tier="smoke"), out, resume=True, checkpoint_every=64)
    assert read_checkpoint(ckpt)["env_steps"] == 256


def test_disk_full_mid_run_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    spec = RunSpec("matrix_drift", tier="smoke", seed=5)
    real, calls = checkpoint._serialise, []

    def fill_disk_at_third(data, handle):
        calls.append(data["env_steps"])
        if len(calls) == 3:
            handle.write(b"some bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(data, handle)

    monkeypatch.setattr(checkpoint, "_serialise", fill_disk_at_third)
    with pytest.raises(OutputError, match=r"No space left on device \(the previous checkpoint is intact\)"):
        evaluate(spec, tmp_path, checkpoint_every=128)
    assert calls == [128, 256, 384]
    assert read_checkpoint(checkpoint_path(spec, tmp_path))["env_steps"] == 256
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".progress.csv"))  # the live log stays
    assert kept == [checkpoint_path(spec, tmp_path).name]
    monkeypatch.setattr(checkpoint, "_serialise", real)
    record, _ = evaluate(spec, tmp_path, resume=True, checkpoint_every=128)
    assert numbers(record) == reference(spec)


def test_failed_record_write_keeps_the_finished_run(tmp_path, monkeypatch):
    import ctmarl.evaluate as evaluate_module

    spec = RunSpec("matrix_drift", tier="smoke", seed=5)

    def disk_full(record, folder):
        raise OutputError(f"cannot write {folder}/x.yaml: No space left on device")

    monkeypatch.setattr(evaluate_module, "write_record", disk_full)
    with pytest.raises(OutputError) as info:
        evaluate(spec, tmp_path)
    ckpt = checkpoint_path(spec, tmp_path)
    assert str(info.value).endswith(f"the finished run was checkpointed to {ckpt}: make room and run the "
                                    "same command with --resume to write its record without training again")
    monkeypatch.undo()
    collections = []
    record, _ = evaluate(spec, tmp_path, lambda *args: collections.append(args), resume=True)
    assert collections == []  # nothing trained again
    assert numbers(record) == reference(spec)
    assert record["provenance"]["resumed_at_env_steps"] == [6 * 512]
