"""The GPU machine's check script (benchmarks/device/gpu_check.py) keeps working without a GPU: its
plan and time-boxing, its report, and its checks at the smallest sizes on the CPU."""

import importlib.util
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def tiny_plan(gc, tmp_path, **changes):
    plan = gc.make_plan("cpu", True, tmp_path / "out", tmp_path / "work")
    (plan.work / "results").mkdir(parents=True)
    plan.out.mkdir(parents=True)
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


def report_of(plan) -> str:
    return (plan.out / "report.md").read_text()


def test_plans_cover_every_check_and_fit_one_device_call(gc, tmp_path):
    real = gc.make_plan("cuda", False, tmp_path, tmp_path)
    quick = gc.make_plan("cpu", True, tmp_path, tmp_path)
    assert set(gc.CHECKS) == set(gc.CHECK_FUNCTIONS) == set(real.budgets) == set(quick.budgets) == set(gc.TITLES)
    # a device command runs at most 600 s: the checks, the install and the kill grace must fit
    assert real.budget_s + gc.KILL_GRACE_S + 60 <= 600
    assert real.smoke_scenarios is None and set(real.smoke_methods) == {"none", "knife", "redo", "injection"}
    assert real.concurrency_ns == (1, 2, 4, 8) and real.concurrency_tier == "standard"
    # the dry run takes the same steps, smaller
    assert set(quick.smoke_methods) <= set(real.smoke_methods)
    assert quick.pp_num_envs and quick.smax_num_envs and quick.resume_runs and len(quick.concurrency_ns) > 1


def test_allot_cuts_a_budget_to_what_is_left(gc, tmp_path):
    plan = gc.make_plan("cuda", False, tmp_path, tmp_path)
    assert gc.allot("smoke", plan, 10_000) == plan.budgets["smoke"]
    assert gc.allot("smoke", plan, 30.0) == 30.0
    assert gc.allot("smoke", plan, gc.MIN_CHECK_S - 1) is None


def test_run_all_time_boxes_skips_and_reports(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_CHECK_S", 0.05)
    plan = gc.make_plan("cpu", True, tmp_path / "out", tmp_path / "work", budget_s=0.5)
    plan.budgets = {check: 0.2 for check in gc.CHECKS}
    calls = []

    def launch(check, plan, budget, argv):
        calls.append((check, budget))
        (plan.work / "records" / check).mkdir(parents=True, exist_ok=True)
        (plan.work / "records" / check / "r.yaml").write_text("a: 1\n")
        (plan.work / "results" / f"{check}.json").write_text(json.dumps({"x": 1}))
        time.sleep(0.2)
        return ("killed: out of time (budget 0 s)" if check == "smoke" else "ok"), 0.2

    statuses = gc.run_all(plan, gc.CHECKS, ["--quick"], launch)
    ran = [check for check, _ in calls]
    assert ran == list(gc.CHECKS[: len(ran)]) and 2 <= len(ran) < len(gc.CHECKS)
    assert all(budget <= 0.2 for _, budget in calls)
    assert statuses["smoke"].startswith("killed")
    assert all(statuses[check] == "skipped: out of time" for check in gc.CHECKS[len(ran):])
    report = report_of(plan)
    for text in ("skipped: out of time", "killed: out of time", "## Summary", "## " + gc.TITLES["concurrency"]):
        assert text in report
    assert set(json.loads((plan.out / "results.json").read_text())) == set(ran)
    with tarfile.open(plan.out / "records.tar.gz") as archive:
        assert sorted(archive.getnames()) == sorted(f"{check}/r.yaml" for check in ran)


def test_a_check_that_overruns_is_killed(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "KILL_GRACE_S", 0.0)
    plan = tiny_plan(gc, tmp_path)
    argv = ["--device", "cpu", "--quick", "--out", str(plan.out), "--work", str(plan.work)]
    status, seconds = gc.launch_child("smoke", plan, 0.5, argv)
    assert status.startswith("killed: out of time") and seconds < 10


def test_checks_stop_when_their_time_is_up(gc, tmp_path):
    plan = tiny_plan(gc, tmp_path, smoke_methods=("none",), smoke_scenarios=("matrix_drift",))
    md, res = gc.Markdown(plan.out / "report.md"), gc.Results(plan.work / "results" / "x.json")
    for check in ("resume", "matrix", "envs", "learners", "concurrency"):
        gc.CHECK_FUNCTIONS[check](plan, gc.TimeBox(0), md, res)
    assert report_of(plan).count("skipped: out of time") == (
        len(plan.resume_runs) + 1 + len(plan.pp_num_envs) + len(plan.smax_num_envs)
        + len(plan.learner_rows) * len(gc.LEARNERS) + len(plan.concurrency_ns))
    # the sweep a check starts is killed with its whole process group when the check's time is up
    gc.check_smoke(plan, gc.TimeBox(0), md, res)
    assert "**0/2** runs finished" in report_of(plan) and "killed: out of time" in report_of(plan)


def test_checks_run_at_the_smallest_sizes(gc, tmp_path):
    plan = tiny_plan(gc, tmp_path, pp_num_envs=(2,), smax_num_envs=(), env_steps=2, env_repeats=1,
                     learner_rows=(("predator_prey_penalty", "smoke"),), learner_updates=1, learner_repeats=1)
    md, res = gc.Markdown(plan.out / "report.md"), gc.Results(plan.work / "results" / "x.json")
    gc.check_envs(plan, gc.TimeBox(60), md, res)
    gc.check_learners(plan, gc.TimeBox(60), md, res)
    results = json.loads(res.path.read_text())
    assert [row["num_envs"] for row in results["envs"]] == [2] and results["envs"][0]["env_steps_per_s"] > 0
    assert [row["learner"] for row in results["learners"]] == list(gc.LEARNERS)
    for row in results["learners"]:
        assert row["fused_updates_per_s"] > 0 and row["loop_updates_per_s"] > 0 and row["unroll_fused_ms"] > 0
    assert results["gru_flat_weight_warnings"] == []
    assert "ERROR" not in report_of(plan)


def test_max_abs_difference(gc):
    a = {"curves": {"score": [0.5, 1.0]}, "R": [[1.0, 0.25]], "tasks": ["M1"], "probe": None}
    assert gc.max_abs_difference(a, a) == 0.0
    b = {"curves": {"score": [0.5, 0.75]}, "R": [[1.0, 0.5]], "tasks": ["M1"], "probe": None}
    assert gc.max_abs_difference(a, b) == 0.25
    assert gc.max_abs_difference(a, {**b, "R": [[1.0]]}) == float("inf")
    assert gc.max_abs_difference(a, {**a, "tasks": ["M2"]}) == float("inf")
