"""ctmarl validity: hand-built records with hand-computed answers, the leaderboard line, the CLI.

With 2 seeds the 95% percentile bootstrap interval of a mean is [min, max] of the two values: a
resample is both seeds' values with probability 1/4 each way, so each end holds 25% > 2.5%.
"""

import pytest
import yaml
from click.testing import CliRunner

from ctmarl import leaderboard as lb
from ctmarl import validity as v
from ctmarl.cli import main
from ctmarl.errors import CtmarlError

# Scratch: task k's expert scores 0.2 / 0.1 on the next task; every task is learned (final 1).
R_SCRATCH = [[1.0, 0.2, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 1.0]]
R_NONE = [[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]
# Per seed: the scratch AUC and the none AUC (slower on later tasks in every seed).
SCRATCH_AUC = {0: [0.8, 0.8, 0.8], 1: [0.5, 0.5, 0.5]}
NONE_AUC = {0: [0.8, 0.4, 0.2], 1: [0.5, 0.4, 0.3]}


def record(method, seed, R, auc, final=None, tasks=None, name="toy", learner="qmix", **extra):
    """The fields ``analyse`` reads; ``final`` defaults to R's diagonal."""
    return {
        "scenario": {"name": name, "version": 1, "tier": "smoke"}, "learner": {"name": learner},
        "method": {"name": method}, "seed": seed,
        "tasks": tasks or [f"T{k}" for k in range(len(auc))], "R": R,
        "metrics": {"auc_per_task": auc, "final_score_per_task": final or [R[k][k] for k in range(len(R))]},
        **extra,
    }


def runs(none_auc=NONE_AUC, scratch_auc=SCRATCH_AUC, r_scratch=R_SCRATCH, final=None, **extra):
    none = [record("none", s, R_NONE, a, **extra) for s, a in none_auc.items()]
    scratch = [record("reset_all", s, r_scratch, a, final=final, **extra) for s, a in scratch_auc.items()]
    return none, scratch


def test_none_slower_than_scratch_in_every_seed_shows_loss():
    result = v.analyse(*runs())
    assert result["scenario"] == {"name": "toy", "version": 1, "tier": "smoke"}
    assert result["learner"] == "qmix" and result["seeds"] == [0, 1]
    inter = result["interference"]
    assert inter["pairs"] == [
        {"from": "T0", "to": "T1", "expert_on_next": 0.2, "none_on_next": 0.3, "reachable": 1.0,
         "gap": 0.7, "gap_ci95": [0.7, 0.7]},  # 1 - max(0.2, 0.3)
        {"from": "T1", "to": "T2", "expert_on_next": 0.1, "none_on_next": 0.5, "reachable": 1.0,
         "gap": 0.5, "gap_ci95": [0.5, 0.5]},  # 1 - max(0.1, 0.5)
    ]
    assert (inter["mean_gap"], inter["mean_gap_ci95"]) == (0.6, [0.6, 0.6])
    learn = result["learnability"]
    assert learn["per_task"][0] == {"task": "T0", "final": 1.0, "auc": 0.65}
    assert learn["learned_share"] == 1.0 and learn["not_learned"] == []
    loss = result["plasticity_loss"]
    # PR seed 0 = [1, 0.5, 0.25] (mean k>=1 0.375, slope -0.375); seed 1 = [1, 0.8, 0.6] (0.7, -0.2)
    assert [row["pr"] for row in loss["per_task"]] == [1.0, 0.65, 0.425]
    assert (loss["pr_mean"], loss["pr_mean_ci95"]) == (0.5375, [0.375, 0.7])
    assert (loss["pr_trend"], loss["pr_trend_ci95"]) == (-0.2875, [-0.375, -0.2])
    # AUC gap over k>=1: seed 0 mean(0.4, 0.6) = 0.5, seed 1 mean(0.1, 0.2) = 0.15
    assert (loss["auc_gap"], loss["auc_gap_ci95"]) == (0.325, [0.15, 0.5])
    # AUC ratio: seed 0 mean(0.4, 0.2) / 0.8 = 0.375, seed 1 0.35 / 0.5 = 0.7 (equal to PR here:
    # scratch's AUC is the same on every task)
    assert (loss["auc_ratio"], loss["auc_ratio_ci95"]) == (0.5375, [0.375, 0.7])
    assert loss["revisit_auc_loss"] is None and result["probe"] is None
    assert result["verdict"]["verdict"] == v.SHOWS
    assert "none learns later tasks more slowly than scratch: AUC ratio" in result["verdict"]["reason"]
    assert "[0.375, 0.700]" in result["verdict"]["reason"]
    assert v.analyse(*runs()) == result  # deterministic


def test_zero_interference_gap_does_not_show_loss_even_if_pr_falls():
    same = [[1.0, 1.0, 1.0]] * 3  # the expert of task k already scores 1 on task k+1
    result = v.analyse(*runs(r_scratch=same))
    assert result["interference"]["mean_gap"] == 0.0
    assert result["verdict"] == {"verdict": v.DOES_NOT_SHOW, "reason": (
        "consecutive tasks share their optimal behaviour: interference gap 0.000 [0.000, 0.000] < 0.1")}


def test_scratch_that_cannot_learn_is_inconclusive():
    result = v.analyse(*runs(final=[1.0, 0.2, 0.3]))
    assert result["learnability"]["not_learned"] == ["T1", "T2"]
    assert result["learnability"]["learned_share"] == 0.3333
    assert result["verdict"] == {"verdict": v.INCONCLUSIVE, "reason": (
        "scratch does not learn the tasks within the budget: final score < 0.5 on 2 of 3 tasks (T1, T2)")}


def test_a_carried_policy_that_scratch_cannot_find_does_not_show_loss():
    """predator_prey_penalty-v1's case: scratch never learns the later tasks alone, while the
    sequence's policy after task k already scores on k+1 what training on k+1 reaches."""
    r_none = [[1.0, 0.95, 0.9], [0.9, 1.0, 0.95], [0.9, 0.9, 1.0]]
    none = [record("none", s, r_none, a) for s, a in NONE_AUC.items()]
    scratch = [record("reset_all", s, R_SCRATCH, a, final=[1.0, 0.0, 0.0]) for s, a in SCRATCH_AUC.items()]
    result = v.analyse(none, scratch)
    assert result["interference"]["mean_gap"] == 0.05  # (1 - 0.95 + 1 - 0.95) / 2
    assert result["verdict"] == {"verdict": v.DOES_NOT_SHOW, "reason": (
        "consecutive tasks share their optimal behaviour: interference gap 0.050 [0.050, 0.050] < 0.1; "
        "scratch alone does not learn 2 of 3 tasks (T1, T2)")}


@pytest.mark.parametrize("none_auc, expected, reason", [
    ({0: [0.8, 0.8, 0.8], 1: [0.5, 0.5, 0.5]}, v.DOES_NOT_SHOW,
     "none learns later tasks as fast as scratch: AUC ratio 1.000 [1.000, 1.000]"),
    ({0: [0.8, 0.72, 0.72], 1: [0.5, 0.55, 0.55]}, v.INCONCLUSIVE,
     "AUC ratio 1.000 [0.900, 1.100]: the 95% CI neither lies below 1 nor starts at >= 0.95"),
])
def test_pr_interval_at_or_around_one(none_auc, expected, reason):
    assert v.analyse(*runs(none_auc=none_auc))["verdict"] == {"verdict": expected, "reason": reason}


def test_one_failed_scratch_task_does_not_sway_the_verdict():
    """predator_prey_drift-v4's case: scratch fails one task (AUC 0.01) that none learns, so that
    task's PR_k is 50 and rules the mean of PR_k; the ratio of the mean AUCs weights tasks by what
    scratch learns on them and still says none is slower."""
    none_auc = {0: [0.8, 0.5, 0.2, 0.2], 1: [0.5, 0.2, 0.2, 0.2]}
    scratch_auc = {0: [0.8, 0.01, 0.8, 0.8], 1: [0.5, 0.5, 0.5, 0.5]}
    R = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    none = [record("none", s, R, a) for s, a in none_auc.items()]
    scratch = [record("reset_all", s, R, a) for s, a in scratch_auc.items()]
    loss = v.analyse(none, scratch)["plasticity_loss"]
    # PR seed 0 = [1, 50, 0.25, 0.25] -> mean k>=1 16.8333; seed 1 = [1, 0.4, 0.4, 0.4] -> 0.4
    assert (loss["pr_mean"], loss["pr_mean_ci95"]) == (8.6167, [0.4, 16.8333])
    # AUC ratio seed 0 = 0.3 / 0.5367 = 0.5590, seed 1 = 0.2 / 0.5 = 0.4
    assert (loss["auc_ratio"], loss["auc_ratio_ci95"]) == (0.4795, [0.4, 0.559])
    assert loss["auc_gap"] == 0.2683  # (0.2367 + 0.3) / 2: below 1 exactly when the gap is above 0
    assert v.analyse(none, scratch)["verdict"] == {"verdict": v.SHOWS, "reason": (
        "none learns later tasks more slowly than scratch: AUC ratio 0.479 [0.400, 0.559] (95% CI below 1)")}


def test_repeated_sequence_revisit_auc_loss():
    R = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    none_auc = {0: [0.9, 0.8, 0.6, 0.5], 1: [0.8, 0.8, 0.7, 0.6]}
    scratch_auc = {0: [0.9, 0.8, 0.6, 0.5], 1: [0.8, 0.4, 0.7, 0.6]}  # PR seed 0: 1, seed 1: 4/3
    extra = {"task_definition": [0, 1, 0, 1], "tasks": ["A", "B", "A", "B"]}
    none = [record("none", s, R, a, **extra) for s, a in none_auc.items()]
    scratch = [record("reset_all", s, R, a, **extra) for s, a in scratch_auc.items()]
    result = v.analyse(none, scratch)
    assert result["task_definition"] == [0, 1, 0, 1]
    assert result["interference"]["mean_gap"] == 1.0
    # seed 0: A 0.9-0.6, B 0.8-0.5 -> 0.3; seed 1: 0.8-0.7, 0.8-0.6 -> 0.15
    assert result["plasticity_loss"]["revisit_auc_loss"] == {
        "by_visit": [{"visit": 2, "mean": 0.225, "mean_ci95": [0.15, 0.3]}], "mean": 0.225, "mean_ci95": [0.15, 0.3]}
    assert result["plasticity_loss"]["pr_mean_ci95"] == [1.0, 1.3333]
    # AUC ratio seed 1 = 2.1 / 1.7: alone it would say "does not show"
    assert result["plasticity_loss"]["auc_ratio_ci95"] == [1.0, 1.2353]
    assert result["verdict"] == {"verdict": v.SHOWS, "reason": (
        "revisits are learned more slowly than first visits: revisit AUC loss 0.225 [0.150, 0.300] (95% CI above 0)")}


def test_revisit_losses_and_task_definitions_by_hand():
    losses = v.revisit_losses([1.0, 0.5, 0.8, 0.4, 0.6], [0, 1, 0, 1, 0])
    assert losses == {2: pytest.approx([0.2, 0.1]), 3: pytest.approx([0.4])}
    assert v.task_definitions([{}], ["M1", "M2", "M1", "M1-return"]) == [0, 1, 0, 2]
    assert v.task_definitions([{"task_definition": [0, 1, 0]}], ["x", "y", "z"]) == [0, 1, 0]
    with pytest.raises(v.ValidityError, match="disagree on task_definition"):
        v.task_definitions([{"task_definition": [0, 1, 0]}, {"task_definition": [0, 1, 2]}], ["x", "y", "z"])


def test_one_seed_is_inconclusive_with_values_and_no_intervals():
    none, scratch = runs()
    result = v.analyse(none[:1], scratch)
    assert result["seeds"] == [0] and result["unpaired_seeds"] == {"none": [], "reset_all": [1]}
    assert (result["plasticity_loss"]["pr_mean"], result["plasticity_loss"]["pr_mean_ci95"]) == (0.375, None)
    assert result["interference"]["pairs"][0]["gap_ci95"] is None
    assert result["verdict"] == {"verdict": v.INCONCLUSIVE, "reason": "needs >= 2 seeds (has 1 paired)"}


def _probe(fresh_total, totals):
    return {"steps": 50, "lr": 0.001, "fresh": {"agent": 0.9, "q_tot": 0.7, "total": fresh_total},
            "per_task": {"agent": [0.9, 0.8, 0.7], "q_tot": [0.5, 0.5, 0.5], "total": totals}}


def test_probe_aggregation():
    none, scratch = runs()
    none[0]["plasticity_probe"] = _probe(0.8, [0.8, 0.6, 0.4])
    none[1]["plasticity_probe"] = _probe(1.0, [1.0, 0.9, 0.8])
    probe = v.analyse(none, scratch)["probe"]
    assert probe["seeds"] == [0, 1] and (probe["steps"], probe["lr"]) == (50, 0.001)
    assert probe["fresh"] == {"agent": 0.9, "q_tot": 0.7, "total": 0.9}
    # ratio seed 0 = [1, 0.75, 0.5], seed 1 = [1, 0.9, 0.8]; slope of total: -0.2 and -0.1
    assert probe["per_task"] == [
        {"task": "T0", "agent": 0.9, "q_tot": 0.5, "total": 0.9, "ratio": 1.0},
        {"task": "T1", "agent": 0.8, "q_tot": 0.5, "total": 0.75, "ratio": 0.825},
        {"task": "T2", "agent": 0.7, "q_tot": 0.5, "total": 0.6, "ratio": 0.65},
    ]
    assert (probe["total_slope"], probe["total_slope_ci95"]) == (-0.15, [-0.2, -0.1])
    none[1]["plasticity_probe"] = None  # older records lack it: only seed 0's is used
    assert v.analyse(none, scratch)["probe"]["seeds"] == [0]
    none[0]["plasticity_probe"] = {"steps": 50, "fresh": {}}
    with pytest.raises(v.ValidityError, match="none seed 0: plasticity_probe needs"):
        v.analyse(none, scratch)


def test_mismatched_or_unpaired_records_are_errors():
    none, scratch = runs()
    other = record("reset_all", 0, R_SCRATCH, [0.8] * 3, name="other")
    with pytest.raises(v.ValidityError, match=r"different scenarios or learners: toy-v1 smoke qmix \(none seed 0\) "
                                              r"and other-v1 smoke qmix \(reset_all seed 0\)"):
        v.analyse(none, [other])
    assert issubclass(v.ValidityError, CtmarlError)
    with pytest.raises(v.ValidityError, match=r"no seed has both a none and a reset_all record \(none seeds: \[0\], "
                                              r"reset_all seeds: \[1\]\)"):
        v.analyse(none[:1], scratch[1:])
    with pytest.raises(v.ValidityError, match="none seed 0: expected a reset_all record"):
        v.analyse(none, none)
    with pytest.raises(v.ValidityError, match="reset_all seed 0: tasks"):
        v.analyse(none, [record("reset_all", 0, R_SCRATCH, [0.8] * 3, tasks=["a", "b", "c"])])
    with pytest.raises(v.ValidityError, match="no records"):
        v.analyse([], [])


def test_render_and_write(tmp_path):
    none, scratch = runs()
    result = v.analyse(none, scratch)
    text = v.render(result)
    for expected in ("toy-v1 · smoke · qmix — seeds 0, 1", "T0 → T1", "mean gap 0.600 [0.600, 0.600]",
                     "PR mean over k ≥ 1 0.537", "AUC ratio (mean AUC over k ≥ 1, none / reset_all; the verdict's statistic) 0.537", "Verdict: shows plasticity loss — none learns"):
        assert expected in text, text
    path = v.write(result, tmp_path)
    assert path == tmp_path / "toy-v1_smoke.yaml"
    assert yaml.safe_load(path.read_text()) == result
    qplex = v.analyse(*[[dict(r, learner={"name": "qplex"}) for r in rs] for rs in (none, scratch)])
    assert v.write(qplex, tmp_path).name == "toy-v1_smoke_qplex.yaml"


def test_leaderboard_shows_the_verdict_of_tables_with_two_paired_seeds():
    def admitted(r):
        return lb.Admitted(f"{r['method']['name']}_{r['seed']}.yaml", {
            **r, "content_hash": f"{r['method']['name']}{r['seed']}",
            "method": {**r["method"], "entry_point": "pkg:x"},
            "metrics": {**r["metrics"], "auc": 0.5, "performance": 0.5, "forgetting": 0.0}})

    none, scratch = runs()
    board = lb.assemble([admitted(r) for r in none + scratch])
    (table,) = board.boards
    assert table.validity == v.analyse(none, scratch)["verdict"]
    assert board.data()["boards"] == [{"scenario": "toy", "version": 1, "tier": "smoke", "learner": "qmix",
                                       "validity": table.validity}]
    assert f"Validity: shows plasticity loss — {table.validity['reason']}" in board.markdown()
    single = lb.assemble([admitted(r) for r in none[:1] + scratch])
    assert single.boards[0].validity is None and "Validity: " not in single.markdown()


def test_cli_runs_missing_records_then_analyses(tmp_path):
    records, out = tmp_path / "records", tmp_path / "validity"
    args = ["validity", "matrix_drift", "--tier", "smoke", "--seed", "0", "--seed", "1",
            "--records", str(records), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "running 4 missing run(s)" in result.output
    assert len(list(records.glob("matrix_drift-v1_smoke_qmix_*_seed*.yaml"))) == 4
    written = yaml.safe_load((out / "matrix_drift-v1_smoke.yaml").read_text())
    assert written["seeds"] == [0, 1] and written["verdict"]["verdict"] in v.VERDICTS
    for expected in ("Interference", "M1 → M2", "Learnability", "Plasticity loss", "Verdict: "):
        assert expected in result.output
    again = CliRunner().invoke(main, [*args, "--seed", "2", "--no-run"])
    assert again.exit_code == 0, again.output
    assert "running" not in again.output and "missing (--no-run): none seed(s) 2; reset_all seed(s) 2" in again.output
    assert yaml.safe_load((out / "matrix_drift-v1_smoke.yaml").read_text()) == written
    bad = CliRunner().invoke(main, ["validity", "matrix_drift", "--tier", "huge", "--records", str(records)])
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith("error: unknown tier 'huge'")


def test_cli_with_no_records_and_no_run_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["validity", "matrix_drift", "--tier", "smoke", "--no-run",
                                       "--records", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: no none or reset_all records of matrix_drift-v1 smoke "
                                                      f"qmix for seed(s) 0, 1, 2, 3, 4 in {tmp_path / 'none'}")
