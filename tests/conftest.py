import signal
import sys

import pytest
import torch

from ctmarl.registry import ENVS, LEARNERS, METHODS


def pytest_configure(config):
    # Runs are compared bit for bit, and CPU reductions depend on the thread count: pin it once,
    # before any fixture (of any scope) trains anything.
    torch.set_num_threads(1)
    # The Ctrl-C tests send SIGINT to this process and to child runs. A shell that starts a job in
    # the background (`cmd &`, nohup, some CI runners) makes it ignore SIGINT, and exec passes that
    # on to every child: give this process Python's own handler, so children start with the
    # default disposition and the tests see what an interactive user would.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """``install(dist, version, methods={name: "module:Class"}, modules={module: source})``: a
    distribution on a temporary sys.path entry, seen by the registries from then on."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    modules = []

    def install(dist, version, methods=(), modules_source=None):
        info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[ctmarl.methods]", *(f"{name} = {value}" for name, value in dict(methods).items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules_source or {}).items():
            (folder / f"{module}.py").write_text(source)
            modules.append(module)
        for registry in (ENVS, LEARNERS, METHODS):
            registry.refresh()

    yield install
    monkeypatch.undo()
    for module in modules:
        sys.modules.pop(module, None)
    for registry in (ENVS, LEARNERS, METHODS):
        registry.refresh()
