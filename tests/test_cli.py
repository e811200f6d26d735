import pytest
from click.testing import CliRunner

from ctmarl.cli import main
from ctmarl.record import load_record


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_list_comes_from_registries():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for expected in ("matrix_drift-v1", "smoke", "quick", "standard", "qmix", "none"):
        assert expected in result.output


def test_evaluate_smoke_writes_a_valid_record(tmp_path):
    result = invoke("evaluate", "--algo", "none", "--scenario", "matrix_drift", "--tier", "smoke",
                    "--seed", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "performance" in result.output and "M1-return" in result.output
    (path,) = tmp_path.glob("*.yaml")
    assert load_record(path)["metrics"]["auc"] >= 0.0


def test_algo_as_entry_point(tmp_path):
    result = invoke("evaluate", "--algo", "ctmarl_baselines.methods.none:NoMethod", "--scenario",
                    "matrix_drift", "--tier", "smoke", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*.yaml"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--scenario", "nope"], "error: unknown scenario 'nope'; known: "),
    (["--scenario", "matrix_drift", "--algo", "magic"], "error: unknown method 'magic'; known: "),
    (["--scenario", "matrix_drift", "--tier", "huge"], "error: unknown tier 'huge'; known: smoke, quick, standard"),
    (["--scenario", "matrix_drift", "--learner", "vdn9"], "error: unknown learner 'vdn9'; known: "),
    (["--scenario", "matrix_drift", "--algo", "os:path"], "error: method 'os:path' resolves to"),
    (["--scenario", "matrix_drift", "--device", "cuda:7"], "error: --device 'cuda:7'"),
])
@pytest.mark.parametrize("quiet", [True, False])
def test_bad_input_is_one_clear_line(tmp_path, args, message, quiet):
    out = tmp_path / "out"
    flags = ["--quiet"] if quiet else []
    if "--tier" not in args:
        flags += ["--tier", "smoke"]
    result = invoke("evaluate", *flags, "--out", str(out), *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("evaluate", "--scenario", "matrix_drift", "--tier", "smoke", "--quiet",
                    "--out", str(blocker / "runs"))
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot write to output folder")


def test_a_closed_stdout_pipe_ends_quietly():
    """`ctmarl list | head -1`: the reader goes away; no 'internal error' line, no traceback file."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "ctmarl.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # at once: the child is still importing, so its first line finds no reader
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr
