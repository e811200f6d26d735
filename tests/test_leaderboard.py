"""Leaderboard: admission of records, entry statistics by hand, build/check, tampering detection.

Records that may enter a leaderboard must come from a clean git commit, which a working tree under
development is not. Tests therefore make real records with ``ctmarl.evaluate`` while
``ctmarl.record.git_state`` (and ``ctmarl.source.source_git_state``, for the method's package) is
patched to report a clean commit (``clean_git``); the admission rules themselves are never relaxed.
"""

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ctmarl import aggregate as aggregate_module
from ctmarl import leaderboard as lb
from ctmarl import record as record_module
from ctmarl import source as source_module
from ctmarl.cli import main
from ctmarl.errors import RecordError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.record import record_filename, seal, write_yaml_atomic

REPO = Path(__file__).resolve().parents[1]
CLEAN = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}


def clean_git(path):
    return dict(CLEAN)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Real smoke-tier matrix_drift records (QMIX): none and reset_all seeds 0-1, reset seed 0."""
    folder = tmp_path_factory.mktemp("made") / "records"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record_module, "git_state", clean_git)
        patch.setattr(source_module, "source_git_state", lambda target, files: dict(CLEAN))  # baselines/
        for algo, seeds in (("none", (0, 1)), ("reset_all", (0, 1)), ("reset", (0,))):
            for seed in seeds:
                evaluate(RunSpec("matrix_drift", algo=algo, tier="smoke", seed=seed), folder)
    return folder


@pytest.fixture
def root(records, tmp_path):
    """A leaderboard folder: a copy of the records, built."""
    shutil.copytree(records, tmp_path / "records")
    lb.write(lb.build(tmp_path / "records"), tmp_path)
    return tmp_path


def _load(path):
    return yaml.safe_load(Path(path).read_text())


def _rewrite(path, change, reseal=True, name=None):
    """Apply ``change`` to the record at ``path``; re-seal its hashes (as a forger would) unless
    told not to; write it under its proper name (or ``name``); return the new path."""
    record = _load(path)
    change(record)
    if reseal:
        seal(record)
    Path(path).unlink()
    return write_yaml_atomic(record, Path(path).parent / (name or record_filename(record)))


# --- statistics of entries, by hand --------------------------------------------------------------

def _fake(method, seed, auc_per_task, tier="quick", learner="qmix", version=1, forgetting=0.1, scenario="toy"):
    record = {
        "scenario": {"name": scenario, "version": version, "tier": tier},
        "learner": {"name": learner}, "method": {"name": method, "entry_point": f"pkg:{method}"},
        "seed": seed, "content_hash": f"{method}-{seed}-{tier}-{learner}-{version}",
        "R": [list(auc_per_task)] * len(auc_per_task),  # the last row is what retention reads
        "metrics": {"auc_per_task": auc_per_task, "auc": sum(auc_per_task) / len(auc_per_task),
                    "performance": 0.5 + seed / 10, "forgetting": forgetting},
    }
    return lb.Admitted(f"{method}_{seed}.yaml", record)


def test_entry_statistics_match_hand_computed_values():
    board = lb.assemble([
        _fake("none", 0, [0.2, 0.4]), _fake("none", 1, [0.6, 0.8]),
        _fake("x", 0, [0.5, 0.5], forgetting=0.1), _fake("x", 1, [0.9, 0.7], forgetting=0.3),
        _fake("reset_all", 0, [0.5, 0.8]), _fake("reset_all", 1, [1.0, 0.8]),
    ])
    (table,) = board.boards
    x = next(e for e in table.entries if e["method"] == "x")
    # IQM of {0.5, 0.5, 0.9, 0.7}: drop one from each end -> mean(0.5, 0.7)
    assert x["auc_iqm"] == 0.6
    # Stratified bootstrap: the smallest resampled IQM (both tasks resample their lowest run twice:
    # 0.5, 0.5, 0.5, 0.5) and the largest (0.9, 0.9, 0.7, 0.7 -> 0.8) each have probability 1/16 > 2.5%.
    assert x["auc_iqm_ci95"] == [0.5, 0.8]
    # P(x > none): task 0 {0.5, 0.9} vs {0.2, 0.6} wins 3 of 4 pairs, task 1 {0.5, 0.7} vs {0.4, 0.8} 2 of 4
    assert x["probability_of_improvement_over_none"] == 0.625
    # PR: seed 0 mean(0.5/0.5, 0.5/0.8) = 0.8125, seed 1 mean(0.9/1.0, 0.7/0.8) = 0.8875
    assert x["plasticity_ratio"] == 0.85
    assert x["forgetting"] == 0.2 and x["auc_mean"] == 0.65 and x["performance_mean"] == 0.55
    assert x["seeds"] == [0, 1]
    assert [r["content_hash"] for r in x["records"]] == ["x-0-quick-qmix-1", "x-1-quick-qmix-1"]
    none = next(e for e in table.entries if e["method"] == "none")
    assert none["probability_of_improvement_over_none"] == 0.5
    # Retention: mean over seeds of mean_j R[K-1][j] (the fakes' last rows are their AUCs)
    assert x["retention"] == 0.65
    # The references (none, reset_all) are listed after the contenders and never ranked.
    assert [e["method"] for e in table.entries] == ["x", "reset_all", "none"]
    assert [e["rank"] for e in table.entries] == [1, None, None]
    assert [e["reference"] for e in table.entries] == [False, True, True]
    markdown = board.markdown()
    assert "| 1 | `x` | 2 | 0.600 [0.500, 0.800] | 0.550 | 0.650 |" in markdown
    assert "| ref | `none` (reference) | 2 |" in markdown and "Unranked:" not in markdown


def test_cross_scenario_aggregate_by_hand():
    """Normalised AUC z_k = (AUC_k - AUC_k(none)) / mean_j(AUC_j(reset_all) - AUC_j(none)), same seed,
    over the tables whose validity shows plasticity loss; IQM and stratified bootstrap over them."""
    shows = {"verdict": "shows plasticity loss", "reason": "r"}
    items = [_fake("none", s, [0.2, 0.4]) for s in (0, 1)] + [_fake("reset_all", s, [0.2, 0.8]) for s in (0, 1)]
    items += [_fake("m", 0, [0.3, 0.5]), _fake("m", 1, [0.2, 0.8]), _fake("m", 2, [1.0, 1.0])]  # seed 2: no pair
    # A second table where scratch is no better than keeping the network (Δ <= 0): left out.
    items += [_fake(m, 0, [0.5, 0.5], scenario="flat") for m in ("none", "reset_all", "m")]
    board = lb.assemble(items)
    for table in board.boards:  # the verdict comes from ctmarl validity; set by hand here
        table.validity = shows
    by_table = {}
    for item in items:
        by_table.setdefault(item.key[:4], {}).setdefault(item.key[4], []).append(item)
    rows = {e["method"]: e for e in aggregate_module.aggregate(board.boards, by_table)}
    # Δ = mean(0, 0.4) = 0.2 for both seeds; m: seed 0 z = (0.5, 0.5), seed 1 z = (0, 2)
    assert rows["m"]["normalised_auc_iqm"] == pytest.approx(0.5)  # IQM of {0, 0.5, 0.5, 2}
    assert rows["m"]["scenarios"] == [{"table": "toy-v1 · quick · qmix", "seeds": [0, 1]}]
    assert rows["m"]["seeds_left_out"] == 1  # the flat table's seed 0
    assert rows["none"]["normalised_auc_iqm"] == 0.0 and rows["none"]["reference"] is True
    assert rows["reset_all"]["normalised_auc_iqm"] == pytest.approx(1.0)  # z = (0, 2) for both seeds
    low, high = rows["m"]["normalised_auc_iqm_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 2.0
    assert [e["method"] for e in aggregate_module.aggregate(board.boards, by_table)] == ["m", "reset_all", "none"]
    for table in board.boards:
        table.validity = {"verdict": "does not show plasticity loss", "reason": "r"}
    assert aggregate_module.aggregate(board.boards, by_table) == []


def test_a_newer_valid_version_supersedes_the_older_in_the_aggregate():
    """Only the newest version of a scenario whose table shows plasticity loss enters the aggregate:
    a re-calibrated version is not counted beside the one it replaces; an invalid newer one is not
    a replacement."""
    items = []
    for version, m_auc in ((1, [0.2, 0.8]), (2, [0.2, 0.6])):
        items += [_fake("none", s, [0.2, 0.4], version=version) for s in (0, 1)]
        items += [_fake("reset_all", s, [0.2, 0.8], version=version) for s in (0, 1)]
        items += [_fake("m", s, m_auc, version=version) for s in (0, 1)]
    board = lb.assemble(items)
    by_table = {}
    for item in items:
        by_table.setdefault(item.key[:4], {}).setdefault(item.key[4], []).append(item)
    for table in board.boards:
        table.validity = {"verdict": "shows plasticity loss", "reason": "r"}
    rows = {e["method"]: e for e in aggregate_module.aggregate(board.boards, by_table)}
    assert rows["m"]["scenarios"] == [{"table": "toy-v2 · quick · qmix", "seeds": [0, 1]}]
    assert rows["m"]["normalised_auc_iqm"] == pytest.approx(0.5)  # v2's z = (0, 1) for both seeds
    for table in board.boards:
        if table.version == 2:
            table.validity = {"verdict": "inconclusive", "reason": "r"}
    rows = {e["method"]: e for e in aggregate_module.aggregate(board.boards, by_table)}
    assert rows["m"]["scenarios"] == [{"table": "toy-v1 · quick · qmix", "seeds": [0, 1]}]
    assert rows["m"]["normalised_auc_iqm"] == pytest.approx(1.0)


def test_missing_references_are_named_not_invented():
    board = lb.assemble([_fake("x", 0, [0.5, 0.5]), _fake("x", 2, [0.7, 0.7]), _fake("reset_all", 0, [0.5, 0.5]),
                         _fake("y", 0, [0.3, 0.3], forgetting=None)])
    entries = {e["method"]: e for e in board.boards[0].entries}
    assert entries["x"]["plasticity_ratio"] == "n/a: no reset_all record for seed(s) 2"
    assert entries["x"]["probability_of_improvement_over_none"].startswith("n/a: no none entry")
    assert entries["y"]["auc_iqm_ci95"] == "n/a: one seed (a bootstrap CI needs at least 2)"
    assert entries["y"]["forgetting"] == "n/a: single-task scenario"
    markdown = lb.render_markdown(board)
    assert "- `x` plasticity ratio: no reset_all record for seed(s) 2" in markdown


def test_versions_tiers_and_learners_never_mix():
    items = [_fake("none", 0, [0.5]), _fake("none", 0, [0.1], version=2), _fake("none", 0, [0.2], tier="smoke"),
             _fake("none", 0, [0.3], learner="qplex"), _fake("none", 1, [0.7])]
    board = lb.assemble(items)
    keys = [(b.version, b.tier, b.learner, [e["seeds"] for e in b.entries]) for b in board.boards]
    assert keys == [(1, "smoke", "qmix", [[0]]), (1, "quick", "qmix", [[0, 1]]), (1, "quick", "qplex", [[0]]),
                    (2, "quick", "qmix", [[0]])]


def test_equal_scores_share_a_rank():
    board = lb.assemble([_fake(m, seed, [a]) for m, a in (("a", 0.5), ("b", 0.5), ("c", 0.1)) for seed in (0, 1)])
    assert [(e["method"], e["rank"]) for e in board.boards[0].entries] == [("a", 1), ("b", 1), ("c", 3)]


def test_one_seed_entries_are_listed_without_a_rank():
    board = lb.assemble([_fake("a", 0, [0.5]), _fake("a", 1, [0.3]), _fake("solo", 0, [0.9]),
                         _fake("b", 0, [0.2]), _fake("b", 1, [0.2])])
    entries = board.boards[0].entries
    assert [(e["method"], e["rank"]) for e in entries] == [("a", 1), ("b", 2), ("solo", None)]
    assert entries[2]["unranked"] == "1 seed: a rank needs at least 2" and entries[0]["unranked"] is None
    assert [e["method"] for e in board.data()["entries"]] == ["a", "b", "solo"]
    assert board.data()["unranked_entries"] == []
    markdown = board.markdown()
    assert "| – | `solo` | 1 | 0.900 |" in markdown and "| 1 | `a` | 2 |" in markdown
    assert "- `solo`: 1 seed: a rank needs at least 2" in markdown and "## Unranked" not in markdown


def test_smoke_tier_entries_are_kept_apart_unranked():
    board = lb.assemble([_fake("a", 0, [0.5]), _fake("a", 1, [0.3]), _fake("a", 0, [0.9], tier="smoke"),
                         _fake("a", 1, [0.8], tier="smoke"), _fake("b", 0, [0.1], tier="smoke")])
    data = board.data()
    assert [(e["tier"], e["method"], e["rank"]) for e in data["entries"]] == [("quick", "a", 1)]
    assert [(e["tier"], e["method"], e["rank"]) for e in data["unranked_entries"]] == [
        ("smoke", "a", None), ("smoke", "b", None)]
    assert all(e["unranked"].startswith("smoke tier:") for e in data["unranked_entries"])
    markdown = board.markdown()
    ranked, unranked = markdown.split("## Unranked: smoke tier")
    assert "## toy-v1 · quick · qmix" in ranked and "smoke" not in ranked.split("## toy-v1")[1]
    assert "### toy-v1 · smoke · qmix" in unranked
    assert "| `a` | 2 | 0.850 [0.800, 0.900] |" in unranked and "| `b` | 1 | 0.100 |" in unranked
    assert "| rank |" not in unranked
    assert not any(line.startswith(("| 1 |", "| – |")) for line in unranked.splitlines())


# --- build and check on real records -------------------------------------------------------------

def test_build_writes_sorted_deterministic_files_and_check_passes(root, records, tmp_path):
    data = _load(root / lb.YAML_NAME)
    assert data["entries"] == []  # smoke records are kept (check re-runs them), never ranked
    smoke = data["unranked_entries"]
    # contenders first, then the references; each part by IQM
    assert [e["method"] for e in smoke] == [
        e["method"] for e in sorted(smoke, key=lambda e: (e["reference"], -e["auc_iqm"]))]
    assert {e["method"] for e in smoke} == {"none", "reset", "reset_all"}
    assert {e["rank"] for e in smoke} == {None}
    reset_all = next(e for e in smoke if e["method"] == "reset_all")
    assert reset_all["plasticity_ratio"] == 1.0  # scratch against itself
    assert (root / lb.PLOTS_DIR / "matrix_drift-v1_smoke_qmix.png").stat().st_size > 1000
    text = (root / lb.YAML_NAME).read_text()
    again = tmp_path / "again"
    lb.write(lb.build(root / "records"), again)
    assert (again / lb.YAML_NAME).read_text() == text
    assert (again / lb.MARKDOWN_NAME).read_text() == (root / lb.MARKDOWN_NAME).read_text()
    lines = []
    lb.check(root, reproduce_per_method=1, echo=lines.append)
    assert sum(line.startswith("re-ran ") for line in lines) == 3  # one smoke record per method


def test_hand_edited_number_in_leaderboard_yaml_fails_naming_it(root):
    path = root / lb.YAML_NAME
    text = path.read_text()
    data = _load(path)
    entry = data["unranked_entries"][1]
    old = f"auc_iqm: {entry['auc_iqm']}"
    assert text.count(old) == 1
    path.write_text(text.replace(old, "auc_iqm: 0.99"))
    with pytest.raises(lb.LeaderboardError, match=(
            rf"leaderboard.yaml differs from the rebuild from its records: unranked_entries\[1\] "
            rf"\(matrix_drift-v1 smoke "
            rf"qmix {entry['method']}\)\.auc_iqm: committed 0.99, rebuilt {entry['auc_iqm']}")):
        lb.check(root, reproduce_per_method=0)


def test_hand_edited_markdown_fails_naming_the_line(root):
    path = root / lb.MARKDOWN_NAME
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("| `reset` |"))
    lines[number] = lines[number].replace("| `reset` |", "| `reset` |  ", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(lb.LeaderboardError, match=rf"LEADERBOARD.md differs .*: line {number + 1}: committed"):
        lb.check(root, reproduce_per_method=0)


def test_hand_edited_number_in_a_record_fails_naming_the_record(root):
    path = next((root / "records").glob("*_reset_seed0.yaml"))
    data = _load(path)
    data["metrics"]["auc"] = 0.9876
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecordError, match=rf"{path.name}: content_hash does not match the content"):
        lb.check(root, reproduce_per_method=0)


def test_forged_record_with_recomputed_hashes_does_not_reproduce(records):
    path = next(records.glob("*_none_seed1.yaml"))
    forged = copy.deepcopy(_load(path))
    forged["curves"]["score"][3] = round(forged["curves"]["score"][3] + 0.25, 6)
    assert lb.reproduce(seal(forged)) == (
        f"curves.score[3]: recorded {forged['curves']['score'][3]!r}, re-run {_load(path)['curves']['score'][3]!r}")


def test_uncommitted_records_missing_plots_and_files_are_reported(root):
    (root / lb.YAML_NAME).unlink()
    with pytest.raises(lb.LeaderboardError, match="leaderboard.yaml is missing; run `ctmarl leaderboard build`"):
        lb.check(root, reproduce_per_method=0)
    lb.write(lb.build(root / "records"), root)
    (root / lb.PLOTS_DIR / "matrix_drift-v1_smoke_qmix.png").unlink()
    with pytest.raises(lb.LeaderboardError, match="matrix_drift-v1_smoke_qmix.png .* is missing"):
        lb.check(root, reproduce_per_method=0)


def _set(*keys):
    def change(record):
        target = record
        for key in keys[:-2]:
            target = target[key]
        target[keys[-2]] = keys[-1]
    return change


@pytest.mark.parametrize("change, message", [
    (_set("provenance", "git_dirty", True), "made from a working tree with uncommitted changes"),
    (_set("provenance", "git_dirty", None), "unknown working-tree state"),
    (_set("provenance", "git_commit", "unknown"), "provenance has no git commit"),
    (_set("learner", "config", "lr", 0.01),
     "learner config differs from what matrix_drift-v1 smoke prescribes \\(lr\\)"),
    (_set("scenario", "definition_hash", "0" * 64), "run from a different definition than the standard one"),
    (_set("scenario", "version", 7), "scenario matrix_drift-v7 is not a standard scenario"),
    (_set("method", "variant", "0123abcd"), "method 'reset' ran with a config other than its shipped defaults"),
    # The method must be the installed one with its shipped defaults, whatever the record claims.
    (_set("method", "entry_point", "os:system"), "method 'reset' ran from 'os:system', not the installed "
                                                  "ctmarl_baselines.methods.reset:Reset"),
    (_set("method", "config", "extra", 1), r"the config of method 'reset' differs from its shipped defaults \(extra\)"),
    (_set("method", "config", "modules", ["agent"]), r"differs from its shipped defaults \(modules\)"),
    (_set("method", "name", "ctmarl_baselines.methods.reset:Reset"),
     "is the class form of the registered method 'reset'; its runs count under that name"),
    (_set("method", "name", "somewhere.else:Thing"), "somewhere"),
    (_set("method", "name", "not_installed"), "not_installed"),
])
def test_records_breaking_a_rule_are_rejected_by_name(root, change, message):
    path = _rewrite(next((root / "records").glob("*_reset_seed0.yaml")), change)
    with pytest.raises(RecordError, match=message) as raised:
        lb.build(root / "records")
    assert str(path) in str(raised.value)


# --- records whose numbers are not what their curves say (re-sealed, so the hash passes) ----------

def _bump_auc(record):  # the forgery: every per-task AUC + 0.3 (kept <= 1), auc to match, P = 1
    record["metrics"]["auc_per_task"] = [round(min(a + 0.3, 1.0), 6) for a in record["metrics"]["auc_per_task"]]
    record["metrics"]["auc"] = round(sum(record["metrics"]["auc_per_task"]) / len(record["tasks"]), 6)
    record["metrics"]["performance"] = 1.0


def _zero_curves_and_R(record):  # consistent with each other, not with the metrics kept
    record["curves"]["score"] = [0.0] * len(record["curves"]["score"])
    record["R"] = [[0.0] * len(row) for row in record["R"]]


def _drop(*keys):
    def change(record):
        target = record
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def _item(key, index, value):
    def change(record):
        target = record
        for part in key.split("."):
            target = target[part]
        target[index] = value
    return change


def _drop_first_evaluations(record):
    """A forger's subtler edit: the first (worst) evaluation of every task removed and the metrics
    recomputed to match, so that the record is self-consistent."""
    first = {}
    for i, task in enumerate(record["curves"]["task"]):
        first.setdefault(task, i)
    keep = [i for i in range(len(record["curves"]["task"])) if i not in first.values()]
    record["curves"] = {k: [v[i] for i in keep] for k, v in record["curves"].items()}
    record["metrics"].update(record_module.with_recomputed_metrics(record)["metrics"])


INTEGRITY = [
    (lambda r: r["metrics"]["auc_per_task"].__setitem__(2, round(r["metrics"]["auc_per_task"][2] + 0.3, 6)),
     r"metrics\.auc_per_task\[2\]: stored [0-9.]+, recomputed from curves [0-9.]+$"),
    (_bump_auc, r"metrics\.performance: stored 1\.0, recomputed from curves 0\.[0-9]+$"),
    (_zero_curves_and_R, r"metrics\.performance: stored 0\.[0-9]+, recomputed from curves 0\.0$"),
    (lambda r: r["curves"].update(score=[0.0] * len(r["curves"]["score"])),
     r"R\[0\]\[0\] is [0-9.]+, but task 0's last evaluation, curves\.score\[9\], is 0\.0"),
    (lambda r: r["metrics"].update(forgetting=0.0), r"metrics\.forgetting: stored 0\.0, recomputed from R 0\.[0-9]+$"),
    (_item("metrics.auc_per_task", 0, 5.0), r"metrics\.auc_per_task\[0\] is 5\.0, outside \[0, 1\]"),
    (_item("metrics.auc_per_task", 0, -1.0), r"metrics\.auc_per_task\[0\] is -1\.0, outside \[0, 1\]"),
    (_item("metrics.auc_per_task", 0, 1e308), r"metrics\.auc_per_task\[0\] is 1e\+308, outside \[0, 1\]"),
    (_item("metrics.auc_per_task", 0, True), r"metrics\.auc_per_task\[0\] must be a number, got bool True"),
    (_item("metrics.auc_per_task", 0, float("nan")), r"metrics\.auc_per_task\[0\] is not finite"),
    (lambda r: r["metrics"].update(performance=7.0), r"metrics\.performance is 7\.0, outside \[0, 1\]"),
    (lambda r: r["metrics"].update(forgetting="much"), r"metrics\.forgetting must be a number or null, got str"),
    (_item("curves.score", 3, 1.5), r"curves\.score\[3\] is 1\.5, outside \[0, 1\]"),
    (lambda r: r["R"][1].__setitem__(2, -0.25), r"R\[1\]\[2\] is -0\.25, outside \[0, 1\]"),
    (lambda r: r.update(seed="0"), r"seed must be an integer, got str '0'"),
    (lambda r: r.update(seed=True), r"seed must be an integer, got bool True"),
    (_drop("scenario", "tier"), r"missing key 'scenario\.tier'"),
    (_drop("metrics", "final_score_per_task"), r"missing key 'metrics\.final_score_per_task'"),
    (_drop("curves", "score"), r"missing key 'curves\.score'"),
    (lambda r: r["curves"]["env_step"].pop(), r"curves\.env_step has 59 values, curves\.task 60"),
    (_item("curves.task", 12, 0), r"curves\.task\[12\] is 0 after 1: tasks are trained in order"),
    (_item("curves.task", 59, 6), r"curves\.task\[59\] is 6, not a task index in 0\.\.5"),
    (_item("curves.env_step", 5, 0), r"curves\.env_step\[5\] is 0 after [0-9]+: env steps never decrease"),
    (lambda r: r["R"].pop(), r"R has 5 rows, must be 6x6 \(K = len\(tasks\) = 6\)"),
    (_drop_first_evaluations, r"curves: task 0 \(M1\) has 9 evaluations; matrix_drift-v1 makes 10 per task"),
]


@pytest.mark.parametrize("change, message", INTEGRITY)
def test_records_inconsistent_with_their_curves_are_refused_by_build_and_check(root, change, message):
    """Every edit is re-sealed with ctmarl.record.seal: the content hash is not what catches it."""
    original = next((root / "records").glob("*_reset_seed0.yaml"))
    assert _load(original)["metrics"]["performance"] > 0 and _load(original)["metrics"]["forgetting"] > 0
    path = _rewrite(original, change, name=original.name)
    edited = _load(path)
    assert edited["content_hash"] == record_module.content_hash(edited)  # the forger's hash is right
    for run in (lambda: lb.build(root / "records"), lambda: lb.check(root, reproduce_per_method=0)):
        with pytest.raises(RecordError) as raised:
            run()
        assert str(raised.value).startswith(f"{path}: "), raised.value
        assert re.search(message, str(raised.value).removeprefix(f"{path}: ")), raised.value


def test_the_leaderboard_shows_numbers_recomputed_from_curves(root):
    """Admitted records carry recomputed metrics; a stored metric edited within the rounding
    tolerance is admitted but never shown."""
    path = next((root / "records").glob("*_reset_seed0.yaml"))
    stored = _load(path)["metrics"]["auc_per_task"]
    _rewrite(path, lambda r: r["metrics"]["auc_per_task"].__setitem__(0, round(stored[0] + 1e-6, 6)),
             name=path.name)
    admitted = {item.file: item for item in lb.admit_all(root / "records")}[path.name]
    assert admitted.record["metrics"]["auc_per_task"] == stored
    assert _load(path)["metrics"]["auc_per_task"][0] != stored[0]


@pytest.mark.parametrize("record, message", [
    ({"a": {1: 0.5, "1": 0.5}}, "a has a key that is not a string: int 1"),
    ({"a": [{"b": {2.5: 1}}]}, r"a[0].b has a key that is not a string: float 2.5"),
    ({"a": {"b": {1, 2}}}, "a.b must be plain data"),
    ({"a": b"bytes"}, "a must be plain data"),
])
def test_hashes_refuse_keys_and_values_that_are_not_plain_data(record, message):
    record = {"scenario": {}, "learner": {}, "method": {}, "seed": 0, **record}
    with pytest.raises(RecordError, match=re.escape(message)):
        seal(copy.deepcopy(record))
    with pytest.raises(RecordError, match=re.escape(f"where.yaml: {message}")):
        record_module.validate_record(record, "where.yaml")


def test_one_entry_is_one_method_config(root):
    records = root / "records"
    path = next(records.glob("*_reset_seed0.yaml"))
    shutil.copy(path, records / "copy.yaml")
    _rewrite(records / "copy.yaml", lambda r: r.update(seed=1))  # a second reset record
    _rewrite(path, _set("method", "config", "modules", ["agent"]))
    # Each record is held to the installed method's shipped defaults, so two records of one entry
    # can never differ in config: the changed one is refused on its own.
    with pytest.raises(RecordError, match=r"reset_seed0.yaml: the config of method 'reset' differs from its "
                                          r"shipped defaults \(modules\)"):
        lb.build(records)


def test_malformed_stray_misnamed_and_duplicate_files_are_rejected(root):
    records = root / "records"
    (records / "notes.txt").write_text("hello")
    with pytest.raises(RecordError, match="notes.txt: not a run record"):
        lb.build(records)
    (records / "notes.txt").unlink()
    (records / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(RecordError, match="broken.yaml: not valid YAML"):
        lb.build(records)
    (records / "broken.yaml").unlink()
    original = next(records.glob("*_none_seed0.yaml"))
    shutil.copy(original, records / "renamed.yaml")
    with pytest.raises(RecordError, match="named renamed.yaml, but its content is the run "
                                          "matrix_drift-v1_smoke_qmix_none_seed0"):
        lb.build(records)
    (records / "renamed.yaml").unlink()
    (records / "sub").mkdir()
    shutil.copy(original, records / "sub" / original.name)
    with pytest.raises(RecordError, match="the same run as"):
        lb.build(records)


def test_every_method_needs_a_smoke_record_to_reproduce(root):
    records = root / "records"
    path = next(records.glob("*_reset_seed0.yaml"))

    def to_quick(record):  # the same run, claimed at the quick tier (numbers are not re-run here)
        from ctmarl.config import from_mapping, to_plain
        from ctmarl.registry import LEARNERS
        from ctmarl.scenario import make_scenario

        record["scenario"]["tier"] = "quick"
        tier = make_scenario("matrix_drift").tier("quick")
        record["learner"]["config"] = to_plain(from_mapping(LEARNERS.load("qmix").Config, dict(tier.learner), "t"))

    _rewrite(path, to_quick)
    lb.write(lb.build(records), root)
    with pytest.raises(lb.LeaderboardError, match="method 'reset' has no smoke-tier record"):
        lb.check(root, reproduce_per_method=1, audit_budget_s=0)
    lb.check(root, reproduce_per_method=0, audit_budget_s=0)


def test_empty_leaderboard_builds_and_checks(tmp_path):
    (tmp_path / "records").mkdir()
    lines = []
    lb.write(lb.build(tmp_path / "records"), tmp_path)
    lb.check(tmp_path, echo=lines.append)
    assert "No records yet." in (tmp_path / lb.MARKDOWN_NAME).read_text()
    assert _load(tmp_path / lb.YAML_NAME)["entries"] == [] == _load(tmp_path / lb.YAML_NAME)["unranked_entries"]


def test_committed_leaderboard_matches_its_records():
    # What CI checks (it also re-runs smoke records); here only the rebuild comparison.
    lb.check(REPO / "leaderboard", reproduce_per_method=0, audit_budget_s=0)


def test_cli_build_and_check(root):
    runner = CliRunner()
    result = runner.invoke(main, ["leaderboard", "build", str(root / "records")])
    assert result.exit_code == 0, result.output
    assert "5 records, 3 entries in 1 tables" in result.output
    result = runner.invoke(main, ["leaderboard", "check", str(root), "--reproduce", "0"])
    assert result.exit_code == 0 and "leaderboard check passed" in result.output
    data = _load(root / lb.YAML_NAME)
    data["unranked_entries"][0]["seeds"] = [0, 1, 2]
    (root / lb.YAML_NAME).write_text(yaml.safe_dump(data))
    result = runner.invoke(main, ["leaderboard", "check", str(root), "--reproduce", "0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: ") and ".seeds" in result.output


# --- the audit: non-smoke records re-run by a draw seeded from the commit ------------------------

def _timed(method, seed, tier, wall, scenario="toy"):
    item = _fake(method, seed, [0.5], tier=tier)
    item.record["scenario"]["name"] = scenario
    item.record["timing"] = {"wall_time_s": wall}
    item.record["provenance"] = {"device": "cpu"}
    return item


def test_audit_draw_is_seeded_within_budget_and_never_smoke():
    items = [_timed(m, s, "quick", 10.0 + s) for m in "abcdef" for s in range(3)]
    items += [_timed(m, 0, "smoke", 1.0) for m in "abcdef"]
    items.append(_timed("a", 9, "quick", 1e9))  # one claimed-long record cannot move its group's cost
    draws = {seed: lb.audit_sample(items, 35.0, seed) for seed in range(20)}
    for sample in draws.values():
        assert len(sample) == 3  # median cost 11 s per record: three fit in 35 s
        assert all(item.key[2] == "quick" for item in sample)
        assert len({item.key for item in sample}) == 3  # one record per entry
    assert draws[3] == lb.audit_sample(items, 35.0, 3)  # the same seed draws the same records
    assert len({tuple(i.file for i in sample) for sample in draws.values()}) > 5  # seeds draw differently
    assert lb.audit_sample(items, 0.0, 0) == [] and lb.audit_sample(items, 5.0, 0) == []
    assert lb.audit_seed(REPO) == lb.audit_seed(REPO)


def test_audit_leaves_stale_records_out(monkeypatch):
    """Records listed in STALE (by scenario and commit) are never drawn; the others still are."""
    items = [_timed(m, 0, "quick", 1.0) for m in "ab"] + [_timed("c", 0, "quick", 1.0, scenario="old")]
    for item in items:
        item.record["provenance"]["git_commit"] = "f" * 40
    monkeypatch.setitem(lb.STALE, ("old", "f" * 40), "measured")
    for seed in range(10):
        assert sorted(i.key[4] for i in lb.audit_sample(items, 100.0, seed)) == ["a", "b"]


def _raise_scores(record):
    """A self-consistent forgery: every evaluation and every R entry raised by 0.2 (kept <= 1), the
    metrics recomputed from them; admission cannot tell, only a re-run can."""
    record["curves"]["score"] = [round(min(s + 0.2, 1.0), 6) for s in record["curves"]["score"]]
    record["R"] = [[round(min(v + 0.2, 1.0), 6) for v in row] for row in record["R"]]
    record["metrics"].update(record_module.with_recomputed_metrics(record)["metrics"])


def test_check_audit_catches_a_resealed_quick_record(tmp_path):
    """A committed quick-tier record (about 20 s to re-run) with raised scores and metrics,
    re-sealed, passes admission and is caught by the audit. (That the committed records re-run to
    their numbers is what CI's `ctmarl leaderboard check` audits.)"""
    records = tmp_path / "records"
    records.mkdir()
    source = REPO / "leaderboard" / "records" / "matrix_drift-v1_quick_qmix_reset_seed2.yaml"
    shutil.copy(source, records)
    _rewrite(records / source.name, _raise_scores)
    lb.write(lb.build(records), tmp_path)  # admitted: consistent with itself
    with pytest.raises(lb.LeaderboardError, match=f"{source.name} does not reproduce: curves"):
        lb.check(tmp_path, reproduce_per_method=0, audit_budget_s=3600, audit_seed_value=0)
