"""Hostile input (#21): mutated scenarios and records are rejected cleanly, never crash or hang, and
nothing out of range is accepted; each example of the issue is a named regression test below."""

import math
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.config import from_mapping, read_yaml
from ctmarl.errors import ConfigError, CtmarlError, RecordError
from ctmarl.method import load_method_config
from ctmarl.record import load_record, seal
from ctmarl.scenario import TIER_NAMES, Protocol, load_scenario_file
from ctmarl.sweep import load_sweep_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MATRIX = REPO / "scenarios" / "matrix_drift.yaml"
RECORD = fuzz_inputs.RECORD_FILE
#: Seconds one mutant may take to load (the slowest valid one takes about 0.2 s).
TIME_LIMIT = 2.0


# --- the fuzz test ---------------------------------------------------------------------------------

def test_mutated_scenarios_and_records_are_rejected_cleanly(tmp_path, monkeypatch):
    monkeypatch.delenv("CTMARL_ALLOW_IMPORT", raising=False)
    originals = fuzz_inputs.baselines(tmp_path)
    assert [r.mutant.source for r in originals if r.outcome != fuzz_inputs.ACCEPTED_VALID] == [], originals
    results = [fuzz_inputs.run_case(m, tmp_path, TIME_LIMIT)
               for m in fuzz_inputs.mutants(count=200, seed=21, records=50)]
    bad = [r for r in results if r.outcome in (fuzz_inputs.CRASHED, fuzz_inputs.HUNG, fuzz_inputs.ACCEPTED_INVALID)]
    assert not bad, "\n".join(f"{r.outcome}: {r.mutant.source} {r.mutant.kind} {r.mutant.detail}: {r.error[:200]}"
                              for r in bad)
    outcomes = {r.outcome for r in results}
    assert fuzz_inputs.REJECTED in outcomes and fuzz_inputs.ACCEPTED_VALID in outcomes


def test_the_mutator_is_seeded():
    first = list(fuzz_inputs.mutants(count=20, seed=5, records=5))
    again = list(fuzz_inputs.mutants(count=20, seed=5, records=5))
    assert [(m.kind, m.data) for m in first] == [(m.kind, m.data) for m in again]


# --- helpers -----------------------------------------------------------------------------------------

def _matrix(tmp_path, edit=None, text=None, name="matrix_drift.yaml") -> Path:
    """A copy of matrix_drift.yaml with ``edit`` applied to its data (or the raw ``text``)."""
    if text is None:
        data = yaml.safe_load(MATRIX.read_text())
        if edit:
            edit(data)
        text = yaml.safe_dump(data, sort_keys=False)
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _rejected(path, *patterns, seconds=1.0) -> str:
    """Load ``path`` as ``ctmarl evaluate --scenario`` does; it must fail with a ConfigError
    naming the file and matching each pattern, within ``seconds``."""
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_scenario_file(path)
    assert time.perf_counter() - start < seconds
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def invoke(*args):
    return CliRunner().invoke(main, list(args))


# --- each example of the issue ----------------------------------------------------------------------

def test_integer_key_is_a_clear_error_not_a_type_error(tmp_path):
    with pytest.raises(ConfigError, match="keys must be strings, got int 1"):
        from_mapping(Protocol, {1: 2, "evals_per_task": 1}, "f.yaml")
    _rejected(_matrix(tmp_path, lambda d: d["protocol"].update({1: 2})), "mapping keys must be strings, got int 1")


@pytest.mark.parametrize("value", [10**400, 1e308, 1e39, -1e39])
def test_huge_payoff_is_refused_not_an_overflow(tmp_path, value):
    def edit(d):
        d["tasks"][1]["settings"]["payoff"][0][0] = value
    _rejected(_matrix(tmp_path, edit), "payoff[0][0]: must be a finite number within float32")


def test_a_payoff_range_beyond_float32_is_refused(tmp_path):
    def edit(d):
        d["tasks"][1]["settings"]["payoff"][0][0] = 3e38
        d["tasks"][1]["settings"]["payoff"][0][1] = -3e38
    _rejected(_matrix(tmp_path, edit), "payoff: max - min (6e+38) must be within float32")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_payoffs_are_refused(tmp_path, value):
    def edit(d):
        d["tasks"][2]["settings"]["payoff"][1][1] = value
    _rejected(_matrix(tmp_path, edit), "tasks[2] (M3)", "payoff[1][1]: must be a finite number")


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    text = MATRIX.read_text().replace("description: >", "notes: " + "[" * 100_000 + "]" * 100_000 + "\ndescription: >")
    message = _rejected(_matrix(tmp_path, text=text))
    # Our loader's depth limit, or (PyYAML >= 6.0.4) the parser's own limit on flow nesting, which
    # fires first: either way one clear error line, not a RecursionError.
    assert "nested deeper than 32 levels" in message or "exceeded maximum nesting depth" in message, message


def test_negative_mixing_embed_dim_is_refused_before_torch_sees_it(tmp_path):
    _rejected(_matrix(tmp_path, lambda d: d["tiers"]["quick"]["learner"].update(mixing_embed_dim=-3)),
              "tiers.quick.learner", "mixing_embed_dim: must be >= 1", "checked for qmix")


def test_a_tier_override_must_suit_every_registered_learner(tmp_path):
    # mixing_embed_dim is QMIX's; QPLEX has no such key, and the learner is chosen at run time
    _rejected(_matrix(tmp_path, lambda d: d["tiers"]["smoke"]["learner"].update(mixing_embed_dim=8)),
              "unknown key 'mixing_embed_dim'", "every registered learner")


def test_alias_bomb_is_refused_in_milliseconds(tmp_path):
    bomb = ["lols:\n", "- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    bomb += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 12)]
    text = "".join(bomb) + MATRIX.read_text().replace("description: >", "description: *l11\nnotes: >")
    _rejected(_matrix(tmp_path, text=text), "alias bomb", seconds=0.5)


def test_shipped_aliases_still_work():
    scenario = load_scenario_file(MATRIX)
    assert scenario.spec.tasks[0].settings["payoff"] == scenario.spec.tasks[-1].settings["payoff"]


def test_evals_per_task_of_10_to_the_39_is_refused_at_once(tmp_path):
    _rejected(_matrix(tmp_path, lambda d: d["protocol"].update(evals_per_task=10**39)),
              "protocol.evals_per_task", "2**53")
    _rejected(_matrix(tmp_path, lambda d: d["protocol"].update(evals_per_task=10**6)),
              "evals_per_task: must be <= 1000 (allowed: [1, 1000]), got 1000000")


@pytest.mark.parametrize("lr, expected", [
    (0, "lr: must be > 0 (allowed: (0, 10]), got 0.0"), (-0.001, "lr: must be > 0"),
    (math.nan, "lr: must be a finite number"), (math.inf, "lr: must be a finite number"), (1e3, "lr: must be <= 10"),
])
def test_bad_learning_rates_are_refused(tmp_path, lr, expected):
    _rejected(_matrix(tmp_path, lambda d: d["tiers"]["quick"]["learner"].update(lr=lr)), "tiers.quick.learner", expected)


def test_an_invalid_value_in_another_tier_is_refused_when_the_scenario_loads(tmp_path):
    path = _matrix(tmp_path, lambda d: d["tiers"]["standard"]["learner"].update(buffer_episodes=None))
    _rejected(path, "tiers.standard.learner.buffer_episodes: expected an integer, got NoneType None")
    out = tmp_path / "out"
    result = invoke("evaluate", "--scenario", str(path), "--tier", "smoke", "--quiet", "--out", str(out))
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1
    assert not out.exists()


def test_duplicate_key_is_refused_not_silently_the_last(tmp_path):
    text = MATRIX.read_text().replace("    env_steps_per_task: 512\n",
                                      "    env_steps_per_task: 512\n    env_steps_per_task: 5\n")
    _rejected(_matrix(tmp_path, text=text), "duplicate key 'env_steps_per_task'")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_file_is_a_clear_error(tmp_path, encoding):
    _rejected(_matrix(tmp_path, text=MATRIX.read_text().encode(encoding)), "save it as UTF-8")


def test_invalid_utf8_is_a_clear_error_and_a_bom_is_fine(tmp_path):
    latin1 = MATRIX.read_text().replace("Two agents", "Deux agents à trois actions").encode("latin-1")
    _rejected(_matrix(tmp_path, text=latin1), "not UTF-8 text")
    assert load_scenario_file(_matrix(tmp_path, text=b"\xef\xbb\xbf" + MATRIX.read_bytes())).name == "matrix_drift"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "matrix_drift.yaml"
    os.mkfifo(fifo)
    outcome = {}
    reader = threading.Thread(target=lambda: outcome.setdefault("error", _error_of(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO hung"
    assert "not a regular file (a FIFO)" in outcome["error"]


def _error_of(path) -> str:
    try:
        load_scenario_file(path)
    except CtmarlError as exc:
        return str(exc)
    return "accepted"


def test_files_over_the_size_cap_are_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (2**20 + 10) + "\n")
    with pytest.raises(ConfigError, match="larger than the 1 MiB allowed"):
        read_yaml(big, str(big))


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path, monkeypatch):
    # an error raised after evaluate made --out (here: building the learner)
    def broken(*args, **kwargs):
        raise ConfigError("learner config: no")
    monkeypatch.setattr("ctmarl.evaluate.make_learner", broken)
    out = tmp_path / "new" / "runs"
    result = invoke("evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--quiet", "--out", str(out))
    assert result.exit_code == 2 and result.output == "error: learner config: no\n"
    assert not (tmp_path / "new").exists()


def test_an_internal_error_is_one_line_with_the_traceback_in_a_log(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")
    monkeypatch.setattr("ctmarl.evaluate.make_learner", broken)
    out = tmp_path / "runs"
    result = invoke("evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--quiet", "--out", str(out))
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    log = out.resolve().parent / "runs.ctmarl-error.log"
    assert line == f"error: internal error (ZeroDivisionError): division by zero; traceback in {log}"
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
    assert not out.exists()


def test_nan_learning_rate_through_the_cli_writes_nothing(tmp_path):
    path = _matrix(tmp_path, lambda d: d["tiers"]["quick"]["learner"].update(lr=math.nan))
    out = tmp_path / "out"
    result = invoke("evaluate", "--scenario", str(path), "--tier", "quick", "--quiet", "--out", str(out))
    assert result.exit_code == 2 and "tiers.quick.learner.lr: must be a finite number" in result.output
    assert not out.exists()


@pytest.mark.parametrize("length, expected", [(10**6, "must be a string of at most 10000 characters"),
                                              (5000, "unknown env family 'fffff")])
def test_a_huge_env_family_is_not_echoed_in_full(tmp_path, length, expected):
    message = _rejected(_matrix(tmp_path, lambda d: d["env"].update(family="f" * length)), expected)
    assert len(message) < 500 and "..." in message


def test_family_is_not_imported_unless_allowed(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "fuzz_family_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from ctmarl.envs.matrix import MatrixGameEnv as Env\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CTMARL_ALLOW_IMPORT", raising=False)
    before = set(sys.modules)
    _rejected(_matrix(tmp_path, lambda d: d["env"].update(family="this:s")), "unknown env family 'this:s'")
    assert "this" in before or "this" not in sys.modules  # the Zen of Python was not printed
    path = _matrix(tmp_path, lambda d: d["env"].update(family="fuzz_family_module:Env"))
    _rejected(path, "unknown env family 'fuzz_family_module:Env'", "CTMARL_ALLOW_IMPORT")
    assert not marker.exists()
    monkeypatch.setenv("CTMARL_ALLOW_IMPORT", "other, fuzz_family_module")
    assert load_scenario_file(path).spec.env.family == "fuzz_family_module:Env"
    assert marker.exists()


# --- the same rules for the other files ---------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("every_updates: 5\nevery_updates: 6\n", "duplicate key 'every_updates'"),
    ("dormant_threshold: .nan\n", "finite"),
    ("dormant_threshold: !!python/object/apply:os.system [echo]\n", "tag !!python/object/apply:os.system is not allowed"),
])
def test_method_configs_follow_the_same_rules(tmp_path, text, message):
    from ctmarl.method import make_method

    path = tmp_path / "redo.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make_method("redo", load_method_config(path), where=str(path))


def test_sweep_files_follow_the_same_rules(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("scenarios: [matrix_drift]\nseeds: [0, 1]\nseeds: [2]\n")
    with pytest.raises(ConfigError, match="duplicate key 'seeds'"):
        load_sweep_file(path)
    path.write_text("scenarios: [matrix_drift]\nseeds: [0, 100000000000000000000]\n")
    with pytest.raises(ConfigError, match=r"seeds\[1\]: must be an integer in \[-2\*\*53, 2\*\*53\]"):
        load_sweep_file(path)


def _resealed_record(tmp_path, edit) -> Path:
    record = yaml.safe_load(RECORD.read_text())
    edit(record)
    try:
        seal(record)
    except Exception:  # noqa: BLE001 -- the edit broke what the hashes read: leave them as they were
        pass
    path = tmp_path / RECORD.name
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["metrics"].update({1: 0.5}), "mapping keys must be strings"),
    (lambda r: r.update(seed="0"), "seed must be an integer, got str '0'"),
    (lambda r: r["scenario"].pop("tier"), "missing key 'scenario.tier'"),
    (lambda r: r["metrics"].update(auc="high"), "metrics.auc must be a number, got str 'high'"),
    (lambda r: r["metrics"].update(auc=math.inf), "metrics.auc is not finite"),
    (lambda r: r.update(tasks="M1"), "tasks must be a list"),
    (lambda r: r["R"][0].__setitem__(0, "x"), r"R[0][0] must be"),
    (lambda r: r.update(learner=["qmix"]), "learner must be a mapping"),
])
def test_malformed_records_are_named_record_errors(tmp_path, edit, message):
    with pytest.raises(RecordError) as info:
        load_record(_resealed_record(tmp_path, edit))
    assert message in str(info.value)


def test_every_tier_is_checked_for_each_registered_learner():
    scenario = load_scenario_file(MATRIX)
    for tier in TIER_NAMES:
        assert set(scenario.learner_configs(tier)) >= {"qmix", "qplex"}
