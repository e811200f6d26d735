"""Third-party methods: ``validate-method`` on every registered method and on broken ones, and the
example plug-in ``examples/my_method`` installed as a separate distribution, evaluated through the
CLI and placed on a leaderboard."""

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ctmarl import leaderboard as lb
from ctmarl import record as record_module
from ctmarl import source as source_module
from ctmarl.cli import main
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.method import Method
from ctmarl.record import load_record
from ctmarl.registry import METHODS
from ctmarl.validate_method import Setting, validate_method

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_method"
CLEAN = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}
SHORT = Setting(updates_per_task=12)


# --- validate-method on the registry -------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_keeps_the_contract(name):
    report = validate_method(name, setting=SHORT)
    assert report.ok, "\n".join(report.lines())


# --- validate-method catches broken methods ------------------------------------------------------

class TouchesRecurrentWeights(Method):
    """Changes the GRU's recurrent weights: no neuron group's incoming layer or consumer weight."""

    def after_update(self, update_step):
        if update_step == 5:
            with torch.no_grad():
                self.learner.agent.rnn.weight_hh_l0.mul_(0.5)


class RewritesOutputBiasGradient(Method):
    """Leaves parameters alone but rescales the gradient of the agent's output bias."""

    def after_backward(self):
        self.learner.agent.fc2.bias.grad.mul_(2.0)


class ClaimsToPreserveOutput(Method):
    """In scope (an incoming layer) but shifts the output, while declaring preserves_output."""

    preserves_output = True

    def on_task_start(self, task_index):
        with torch.no_grad():
            self.learner.neuron_groups()[0].incoming.bias.add_(1.0)


class Unseeded(Method):
    """Every instance perturbs differently: two runs from the same seed differ."""

    counter = itertools.count(1)

    def on_task_start(self, task_index):
        with torch.no_grad():
            self.learner.neuron_groups()[0].incoming.weight[0, 0] += next(self.counter)


class ForgetsItsCounter(Method):
    """Acts every 25 of its own updates, but its state_dict() does not save the count."""

    def __init__(self, config=None):
        super().__init__(config)
        self.seen = 0

    def after_update(self, update_step):
        self.seen += 1
        if self.seen % 25 == 0:
            with torch.no_grad():
                self.learner.neuron_groups()[0].incoming.weight.mul_(0.9)


class ForgetsTheOptimizer(Method):
    """Adds a trainable parameter the optimizer never sees."""

    touches = "all"

    def on_task_start(self, task_index):
        if task_index == 1:
            self.learner.mixer.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
            self.learner.target_mixer.register_parameter("extra", torch.nn.Parameter(torch.zeros(3), False))


class ResetsACritic(Method):
    touches = "modules"

    def touched_modules(self):
        return ("critic",)


@dataclass
class MutableConfig:
    strength: float = 1.0


class HasMutableConfig(Method):
    Config = MutableConfig


@pytest.mark.parametrize("cls, check, message", [
    (TouchesRecurrentWeights, "qmix: scope", "after_update(5) changed agent.rnn.weight_hh_l0, outside the declared "
                                             "scope touches='neuron_groups'"),
    (RewritesOutputBiasGradient, "qmix: scope", "after_backward(1) changed the gradient of agent.fc2.bias"),
    (ClaimsToPreserveOutput, "qmix: output", "on_task_start(0) changed the output by up to"),
    (Unseeded, "qmix: determinism", "a second run from the same seed ends with a different agent.fc1.weight"),
    (ForgetsItsCounter, "qmix: resume", "a run resumed from a checkpoint at update 18 ends with a different"),
    (ForgetsTheOptimizer, "qmix: optimizer", "after on_task_start(1), trainable parameter mixer.extra is not in"),
    (ResetsACritic, "qmix: runs", "touched_modules() names 'critic', which the learner does not have"),
    (HasMutableConfig, "protocol", "Config (MutableConfig) is not frozen"),
])
def test_broken_methods_fail_the_named_check(cls, check, message):
    report = validate_method(cls, learners=("qmix",), setting=SHORT)
    failed = {c.name: c.detail for c in report.failures}
    assert check in failed, "\n".join(report.lines())
    assert message in failed[check]


def test_validate_method_cli_reports_and_exits_nonzero():
    runner = CliRunner()
    result = runner.invoke(main, ["validate-method", "test_plugin:TouchesRecurrentWeights", "--learner", "qmix",
                                  "--updates-per-task", "12"])
    assert result.exit_code == 2
    assert "FAIL qmix: scope" in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "error: test_plugin:TouchesRecurrentWeights: 1 check(s) failed; first: qmix: scope: after_update(5)")
    result = runner.invoke(main, ["validate-method", "none", "--learner", "qmix", "--updates-per-task", "4"])
    assert result.exit_code == 0, result.output
    assert "ok   qmix: resume" in result.output


# --- the example plug-in, installed as a separate distribution -----------------------------------

CLEAN_CLI = (
    "import sys, ctmarl.record as r; "
    f"r.git_state = lambda path: {CLEAN!r}; "  # records from this test's tree count as clean
    "from ctmarl.cli import main; sys.exit(main())"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """examples/my_method installed with pip into its own folder (no network, no build isolation);
    returns the environment under which Python sees it."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return {"env": env, "source": source, "target": target, "work": work}


def _run(installed, *args, timeout=300):
    return subprocess.run(list(args), env=installed["env"], capture_output=True, text=True, timeout=timeout,
                          cwd=installed["work"])


def test_example_plugin_installs_as_its_own_distribution(installed):
    dist_infos = [p.name for p in installed["target"].glob("*.dist-info")]
    assert dist_infos == ["ctmarl_my_method-0.1.0.dist-info"]
    entry_points = (installed["target"] / dist_infos[0] / "entry_points.txt").read_text()
    assert "[ctmarl.methods]" in entry_points and "my_method = my_method.method:L2Init" in entry_points


def test_example_plugin_passes_validate_method_and_its_own_tests(installed):
    # The console script finds the method by its entry-point name (its own test covers qmix).
    ctmarl = shutil.which("ctmarl") or pytest.skip("the ctmarl console script is not on PATH")
    checked = _run(installed, ctmarl, "validate-method", "my_method", "--learner", "qplex",
                   "--updates-per-task", "12")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok   qplex: output: every hook call left the output unchanged" in checked.stdout
    tests = _run(installed, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 str(installed["source"] / "tests"))
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_example_plugin_evaluates_through_the_cli_and_enters_a_leaderboard(installed, tmp_path, monkeypatch, request):
    records = tmp_path / "records"
    result = _run(installed, sys.executable, "-c", CLEAN_CLI, "evaluate", "--algo", "my_method", "--scenario",
                  "matrix_drift", "--tier", "smoke", "--seed", "0", "--out", str(records), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    plugin_record = load_record(records / "matrix_drift-v1_smoke_qmix_my_method_seed0.yaml")
    assert plugin_record["method"]["entry_point"] == "my_method.method:L2Init"
    assert plugin_record["method"]["config"] == {"strength": 0.01, "parts": ["agent", "mixer"]}
    assert set(plugin_record["method_summary"]["relative_distance_to_init"]) == {
        "agent.fc1", "mixer.hyper_w1.0", "mixer.hyper_w_final.0", "mixer.V.0"}
    block = plugin_record["provenance"]["method"]  # pip-installed outside git: named by its distribution
    assert (block["distribution"], block["version"], block["git_dirty"]) == ("ctmarl-my-method", "0.1.0", None)
    # The leaderboard checks the record's method against the installed one (entry point, shipped
    # defaults, source hash), so it must be installed here too.
    monkeypatch.syspath_prepend(str(installed["target"]))
    METHODS.refresh()
    request.addfinalizer(METHODS.refresh)  # read again at the next lookup, without the plug-in
    monkeypatch.setattr(record_module, "git_state", lambda path: dict(CLEAN))
    monkeypatch.setattr(source_module, "source_git_state", lambda target, files: dict(CLEAN))
    for seed in (0, 1):
        evaluate(RunSpec("matrix_drift", algo="none", tier="smoke", seed=seed), records)
    board = lb.build(records)
    lb.write(board, tmp_path)
    entries = {e["method"]: e for e in board.data()["unranked_entries"]}
    mine = entries["my_method"]
    assert mine["method_entry_point"] == "my_method.method:L2Init" and mine["seeds"] == [0]
    assert mine["records"] == [{"file": "matrix_drift-v1_smoke_qmix_my_method_seed0.yaml",
                                "content_hash": plugin_record["content_hash"]}]
    assert 0.0 <= mine["probability_of_improvement_over_none"] <= 1.0
    assert "| `my_method` | 1 |" in (tmp_path / lb.MARKDOWN_NAME).read_text()
    lb.check(tmp_path, reproduce_per_method=0)
