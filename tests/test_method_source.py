"""``provenance.method``: a record names the code of its method, and the leaderboard refuses one
whose plug-in files were uncommitted, untracked or have changed since the run (ctmarl.source).

The plug-in is a throwaway package in a temporary git repository put on ``sys.path`` and run as
``--algo <package>.method:Plain``; ctmarl's own checkout is reported clean (``clean_git``), as in
tests/test_leaderboard.py, so only the plug-in's state decides.
"""

import hashlib
import itertools
import shutil
import subprocess
import sys

import pytest
import yaml

from ctmarl import leaderboard as lb
from ctmarl import record as record_module
from ctmarl.errors import RecordError
from ctmarl.evaluate import RunSpec, evaluate
from ctmarl.record import record_filename, seal, write_yaml_atomic
from ctmarl.source import method_source

CLEAN = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}
METHOD_PY = '''from ctmarl.method import Method


class Plain(Method):
    """Does nothing: the code, not the behaviour, is what these tests are about."""

    touches = "nothing"
    preserves_output = True
'''
_names = itertools.count()


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package ``plug_N`` (``__init__.py``, ``method.py``) in a fresh git repository with no
    commit yet, importable; yields (repo folder, package folder, entry point)."""
    name = f"ctmarl_test_plug_{next(_names)}"
    repo = tmp_path / "repo"
    package = repo / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A throwaway plug-in."""\n')
    (package / "method.py").write_text(METHOD_PY)
    _git(repo, "init", "-q")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.setattr(record_module, "git_state", lambda path: dict(CLEAN))
    yield repo, package, f"{name}.method:Plain"
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _commit(repo):
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "plug-in")


def _head(repo):
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def _run(entry_point, records):
    _, path = evaluate(RunSpec("matrix_drift", algo=entry_point, tier="smoke", seed=0), records, log=())
    return path


def test_source_hash_is_the_documented_one(plugin):
    _, package, entry_point = plugin
    lines = "".join(f"{package.name}/{f}\0{hashlib.sha256((package / f).read_bytes()).hexdigest()}\n"
                    for f in ("__init__.py", "method.py"))
    block = method_source(entry_point)
    assert block["source_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert block["source_files"] == 2 and block["package"] == package.name


def test_untracked_or_modified_plugin_is_dirty_and_refused_by_build(plugin, tmp_path):
    repo, package, entry_point = plugin
    path = _run(entry_point, tmp_path / "records")  # nothing committed: every file untracked
    block = yaml.safe_load(path.read_text())["provenance"]["method"]
    assert block["git_dirty"] is True
    with pytest.raises(RecordError, match=rf"{path.name}: provenance\.method\.git_dirty is true"):
        lb.build(tmp_path / "records")
    _commit(repo)
    assert method_source(entry_point)["git_dirty"] is False
    (package / "method.py").write_text(METHOD_PY + "# an uncommitted edit\n")
    assert method_source(entry_point)["git_dirty"] is True
    _commit(repo)
    (package / "extra.py").write_text("X = 1\n")  # untracked, inside the package
    assert method_source(entry_point)["git_dirty"] is True


def test_committed_plugin_is_admitted_and_a_later_change_refused(plugin, tmp_path):
    repo, package, entry_point = plugin
    _commit(repo)
    path = _run(entry_point, tmp_path / "records")
    record = yaml.safe_load(path.read_text())
    block = record["provenance"]["method"]
    assert block["git_dirty"] is False and block["git_commit"] == _head(repo)
    assert block["distribution"] is None and block["package"] == package.name
    lb.write(lb.build(tmp_path / "records"), tmp_path)
    board = lb.check(tmp_path, reproduce_per_method=0)
    assert [e["method"] for b in board.boards for e in b.entries] == [entry_point]

    # The plug-in changes after the run, committed (so clean): its hash no longer matches.
    (package / "method.py").write_text(METHOD_PY.replace("Does nothing", "Still does nothing"))
    _commit(repo)
    with pytest.raises(RecordError, match=rf"{path.name}: provenance\.method\.source_sha256 differs from the "
                                          "installed method's"):
        lb.check(tmp_path, reproduce_per_method=0)


def test_plugin_record_without_the_block_is_refused_reference_one_admitted(plugin, tmp_path):
    repo, _, entry_point = plugin
    _commit(repo)
    path = _run(entry_point, tmp_path / "records")
    record = yaml.safe_load(path.read_text())
    del record["provenance"]["method"]
    write_yaml_atomic(seal(record), path)
    with pytest.raises(RecordError, match=rf"{path.name}: provenance\.method is missing"):
        lb.build(tmp_path / "records")
    # Committed reference records predate the block: ctmarl's own git_commit covers them.
    reference = {"method": {"entry_point": "ctmarl_baselines.methods.none:NoMethod"}, "provenance": {}}
    lb.check_method_source(reference, "reference.yaml")
    reference["provenance"]["method"] = {**method_source(entry_point), "git_dirty": True}
    with pytest.raises(RecordError, match=r"reference\.yaml: provenance\.method\.git_dirty is true"):
        lb.check_method_source(reference, "reference.yaml")


def test_installed_distribution_outside_git_identifies_the_plugin(plugin, tmp_path, monkeypatch):
    repo, package, entry_point = plugin
    shutil.rmtree(repo / ".git")
    info = repo / "ctmarl_test_plug-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ctmarl-test-plug\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text(f"{package.name}\n")
    block = method_source(entry_point)
    assert (block["distribution"], block["version"]) == ("ctmarl-test-plug", "1.2.3")
    assert (block["git_commit"], block["git_dirty"]) == (None, None)
    record = {"method": {"entry_point": entry_point}, "provenance": {"method": block}}
    lb.check_method_source(record, "plug.yaml")  # a named, versioned distribution: admitted
    record["provenance"]["method"] = {**block, "distribution": None, "version": None}
    with pytest.raises(RecordError, match=r"plug\.yaml: provenance\.method: the method's code is neither"):
        lb.check_method_source(record, "plug.yaml")


def test_config_hash_does_not_cover_the_block(plugin, tmp_path):
    repo, _, entry_point = plugin
    _commit(repo)
    record = yaml.safe_load(_run(entry_point, tmp_path / "records").read_text())
    before = record["config_hash"]
    record["provenance"]["method"]["source_sha256"] = "0" * 64
    assert seal(record)["config_hash"] == before
    assert record_filename(record).endswith("_seed0.yaml")
