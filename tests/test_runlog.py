"""Live logs (ctmarl.runlog), progress outside a terminal (ctmarl.progress) and SIGTERM: views of a
run's numbers that must equal its record, survive a kill and a resume without duplicates, and a
scheduler's SIGTERM that checkpoints like Ctrl-C."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from ctmarl.checkpoint import read_checkpoint
from ctmarl.cli import main
from ctmarl.errors import CtmarlError, RunInterrupted
from ctmarl.evaluate import RunSpec, checkpoint_path, evaluate
from ctmarl.progress import ProgressLines, duration
from ctmarl.record import load_record
from ctmarl.runlog import CSV_COLUMNS, parse_loggers

SPEC = RunSpec("matrix_drift", algo="redo", tier="smoke", seed=4)
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def log_path(spec, out):
    return checkpoint_path(spec, out).with_suffix(".progress.csv")


def evaluations(rows) -> list[tuple]:
    """(env_step, task, score, return) per evaluation, from the eval rows (score row then return row)."""
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["metric"] for r in evals] == ["score", "return"] * (len(evals) // 2)
    return [(int(s["env_step"]), int(s["task"]), round(float(s["value"]), 6), round(float(r["value"]), 6))
            for s, r in zip(evals[::2], evals[1::2])]


def record_evaluations(record) -> list[tuple]:
    c = record["curves"]
    return list(zip(c["env_step"], c["task"], c["score"], c["return"]))


def without_wall_time(rows):
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


# --- what the CSV holds ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logged")
    record, path = evaluate(SPEC, out, log=("csv",))
    return record, csv_rows(log_path(SPEC, out))


def test_csv_evaluations_equal_the_record_curves(logged_run):
    record, rows = logged_run
    assert evaluations(rows) == record_evaluations(record)
    assert len(evaluations(rows)) == len(record["curves"]["score"]) > 0


def test_csv_task_end_rows_equal_the_record_R(logged_run):
    record, rows = logged_run
    r_rows = [r for r in rows if r["kind"] == "R"]
    n = len(record["tasks"])
    assert len(r_rows) == n * n
    logged = [[round(float(r_rows[k * n + j]["value"]), 6) for j in range(n)] for k in range(n)]
    assert logged == record["R"]
    assert [int(r_rows[k * n]["task"]) for k in range(n)] == list(range(n))


def test_csv_train_neuron_and_method_rows(logged_run):
    record, rows = logged_run
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["metric"] for r in train} >= {"loss", "epsilon"}
    assert all(int(r["update"]) % 50 == 0 for r in train)
    neurons = {r["metric"] for r in rows if r["kind"] == "neurons"}
    groups = record["neurons"]["groups"]
    assert neurons == {f"{g}/{k}" for g in groups for k in ("stagnant_ratio", "dormant_ratio", "grama_ratio")}
    method = [r for r in rows if r["kind"] == "method" and r["metric"] == "neurons_recycled_total"]
    assert float(method[-1]["value"]) == record["method_summary"]["neurons_recycled_total"]
    steps = [int(r["env_step"]) for r in rows]
    assert steps == sorted(steps)


def test_no_log_when_switched_off(tmp_path):
    evaluate(SPEC, tmp_path, log=())
    assert [p.suffix for p in tmp_path.iterdir()] == [".yaml"]


# --- killed and resumed: each row once -------------------------------------------------------------
class Crash(Exception):
    pass


def test_killed_and_resumed_csv_has_each_row_once(tmp_path, logged_run):
    _, reference_rows = logged_run
    seen = 0

    def crash(*_):
        nonlocal seen
        seen += 1
        if seen in (23, 61):
            raise Crash

    for _ in range(2):
        with pytest.raises(Crash):
            evaluate(SPEC, tmp_path, crash, resume=True, checkpoint_every=300, log=("csv",))
        # the log holds rows past the checkpoint, which the resumed run will emit again
        assert len(csv_rows(log_path(SPEC, tmp_path))) > 0
    evaluate(SPEC, tmp_path, crash, resume=True, checkpoint_every=300, log=("csv",))
    rows = csv_rows(log_path(SPEC, tmp_path))
    assert without_wall_time(rows) == without_wall_time(reference_rows)


def crash_after_two(*_, seen=[]):
    seen.append(1)
    if len(seen) % 2 == 0:  # after the first collection's checkpoint
        raise Crash


def test_a_log_that_is_not_ours_is_not_truncated(tmp_path):
    with pytest.raises(Crash):
        evaluate(SPEC, tmp_path, crash_after_two, resume=True, checkpoint_every=32, log=("csv",))
    log_path(SPEC, tmp_path).write_text("something else\n1,2,3\n")
    with pytest.raises(CtmarlError, match="not a ctmarl progress log"):
        evaluate(SPEC, tmp_path, resume=True, checkpoint_every=32, log=("csv",))
    assert log_path(SPEC, tmp_path).read_text() == "something else\n1,2,3\n"


# --- TensorBoard and W&B ---------------------------------------------------------------------------
def test_tensorboard_events_load_with_tensorboards_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record, _ = evaluate(SPEC, tmp_path, log=("csv", "tensorboard"))
    folder = checkpoint_path(SPEC, tmp_path).with_suffix(".tb")
    events = EventAccumulator(str(folder))
    events.Reload()
    scores = [(e.step, round(e.value, 6)) for e in events.Scalars("eval/score")]
    assert scores == list(zip(record["curves"]["env_step"], record["curves"]["score"]))
    assert "train/loss" in events.Tags()["scalars"]


def test_missing_logger_package_fails_before_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", "--scenario", "matrix_drift", "--tier", "smoke",
                                       "--out", str(out), "--log", "csv,wandb"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --log wandb needs the wandb package, which is not installed: pip install wandb  "
        "(or: pip install 'ctmarl[wandb]')"]
    assert not out.exists()


def test_unknown_logger_is_one_error_line():
    with pytest.raises(CtmarlError, match="unknown logger.*'mlflow'.*known: csv, tensorboard, wandb"):
        parse_loggers("csv,mlflow")
    assert parse_loggers("none") == () and parse_loggers("CSV, tensorboard,csv") == ("csv", "tensorboard")


def test_log_files_beside_records_are_not_taken_for_records(tmp_path):
    from ctmarl.leaderboard import record_files

    evaluate(SPEC, tmp_path, log=("csv",))
    (tmp_path / "x.tb").mkdir()
    (tmp_path / "x.tb" / "events.out.tfevents.1").write_bytes(b"")
    assert [p.suffix for p in record_files(tmp_path)] == [".yaml"]


# --- progress lines --------------------------------------------------------------------------------
def test_progress_lines_at_task_starts_and_every_n_seconds():
    now = [0.0]
    lines = []
    progress = ProgressLines("run", total=400, n_tasks=2, every_s=10, echo=lines.append, clock=lambda: now[0])
    for step, (task, t) in enumerate([(0, 1), (0, 5), (0, 12), (1, 13), (1, 14)]):
        now[0] = t
        progress(40, task, f"T{task}", 0.5)
    assert [line.split(":")[1].split("  ")[0].strip() for line in lines] == ["task 1/2 T0", "task 1/2 T0", "task 2/2 T1"]
    assert lines[1] == "run: task 1/2 T0  120/400 env steps (30%)  score 0.500  10 env steps/s  ETA 28s"
    assert duration(3 * 3600 + 5 * 60 + 2) == "3h05m" and duration(252) == "4m12s"


def test_progress_lines_on_stderr_that_is_not_a_terminal(tmp_path):
    log = tmp_path / "err.log"
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-m", "ctmarl.cli", "evaluate", "--scenario", "matrix_drift",
                               "--tier", "smoke", "--out", str(tmp_path / "out"), "--progress-every", "0"],
                              stderr=err, stdout=subprocess.PIPE, env=SINGLE_THREAD, timeout=300, check=False)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if line.startswith("matrix_drift-v1 smoke qmix+none seed 0: task ")]
    assert len(lines) == 3072 // 32  # one per collection with --progress-every 0
    assert lines[-1].startswith("matrix_drift-v1 smoke qmix+none seed 0: task 6/6 M1-return  3072/3072 env steps (100%)")


def test_quiet_run_prints_nothing(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--quiet",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0 and result.output == ""
    assert len(list(tmp_path.glob("*.yaml"))) == 1 and len(list(tmp_path.glob("*.progress.csv"))) == 1


# --- SIGTERM (in process: tests/test_resume.py) ---------------------------------------------------
#: Starts a command with SIGINT ignored, as a non-interactive shell starts a job with `&` (the
#: disposition survives exec; no preexec_fn, which is unsafe in this multithreaded process).
IGNORING_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.argv[1], sys.argv[1:])"]


def signal_after_checkpoint(command, ckpt, *signals, seconds=240) -> tuple[int, str]:
    """Start ``command``, wait for its checkpoint ``ckpt``, send ``signals`` (0.2 s apart), return
    (exit status, stderr)."""
    process = subprocess.Popen(command, env=SINGLE_THREAD, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + seconds
        while not ckpt.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{ckpt} did not appear"
            time.sleep(0.01)
        for sig in signals:
            assert process.poll() is None, "the run ended before the signal"
            process.send_signal(sig)
            time.sleep(0.2)
        _, stderr = process.communicate(timeout=seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


def test_background_run_with_sigint_ignored_stops_cleanly_on_sigterm(tmp_path):
    spec = RunSpec("predator_prey_penalty", tier="smoke", seed=1)
    args = [sys.executable, "-m", "ctmarl.cli", "evaluate", "--scenario", spec.scenario, "--tier", "smoke",
            "--seed", "1", "--out", str(tmp_path), "--checkpoint-every", "300"]
    ckpt = checkpoint_path(spec, tmp_path)
    # SIGINT first: ignored, as in the background of a script; then SIGTERM stops the run.
    returncode, stderr = signal_after_checkpoint([*IGNORING_SIGINT, *args], ckpt, signal.SIGINT, signal.SIGTERM)
    assert returncode == 143, stderr
    assert "interrupted by SIGTERM at env step" in stderr and "--resume" in stderr
    assert "task 1/" in stderr  # progress lines (stderr is a pipe, not a terminal)
    stopped_at = read_checkpoint(ckpt)["env_steps"]
    resumed = subprocess.run([*args, "--resume", "--quiet"], env=SINGLE_THREAD, capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    (path,) = tmp_path.glob("*.yaml")
    record = load_record(path)
    assert record["provenance"]["resumed_at_env_steps"] == [stopped_at]
    rows = csv_rows(log_path(spec, tmp_path))
    assert evaluations(rows) == record_evaluations(record)  # resumed: each evaluation exactly once


def test_sigterm_to_a_pool_sweep_checkpoints_its_runs(tmp_path):
    args = [sys.executable, "-m", "ctmarl.cli", "evaluate", "--scenario", "predator_prey_penalty", "--tier",
            "smoke", "--seed", "0", "--seed", "1", "--workers", "2", "--out", str(tmp_path),
            "--checkpoint-every", "300"]
    first = checkpoint_path(RunSpec("predator_prey_penalty", tier="smoke", seed=0), tmp_path)
    returncode, stderr = signal_after_checkpoint(args, first, signal.SIGTERM)  # to the parent only, as a scheduler may
    assert returncode == 130, stderr
    assert "sweep interrupted" in stderr
    assert not list(tmp_path.glob("*.yaml")) or len(list(tmp_path.glob("*.yaml"))) < 2
    assert first.exists()
    again = subprocess.run([*args, "--quiet"], env=SINGLE_THREAD, capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert len(list(tmp_path.glob("*.yaml"))) == 2
    assert not list(tmp_path.glob("*.ckpt"))


def test_a_stopped_pool_sweep_starts_none_of_its_queued_runs(tmp_path):
    """The pool queues the next runs in its workers' call queue before the running ones end;
    cancel_futures cannot take those back, so a worker stopped by SIGTERM must refuse them."""
    seeds = [0, 1, 2, 3]  # 2 workers: seeds 0 and 1 run, seeds 2 and 3 wait in the call queue
    args = [sys.executable, "-m", "ctmarl.cli", "evaluate", "--scenario", "predator_prey_penalty", "--tier",
            "smoke", *[f"--seed={s}" for s in seeds], "--workers", "2", "--out", str(tmp_path),
            "--checkpoint-every", "300"]
    spec = {s: RunSpec("predator_prey_penalty", tier="smoke", seed=s) for s in seeds}
    returncode, stderr = signal_after_checkpoint(args, checkpoint_path(spec[0], tmp_path), signal.SIGTERM)
    assert returncode == 130, stderr
    for s in (2, 3):
        started = [p.name for p in tmp_path.iterdir() if f"_seed{s}." in p.name]
        assert started == [], f"seed {s} started after the sweep was stopped: {started}\n{stderr}"
    assert checkpoint_path(spec[0], tmp_path).exists()
