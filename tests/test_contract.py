"""The method contract on the real path (ctmarl.contract): each mistake ``validate-method`` would
find, made by a throwaway plug-in distribution, stops ``ctmarl evaluate`` with one error line
naming the method, its distribution, the hook and the violation; a finished run's record carries
the contract's outcome, and the leaderboard refuses a plug-in's record without a clean one. The
guard never changes a run's numbers. The plug-ins are installed with the ``site`` fixture
(tests/conftest.py)."""

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from ctmarl import contract as contract_module
from ctmarl import leaderboard as lb
from ctmarl import record as record_module
from ctmarl.cli import main
from ctmarl.errors import RecordError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.record import record_filename, seal, write_yaml_atomic

PLUGINS = '''
from dataclasses import dataclass

import torch

from ctmarl.method import Method


@dataclass(frozen=True)
class Frozen:
    strength: float = 0.1


@dataclass
class Loose:
    strength: float = 0.1


class Stamp:
    """Not a tensor, number, string, list or dict: a weights_only load refuses it."""


class OutOfScope(Method):
    """Declares neuron groups, then moves the agent's output bias (not in any group's scope)."""
    Config = Frozen
    touches = "neuron_groups"

    def after_update(self, update_step):
        if update_step == 3:
            with torch.no_grad():
                self.learner.agent.fc2.bias.add_(self.config.strength)


class MovesOutput(Method):
    """May touch anything, but claims to keep the output, and scales the mixer's last layer."""
    Config = Frozen
    touches = "all"
    preserves_output = True

    def after_update(self, update_step):
        if update_step == 3:
            with torch.no_grad():
                self.learner.mixer.V[2].bias.add_(1.0)


class GradientMeddler(Method):
    """Declares it touches nothing, and rescales a gradient before the optimizer step."""
    Config = Frozen
    touches = "nothing"

    def after_backward(self):
        self.learner.agent.fc1.weight.grad.mul_(2.0)


class LooseConfig(Method):
    Config = Loose
    touches = "nothing"


class Unloadable(Method):
    Config = Frozen
    touches = "nothing"

    def state_dict(self):
        return {"stamp": Stamp()}


class Gentle(Method):
    """Keeps the contract: shrinks the first agent layer's incoming weights at every task start."""
    Config = Frozen
    touches = "neuron_groups"

    def on_task_start(self, task_index):
        if task_index > 0:
            with torch.no_grad():
                self.learner.agent.fc1.weight.mul_(1.0 - self.config.strength)
                self.learner.target_agent.fc1.weight.mul_(1.0 - self.config.strength)
'''
NAMES = {"out_of_scope": "OutOfScope", "moves_output": "MovesOutput", "meddler": "GradientMeddler",
         "loose": "LooseConfig", "unloadable": "Unloadable", "gentle": "Gentle"}


@pytest.fixture
def plugins(site):
    site("contract-probe", "0.1", {name: f"contract_probe:{cls}" for name, cls in NAMES.items()},
         {"contract_probe": PLUGINS})


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


ORIGIN = "error: method '{}' (distribution contract-probe 0.1) broke the method contract in "


@pytest.mark.parametrize("name, where, what", [
    ("out_of_scope", "after_update at update 3",
     "it changed agent.fc2.bias, outside its declared scope touches='neuron_groups'"),
    ("moves_output", "after_update at update 3", "it changed the network's output by up to"),
    ("meddler", "after_backward at update 1",
     "it changed the gradient of agent.fc1.weight, outside its declared scope touches='nothing'"),
    ("loose", "attach before training", "Config (Loose) is not frozen"),
    ("unloadable", "state_dict after attach", "its state cannot be checkpointed (torch.save, then torch.load "
                                               "with weights_only=True)"),
])
def test_each_broken_contract_stops_evaluate_with_one_line(plugins, tmp_path, name, where, what):
    result = CliRunner().invoke(main, ["evaluate", "--algo", name, "--scenario", "matrix_drift", "--tier", "smoke",
                                       "--quiet", "--out", str(tmp_path / "runs")])
    line = one_error_line(result)
    assert line.startswith(ORIGIN.format(name) + where + ": "), line
    assert what in line, line
    assert not list((tmp_path / "runs").glob("*.yaml"))  # no record of a broken run


def test_a_kept_contract_is_in_the_record_and_admitted_a_missing_or_unclean_one_refused(
        plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(record_module, "git_state", lambda path: {"git_commit": "0" * 40, "git_dirty": False})
    records = tmp_path / "records"
    for algo in ("gentle", "none"):  # none: the reference entry every table needs
        record, _ = evaluate(RunSpec("matrix_drift", algo=algo, tier="smoke"), records)
    record, _ = evaluate(RunSpec("matrix_drift", algo="gentle", tier="smoke"), None)
    contract = record["contract"]
    assert contract["clean"] is True and contract["guarded"] is True and contract["touches"] == "neuron_groups"
    assert contract["hooks_checked"]["on_task_start"] == 6 and contract["hooks_changed"]["on_task_start"] == 5
    assert contract["hooks_checked"]["after_update"] == 0  # not overridden: the base no-op is not snapshotted
    assert contract["state_round_trips"] == 1 + 6  # after attach, at every task end
    lb.build(records)
    path = records / record_filename(record)
    original = path.read_text()
    for change, message in ((lambda r: r.pop("contract"), "contract is missing: a plug-in method's record"),
                            (lambda r: r["contract"].update(clean=False), "method contract is not clean")):
        edited = yaml.safe_load(original)
        change(edited)
        write_yaml_atomic(seal(edited), path)
        with pytest.raises(RecordError, match=message):
            lb.build(records)


def test_the_guard_never_changes_a_run(monkeypatch):
    """KNIFE (every hook overridden, output preservation checked) with the guard and with every
    hook run bare: the same numbers."""
    spec = RunSpec("matrix_drift", algo="knife", tier="smoke")
    guarded, _ = evaluate(spec, None)
    monkeypatch.setattr(contract_module.ContractGuard, "call",
                        lambda self, hook, where, fn, counts, grads=False: fn())
    bare, _ = evaluate(spec, None)
    assert guarded["contract"]["outputs_checked"] > 0
    for key in ("curves", "R", "metrics", "method_summary", "neurons"):
        assert guarded[key] == bare[key], key


def test_the_class_form_of_a_registered_method_is_that_method():
    """``--algo package.module:Class`` of a registered method runs with its shipped defaults and
    writes the name form's record (one run, one leaderboard entry)."""
    by_name, _ = evaluate(RunSpec("matrix_drift", algo="reset", tier="smoke"), None)
    by_class, _ = evaluate(RunSpec("matrix_drift", algo="ctmarl_baselines.methods.reset:Reset", tier="smoke"), None)
    assert by_class["method"] == by_name["method"] and by_class["method"]["name"] == "reset"
    assert "variant" not in by_class["method"]
    assert record_filename(by_class) == record_filename(by_name)
    assert by_class["curves"] == by_name["curves"]


def test_contract_counts_survive_a_checkpoint(tmp_path):
    """Counts live in the run's result, so a resumed run's record says what an uninterrupted one
    says (the resume tests compare whole records; here the counts by name)."""
    from ctmarl.evaluate import prepare

    spec = RunSpec("matrix_drift", algo="knife", tier="smoke")
    first = prepare(spec, tmp_path, checkpoint_every=0)
    state = first.training.state_dict()
    assert dataclasses.asdict(first.training.result)["contract"] == state["result"]["contract"]
    assert state["result"]["contract"]["hooks_checked"]["attach"] == 1
