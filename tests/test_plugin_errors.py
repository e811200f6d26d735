"""Plug-ins that go wrong: two distributions registering one name, a distribution taking a reference
name, entry points that fail to load, and a method raising inside a hook. Each is one ``error:``
line naming the method and its distribution (exit status 2); a plug-in's own exception also leaves
its traceback in a log file. The plug-ins are throwaway distributions (a ``.dist-info`` folder and a
module) on a temporary ``sys.path`` entry, found through ``importlib.metadata`` as installed ones are."""

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.errors import PluginError
from ctmarl.registry import ENVS, LEARNERS, METHODS

METHOD_SOURCE = '''
from dataclasses import dataclass
from ctmarl.method import Method


@dataclass(frozen=True)
class Settings:
    strength: float = 1.0


class Plugin(Method):
    Config = Settings
    touches = "nothing"
    fail_in = {fail_in!r}

    def attach(self, learner, context):
        super().attach(learner, context)
        if self.fail_in == "attach":
            raise RuntimeError("no learner I know")

    def on_task_start(self, task_index):
        if self.fail_in == "on_task_start":
            raise KeyError("task")

    def after_backward(self):
        if self.fail_in == "after_backward":
            raise ValueError("bad gradient")

    def after_update(self, update_step):
        if self.fail_in == "after_update" and update_step == 2:
            1 / 0
'''


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def evaluate(algo, out):
    return invoke("evaluate", "--algo", algo, "--scenario", "matrix_drift", "--tier", "smoke", "--quiet",
                  "--out", str(out))


# --- one provider per name -----------------------------------------------------------------------

def test_two_distributions_registering_one_name_is_an_error_naming_both(site, tmp_path):
    source = {"twin_a": METHOD_SOURCE.format(fail_in=None), "twin_b": METHOD_SOURCE.format(fail_in=None)}
    site("twin-a", "1.0", {"twin": "twin_a:Plugin"}, source)
    site("twin-b", "2.0", {"twin": "twin_b:Plugin"})
    line = one_error_line(evaluate("twin", tmp_path / "runs"))
    assert line == ("error: method 'twin' is registered by 2 distributions: twin-a 1.0 (twin_a:Plugin) and "
                    "twin-b 2.0 (twin_b:Plugin); uninstall one or rename its entry point")
    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    (row,) = [r for r in listed.output.splitlines() if r.strip().startswith("twin ")]
    assert "[conflict: method 'twin' is registered by 2 distributions: twin-a 1.0" in row
    assert METHODS.load("none").__name__ == "NoMethod"  # the conflict breaks nothing else


def test_a_reference_name_cannot_be_taken(site, tmp_path):
    site("evil-knife", "6.6", {"knife": "evil_knife:Plugin"}, {"evil_knife": METHOD_SOURCE.format(fail_in=None)})
    line = one_error_line(evaluate("knife", tmp_path / "runs"))
    assert line == ("error: method 'knife' is a reference name of ctmarl (ctmarl_baselines.methods.knife:Knife); "
                    "distribution evil-knife 6.6 (evil_knife:Plugin) may not register it: rename it there or "
                    "uninstall that distribution")
    with pytest.raises(PluginError, match="evil-knife 6.6"):
        METHODS.load("knife")
    assert "evil_knife" not in sys.modules  # refused before the impostor was imported


# --- entry points that fail to load --------------------------------------------------------------

def test_list_marks_broken_entry_points(site):
    site("broken-methods", "0.3", {"needs_torchx": "needs_torchx:Plugin", "missing_class": "fine_module:Nope"},
         {"needs_torchx": "import torchx_not_installed\n", "fine_module": METHOD_SOURCE.format(fail_in=None)})
    result = invoke("list")
    assert result.exit_code == 0, result.output
    rows = {r.split()[0]: r for r in result.output.splitlines() if r.startswith("  ") and r.split()}
    assert rows["needs_torchx"] == ("  needs_torchx     needs_torchx:Plugin   [broken: ModuleNotFoundError: "
                                    "No module named 'torchx_not_installed']")
    assert rows["missing_class"].endswith(
        "[broken: AttributeError: module 'fine_module' has no attribute 'Nope']")
    assert "[" not in rows["knife"] and "[" not in rows["qmix"]


def test_a_missing_class_names_the_method_and_distribution(site, tmp_path):
    site("broken-methods", "0.3", {"missing_class": "fine_module2:Nope"},
         {"fine_module2": METHOD_SOURCE.format(fail_in=None)})
    line = one_error_line(evaluate("missing_class", tmp_path / "runs"))
    assert line == ("error: method 'missing_class' (distribution broken-methods 0.3): 'fine_module2' has no "
                    "attribute 'Nope'")


def test_an_import_error_inside_the_plugin_is_one_line_with_a_traceback(site, tmp_path):
    site("bad-import", "0.1.0", {"bad_import": "bad_import_module:Plugin"},
         {"bad_import_module": "from math import no_such_function\n"})
    line = one_error_line(evaluate("bad_import", tmp_path / "runs"))
    log = tmp_path / "runs.ctmarl-error.log"
    assert line.startswith("error: method 'bad_import' (distribution bad-import 0.1.0) failed to load "
                           "(bad_import_module:Plugin): ImportError: cannot import name 'no_such_function' from 'math'")
    assert line.endswith(f"; traceback in {log}")
    assert "bad_import_module.py" in log.read_text()


def test_a_config_without_a_default_names_the_method_and_distribution(site, tmp_path):
    source = METHOD_SOURCE.format(fail_in=None).replace("strength: float = 1.0", "strength: float")
    site("no-default", "0.2", {"no_default": "no_default_module:Plugin"}, {"no_default_module": source})
    line = one_error_line(evaluate("no_default", tmp_path / "runs"))
    assert line == ("error: method 'no_default' (distribution no-default 0.2): Settings.strength has no default; "
                    "give it one (or set it in the file given to --method-config)")


# --- a hook that raises --------------------------------------------------------------------------

@pytest.mark.parametrize("hook, where, raised", [
    ("attach", "before training", "RuntimeError: no learner I know"),
    ("on_task_start", "at task 0 (M1)", "KeyError: 'task'"),
    ("after_backward", "at update 1", "ValueError: bad gradient"),
    ("after_update", "at update 2", "ZeroDivisionError: division by zero"),
])
def test_a_hook_that_raises_is_one_line_naming_method_and_distribution(site, tmp_path, hook, where, raised):
    module = f"raises_in_{hook}"
    site("my-method", "0.1.0", {"my_method": f"{module}:Plugin"}, {module: METHOD_SOURCE.format(fail_in=hook)})
    line = one_error_line(evaluate("my_method", tmp_path / "runs"))
    kind, _, message = raised.partition(": ")
    log = tmp_path / "runs.ctmarl-error.log"
    assert line == (f"error: method 'my_method' (distribution my-method 0.1.0) raised {kind} in {hook} {where}: "
                    f"{message}; traceback in {log}")
    text = log.read_text()
    assert f"{module}.py" in text and f"in {hook}" in text
    assert not list(tmp_path.glob("runs/*.yaml"))  # no record
