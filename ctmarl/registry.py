"""One registry mechanism for env families, learners and methods (scenarios use it too).

A :class:`Registry` maps a name to a string entry point ``"package.module:Attribute"`` and imports
it only when asked for, so heavy dependencies (jax, StarCraft II) load only when used. Besides the
names registered in code, a registry reads the Python entry-point group it is given
(``ctmarl.learners``, ``ctmarl.methods``, ``ctmarl.envs``): the reference baselines register
themselves that way, exactly as a third-party package does. A name that contains ``:`` is taken as
an entry point directly (``--algo my_pkg.methods:MyMethod``).

A name has one provider. Names registered in code and those in the ``ctmarl`` distribution's own
entry points are reference names, which no other distribution may register; two other
distributions registering one name are in conflict. Either is a :class:`~ctmarl.errors.PluginError`
naming both distributions when that name is looked up (not at import of ctmarl, so one bad plug-in
does not break the others); ``ctmarl list`` shows it beside the name, with entry points that fail
to load.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ctmarl.errors import CtmarlError, PluginError, UnknownNameError, shorten

#: The distribution whose entry points are the reference ones (baselines, learners, env families).
REFERENCE_DISTRIBUTION = "ctmarl"


def import_entry_point(entry_point: str) -> Any:
    """Import ``"package.module:Attribute"`` (attribute may be dotted)."""
    module_name, _, attribute = entry_point.partition(":")
    if not module_name or not attribute:
        raise UnknownNameError(f"{shorten(repr(entry_point))} is not of the form 'package.module:Attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownNameError(f"cannot import {shorten(repr(module_name))} for {shorten(repr(entry_point))}: "
                               f"{shorten(exc)}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UnknownNameError(f"{shorten(repr(module_name))} has no attribute {shorten(repr(attribute))}") from exc
    return obj


def _normalise(distribution_name: str) -> str:
    return distribution_name.lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class Provider:
    """Who registers a name: the entry point and its distribution ("my-method 0.1.0")."""

    entry_point: str
    distribution: str | None  # None: registered in code, or an entry point without a distribution
    reference: bool


def _provider(ep: metadata.EntryPoint) -> Provider:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Provider(ep.value, None, False)
    name = dist.metadata["Name"] or "?"
    return Provider(ep.value, f"{name} {dist.version}", _normalise(name) == REFERENCE_DISTRIBUTION)


def owning_distributions(module_name: str) -> list[str]:
    """Names of the installed distributions that hold the top-level package of ``module_name``."""
    return list(metadata.packages_distributions().get(module_name.partition(".")[0]) or [])


def _distribution_of_module(module_name: str) -> str | None:
    """The installed distribution ("name version") that holds top-level package of ``module_name``."""
    names = owning_distributions(module_name)
    if not names:
        return None
    try:
        return f"{names[0]} {metadata.version(names[0])}"
    except metadata.PackageNotFoundError:
        return names[0]


def _conflict(kind: str, name: str, providers: list[Provider]) -> str:
    def who(p: Provider) -> str:
        return f"{p.distribution or 'an unnamed distribution'} ({p.entry_point})"

    references = [p for p in providers if p.reference]
    others = [p for p in providers if not p.reference]
    if references:
        return (f"{kind} {name!r} is a reference name of ctmarl ({references[0].entry_point}); distribution "
                f"{', '.join(who(p) for p in others)} may not register it: rename it there or uninstall that "
                "distribution")
    return (f"{kind} {name!r} is registered by {len(others)} distributions: {' and '.join(who(p) for p in others)}; "
            "uninstall one or rename its entry point")


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
        self._registered: dict[str, str] = {}  # names registered in code (reference names)
        self._specs: dict[str, str] = {}
        self._providers: dict[str, Provider] = {}
        self._conflicts: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        self._group_read = False

    def register(self, name: str, entry_point: str) -> None:
        existing = self._specs.get(name)
        if existing is not None and existing != entry_point:
            raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}")
        self._registered[name] = entry_point
        self._specs[name] = entry_point

    def refresh(self) -> None:
        """Read the entry-point group again on the next lookup (after installing a plug-in)."""
        self._specs = dict(self._registered)
        self._providers.clear()
        self._conflicts.clear()
        self._loaded.clear()
        self._group_read = False

    def _read_group(self) -> None:
        if self._group_read or self.group is None:
            return
        self._group_read = True
        by_name: dict[str, list[Provider]] = {
            name: [Provider(entry_point, None, True)] for name, entry_point in self._registered.items()}
        for ep in metadata.entry_points(group=self.group):
            provider = _provider(ep)
            known = by_name.setdefault(ep.name, [])
            # the same distribution seen twice (or a reference entry point naming a code-registered one) is one provider
            if not any(p.entry_point == provider.entry_point and (p.reference or p.distribution == provider.distribution)
                       for p in known):
                known.append(provider)
        for name, providers in by_name.items():
            if len(providers) > 1:
                self._conflicts[name] = _conflict(self.kind, name, providers)
                self._specs.pop(name, None)
            elif name not in self._registered:
                self._specs.setdefault(name, providers[0].entry_point)
                self._providers[name] = providers[0]

    def names(self) -> list[str]:
        self._read_group()
        return sorted({*self._specs, *self._conflicts})

    def entry_point(self, name: str) -> str:
        self._read_group()
        if name in self._conflicts:
            raise PluginError(self._conflicts[name])
        if name in self._specs:
            return self._specs[name]
        if ":" in name:
            return name
        raise UnknownNameError(
            f"unknown {self.kind} {shorten(repr(name))}; known: {', '.join(self.names()) or '(none)'}"
        )

    def distribution(self, name: str) -> str | None:
        """The distribution ("my-method 0.1.0") providing ``name`` (registered or ``module:Class``)."""
        self._read_group()
        if name in self._providers and self._providers[name].distribution is not None:
            return self._providers[name].distribution
        if name in self._registered:
            return _distribution_of_module("ctmarl")
        entry_point = self._specs.get(name, name)
        return _distribution_of_module(entry_point.partition(":")[0]) if ":" in entry_point else None

    def origin(self, name: str) -> str:
        """``"method 'my_method' (distribution my-method 0.1.0)"``, for messages."""
        distribution = self.distribution(name)
        return f"{self.kind} {shorten(repr(name))}" + (f" (distribution {distribution})" if distribution else "")

    def name_of(self, entry_point: str) -> str:
        """The registered name whose entry point is ``entry_point``, else ``entry_point`` itself."""
        self._read_group()
        return next((name for name, value in sorted(self._specs.items()) if value == entry_point), entry_point)

    def load(self, name: str) -> Any:
        entry_point = self.entry_point(name)
        if entry_point not in self._loaded:
            if self.group is None:  # scenarios: files, not plug-ins
                self._loaded[entry_point] = self._loader(entry_point)
                return self._loaded[entry_point]
            try:
                self._loaded[entry_point] = self._loader(entry_point)
            except UnknownNameError as exc:
                if self._is_reference(name):
                    raise
                raise UnknownNameError(f"{self.origin(name)}: {exc}") from exc
            except CtmarlError:  # the reference env families' own errors (a missing optional extra)
                raise
            except Exception as exc:  # noqa: BLE001 -- the plug-in's module failed at import: report whose
                raise PluginError(f"{self.origin(name)} failed to load ({entry_point}): "
                                  f"{type(exc).__name__}: {shorten(exc, 300)}") from exc
        return self._loaded[entry_point]

    def _is_reference(self, name: str) -> bool:
        return name in self._registered or (name in self._providers and self._providers[name].reference)

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot be used (a conflict, or its entry point fails to load), else None."""
        self._read_group()
        if name in self._conflicts:
            return f"conflict: {self._conflicts[name]}"
        try:
            self._loaded.setdefault(self._specs[name], self._loader(self._specs[name]))
        except Exception as exc:  # noqa: BLE001 -- listing reports every failure; it does not raise
            cause = exc.__cause__ if isinstance(exc, UnknownNameError) and exc.__cause__ is not None else exc
            return f"broken: {type(cause).__name__}: {shorten(cause, 200)}"
        return None


ENVS = Registry("env family", group="ctmarl.envs")
ENVS.register("matrix", "ctmarl.envs.matrix:MatrixGameEnv")
ENVS.register("predator_prey", "ctmarl.envs.predator_prey:PredatorPreyEnv")
ENVS.register("smax", "ctmarl.envs.smax:SMAXEnv")

LEARNERS = Registry("learner", group="ctmarl.learners")
METHODS = Registry("method", group="ctmarl.methods")
