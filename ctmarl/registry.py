"""One registry mechanism for env families, learners and methods (scenarios use it too).

A :class:`Registry` maps a name to a string entry point ``"package.module:Attribute"`` and imports
it only when asked for, so heavy dependencies (jax, StarCraft II) load only when used. Besides the
names registered in code, a registry reads the Python entry-point group it is given
(``ctmarl.learners``, ``ctmarl.methods``, ``ctmarl.envs``): the reference baselines register
themselves that way, exactly as a third-party package does. A name that contains ``:`` is taken as
an entry point directly (``--algo my_pkg.methods:MyMethod``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ctmarl.errors import UnknownNameError, shorten


def import_entry_point(entry_point: str) -> Any:
    """Import ``"package.module:Attribute"`` (attribute may be dotted)."""
    module_name, _, attribute = entry_point.partition(":")
    if not module_name or not attribute:
        raise UnknownNameError(f"{shorten(repr(entry_point))} is not of the form 'package.module:Attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownNameError(f"cannot import {shorten(repr(module_name))} for {shorten(repr(entry_point))}: "
                               f"{shorten(exc)}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownNameError(f"{shorten(repr(module_name))} has no attribute {shorten(repr(attribute))}") from None
    return obj


class Registry:
    """Names -> lazily loaded objects of one kind ("learner", "method", "env family", ...)."""

    def __init__(
        self,
        kind: str,
        group: str | None = None,
        loader: Callable[[str], Any] = import_entry_point,
    ) -> None:
        self.kind = kind
        self.group = group
        self._loader = loader
        self._specs: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        self._group_read = False

    def register(self, name: str, entry_point: str) -> None:
        existing = self._specs.get(name)
        if existing is not None and existing != entry_point:
            raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}")
        self._specs[name] = entry_point

    def _read_group(self) -> None:
        if self._group_read or self.group is None:
            return
        self._group_read = True
        for ep in metadata.entry_points(group=self.group):
            self._specs.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._read_group()
        return sorted(self._specs)

    def entry_point(self, name: str) -> str:
        self._read_group()
        if name in self._specs:
            return self._specs[name]
        if ":" in name:
            return name
        raise UnknownNameError(
            f"unknown {self.kind} {shorten(repr(name))}; known: {', '.join(self.names()) or '(none)'}"
        )

    def load(self, name: str) -> Any:
        entry_point = self.entry_point(name)
        if entry_point not in self._loaded:
            self._loaded[entry_point] = self._loader(entry_point)
        return self._loaded[entry_point]


ENVS = Registry("env family", group="ctmarl.envs")
ENVS.register("matrix", "ctmarl.envs.matrix:MatrixGameEnv")
ENVS.register("predator_prey", "ctmarl.envs.predator_prey:PredatorPreyEnv")
ENVS.register("smax", "ctmarl.envs.smax:SMAXEnv")

LEARNERS = Registry("learner", group="ctmarl.learners")
METHODS = Registry("method", group="ctmarl.methods")
