"""The code a method ran from: the record's ``provenance.method`` block.

``provenance.git_commit`` and ``git_dirty`` describe the checkout holding ``ctmarl``; they say
nothing about a plug-in method installed from elsewhere, or added to the checkout but not yet
committed. :func:`method_source` identifies the method's own code::

    provenance:
      method:
        distribution: ctmarl-my-method   # the distribution providing the method, or null
        version: 0.1.0                   # its installed version, or null
        package: my_method               # the top-level package (or module) holding the class
        source_files: 2                  # how many files source_sha256 covers
        source_sha256: 3f0c...           # see below; null if the class's module has no file
        git_commit: 9a1b...              # commit of the git work tree holding those files, or null
        git_dirty: false                 # modified or untracked files among them (null outside git)

- ``distribution``: for a method registered in the ``ctmarl.methods`` entry-point group, the
  distribution declaring that entry point; for a ``package.module:Class`` name, the first (by
  name) distribution that :func:`importlib.metadata.packages_distributions` says owns ``package``.
- ``source_sha256``: the files are the class's defining module and every ``*.py`` file under its
  top-level package's folder (``__pycache__`` and dot-folders skipped; for a top-level module, that
  one file). Each is named ``<package>/<path inside the package folder>`` in POSIX form
  (``my_method/method.py``; ``<module>.py`` for a top-level module), and the files are sorted by that
  name. The hash is the sha256 of the UTF-8 text made of one line
  ``<name>\\0<sha256 hex of the file's bytes>\\n`` per file: it changes when a file's bytes, name
  or presence change, and not with where or how (editable or not) the package is installed.
- ``git_commit``/``git_dirty``: ``git rev-parse HEAD`` in the package's folder; dirty when
  ``git status --porcelain --untracked-files=all -- <package folder>`` lists anything other than
  ``__pycache__``/``*.pyc`` files (modified, staged, deleted or untracked), or when a hashed file is
  not tracked by git (``git ls-files``: an ignored file shows in neither list). ``git_commit`` is
  null in a repository without commits (its files are then all untracked: dirty); both are null
  outside a work tree (an installed wheel).

The block lives in ``provenance``, so :func:`ctmarl.record.config_hash` does not cover it: records
made before it existed keep their config hash, and sweeps still recognise them as done.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ctmarl.registry import import_entry_point, owning_distributions

#: Entry-point group plug-in methods register in (ctmarl.registry.METHODS reads it).
METHOD_GROUP = "ctmarl.methods"


def method_source(entry_point: str) -> dict[str, Any]:
    """The ``provenance.method`` block of the method at ``entry_point`` (``package.module:Class``)."""
    distribution = providing_distribution(entry_point)
    block = {"distribution": distribution, "version": _version(distribution),
             "package": entry_point.partition(":")[0].split(".")[0], "source_files": 0, "source_sha256": None,
             "git_commit": None, "git_dirty": None}
    found = source_files(entry_point)
    if found is None:  # defined where there is no file to hash (an interactive __main__)
        return block
    package, target, files = found
    return {**block, "package": package, "source_files": len(files), "source_sha256": source_hash(files),
            **source_git_state(target, [path for _, path in files])}


def source_files(entry_point: str) -> tuple[str, Path, list[tuple[str, Path]]] | None:
    """(top-level package or module name, its folder or file, sorted (name, file) pairs) that
    :func:`source_hash` covers; None when the class's defining module has no file. Names are
    ``<import name>/<path in the package>`` (``<module>.py`` for a top-level module), so the hash
    does not depend on the folder names of an editable install."""
    obj = import_entry_point(entry_point)
    module_name = getattr(obj, "__module__", None) or entry_point.partition(":")[0]
    module = sys.modules.get(module_name)
    if getattr(module, "__file__", None) is None:
        return None
    module_file = Path(module.__file__).resolve()
    top_name = module_name.split(".")[0]
    folders = [Path(p).resolve() for p in getattr(sys.modules[top_name], "__path__", ())]
    folder = next((f for f in folders if module_file.is_relative_to(f)), None)
    if folder is None:  # a top-level module, not a package
        return top_name, module_file, [(f"{top_name}.py", module_file)]
    files = {module_file}
    for path in folder.rglob("*.py"):
        if path.is_file() and not any(p == "__pycache__" or p.startswith(".")
                                      for p in path.relative_to(folder).parts[:-1]):
            files.add(path.resolve())
    return top_name, folder, sorted((f"{top_name}/{f.relative_to(folder).as_posix()}", f) for f in files)


def source_hash(files: list[tuple[str, Path]]) -> str:
    """sha256 over ``<name>\\0<sha256 of the file's bytes>\\n`` per (name, file), in the order given."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def providing_distribution(entry_point: str) -> str | None:
    """The distribution declaring ``entry_point`` in ``ctmarl.methods``, else the one owning its
    top-level package, else None."""
    for ep in metadata.entry_points(group=METHOD_GROUP):
        if ep.value == entry_point and getattr(ep, "dist", None) is not None:
            return ep.dist.name
    owners = owning_distributions(entry_point.partition(":")[0])
    return sorted(owners)[0] if owners else None


def _version(distribution: str | None) -> str | None:
    if distribution is None:
        return None
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def source_git_state(target: Path, files: list[Path]) -> dict[str, Any]:
    """``git_commit`` and ``git_dirty`` of the work tree holding ``target`` (a package folder or a
    module file) and its ``files`` (see the module docstring)."""
    folder = target if target.is_dir() else target.parent
    unknown = {"git_commit": None, "git_dirty": None}
    try:
        top = _git(folder, "rev-parse", "--show-toplevel")
        commit = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")  # None before the first commit
        status = _git(folder, "status", "--porcelain", "--untracked-files=all", "--", str(target))
        tracked = _git(folder, "ls-files", "--full-name", "--", str(target))
    except (OSError, subprocess.SubprocessError):
        return unknown
    if None in (top, status, tracked):
        return unknown
    changed = [line for line in status.splitlines() if line.strip() and not _byproduct(line)]
    tracked_files = {Path(top.strip(), name).resolve() for name in tracked.splitlines()}
    untracked = [f for f in files if f not in tracked_files]
    return {"git_commit": commit.strip() if commit else None, "git_dirty": bool(changed or untracked)}


def _byproduct(line: str) -> bool:
    """A ``git status --porcelain`` line naming a compiled file, not source."""
    path = line[3:].split(" -> ")[-1].strip('"')
    return "__pycache__/" in path or path.endswith((".pyc", ".pyo"))


def _git(folder: Path, *args: str) -> str | None:
    result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
    return result.stdout if result.returncode == 0 else None
