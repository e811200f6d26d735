"""Method config defaults in YAML (one source of truth with the Config dataclasses) and overrides
through ``make_method`` and ``ctmarl evaluate --method-config``."""

import dataclasses
import re
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.config import to_plain
from ctmarl.errors import ConfigError
from ctmarl.method import load_method_config, make_method, method_class, method_defaults, method_defaults_file
from ctmarl.record import load_record
from ctmarl.registry import METHODS

SHIPPING = [name for name in METHODS.names() if method_defaults_file(name) is not None]


def test_every_reference_method_ships_yaml_defaults():
    reference = [n for n in METHODS.names() if METHODS.entry_point(n).startswith("ctmarl_baselines.")]
    assert reference and set(reference) <= set(SHIPPING), sorted(set(reference) - set(SHIPPING))


@pytest.mark.parametrize("name", SHIPPING)
def test_yaml_defaults_equal_the_config_dataclass_field_by_field(name):
    data = yaml.safe_load(method_defaults_file(name).read_text()) or {}
    defaults = to_plain(method_class(name).Config())
    fields = [f.name for f in dataclasses.fields(method_class(name).Config)]
    assert sorted(data) == sorted(fields), "the YAML lists every config key, and only those"
    for key in fields:
        assert data[key] == defaults[key] and type(data[key]) is type(defaults[key]), key


def test_make_method_applies_overrides_over_the_yaml_defaults():
    method = make_method("redo", {"every_updates": 7})
    assert method.config.every_updates == 7
    assert method.config.dormant_threshold == method_defaults("redo")["dormant_threshold"]
    with pytest.raises(ConfigError, match=r"my\.yaml: unknown key 'threshold'; allowed keys: at_task_start"):
        make_method("redo", {"threshold": 0.2}, where="my.yaml")


def test_a_third_party_method_ships_defaults_beside_its_module(tmp_path, monkeypatch):
    package = tmp_path / "thirdparty_methods"
    (package / "configs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scaled.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from ctmarl.method import Method

        @dataclass(frozen=True)
        class ScaledConfig:
            scale: float = 1.0

        class Scaled(Method):
            Config = ScaledConfig
    '''))
    (package / "configs" / "scaled.yaml").write_text("scale: 2.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS._specs, "scaled", "thirdparty_methods.scaled:Scaled")
    assert make_method("scaled").config.scale == 2.5
    # The class form of a registered method is that method, shipped defaults included.
    assert make_method("thirdparty_methods.scaled:Scaled").config.scale == 2.5
    (package / "configs" / "scaled.yaml").write_text("scael: 2.5\n")
    with pytest.raises(ConfigError, match=r"configs/scaled\.yaml: unknown key 'scael'"):
        make_method("scaled")


@pytest.mark.parametrize("text, message", [
    (None, "cannot read"),
    ("[1, 2]", "expected a mapping of config keys, got list"),
    ("every_updates: [", "not valid YAML"),
])
def test_load_method_config_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "overrides.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=rf"overrides\.yaml: {message}"):
        load_method_config(path)
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_method_config(tmp_path / "empty.yaml") == {}


def evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--quiet",
                                     "--neuron-every", "0", "--checkpoint-every", "0", *args])


def test_method_config_option_overrides_and_records_the_resolved_config(tmp_path):
    overrides = tmp_path / "redo.yaml"
    overrides.write_text("every_updates: 16\ngroups: ['mixer.*']\n")
    result = evaluate("--algo", "redo", "--method-config", str(overrides), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "runs").glob("*.yaml")
    record = load_record(path)
    assert record["method"]["config"] == {**to_plain(make_method("redo").config), "every_updates": 16,
                                          "groups": ["mixer.*"]}
    assert record["method_summary"]["neurons_recycled_total"] >= 0
    mixer = {"mixer.hyper_w1.0", "mixer.hyper_w_final.0", "mixer.V.0"}
    assert set(record["method_summary"]["neurons_recycled"]) <= mixer


def test_a_config_variant_gets_its_own_record_beside_the_default_run(tmp_path):
    out = str(tmp_path / "runs")
    assert evaluate("--algo", "redo", "--out", out).exit_code == 0
    (default,) = (tmp_path / "runs").glob("*.yaml")
    restated = tmp_path / "restated.yaml"  # the shipped defaults, restated: the same run
    restated.write_text(f"every_updates: {make_method('redo').config.every_updates}\n")
    overrides = tmp_path / "redo.yaml"
    overrides.write_text("every_updates: 16\n")
    for path in (restated, overrides, overrides):  # the variant twice: it rewrites its own record
        result = evaluate("--algo", "redo", "--method-config", str(path), "--out", out)
        assert result.exit_code == 0, result.output
    default_text = default.read_text()
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.yaml"))
    (variant,) = [n for n in names if n != default.name]
    assert default.name == "matrix_drift-v1_smoke_qmix_redo_seed0.yaml"
    assert re.fullmatch(r"matrix_drift-v1_smoke_qmix_redo-[0-9a-f]{8}_seed0\.yaml", variant), variant
    assert load_record(default)["method"].get("variant") is None and default.read_text() == default_text
    record = load_record(tmp_path / "runs" / variant)
    assert record["method"]["config"]["every_updates"] == 16 and variant.endswith(f"{record['method']['variant']}_seed0.yaml")


def test_method_config_option_rejects_unknown_keys_naming_file_and_key(tmp_path):
    overrides = tmp_path / "bad.yaml"
    overrides.write_text("every_update: 16\n")
    result = evaluate("--algo", "redo", "--method-config", str(overrides), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert f"error: {overrides}: unknown key 'every_update'; allowed keys: " in result.output
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.yaml"))
