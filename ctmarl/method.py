"""The Method protocol: a plasticity intervention that hooks into a learner's training.

A method is a class deriving from :class:`Method` (all hooks default to doing nothing) with a
frozen ``Config`` dataclass. It is found by name in :data:`ctmarl.registry.METHODS` (fed by the
``ctmarl.methods`` entry-point group) or directly as ``package.module:Class``.

Hook order in a run (see :mod:`ctmarl.protocol`)::

    attach(learner, context)
    for each task k:
        on_task_start(k)                 # only if the protocol announces task boundaries
        repeat: collect episodes -> learner.update(after_backward=method.after_backward)
                -> after_update(update_step)
        on_task_end(k)                   # only if the protocol announces task boundaries

``after_backward`` runs with gradients present, before clipping and the optimizer step.

Config defaults in YAML: a method registered under ``name`` may ship ``configs/<name>.yaml`` in
the package of its module (the reference methods: ``ctmarl_baselines/methods/configs/``). When
present, :func:`make_method` starts from it; it must hold every key of the ``Config`` dataclass
with the dataclass's default (a test checks that the two never drift apart). Overrides, e.g. from
``ctmarl evaluate --method-config FILE.yaml``, are applied on top and checked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar


from ctmarl.config import from_mapping, read_yaml
from ctmarl.errors import ConfigError, PluginError, UnknownNameError, shorten
from ctmarl.learner import Learner
from ctmarl.registry import METHODS


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run it is attached to."""

    n_tasks: int
    announce_task_boundaries: bool
    seed: int


@dataclass(frozen=True)
class NoConfig:
    """A method without settings."""


class Method:
    """Base class with no-op hooks; subclasses override what they need."""

    Config: ClassVar[type] = NoConfig
    #: What the hooks may change in the learner's parameters (checked by ``ctmarl validate-method``,
    #: see :mod:`ctmarl.validate_method`): ``"nothing"``; ``"neuron_groups"`` (incoming layers and
    #: consumer weights of the learner's neuron groups: ReDo, GraMa, KNIFE, ...); ``"modules"`` (the
    #: modules :meth:`touched_modules` names: reset, injection); ``"all"`` (shrink & perturb).
    touches: ClassVar[str] = "neuron_groups"
    #: True if no hook call ever changes the network's output at the moment it runs (KNIFE's and
    #: plasticity injection's cancelling copies); checked likewise. ReDo is not: its dormant neurons
    #: are quiet, not silent, so zeroing their outgoing weights moves the output a little.
    preserves_output: ClassVar[bool] = False

    def touched_modules(self) -> tuple[str, ...]:
        """For ``touches = "modules"``: the learner modules ("mixer", "agent.fc2") the hooks may
        re-initialise or replace (with their target copies)."""
        return ()

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        self.learner: Learner | None = None
        self.context: MethodContext | None = None

    def attach(self, learner: Learner, context: MethodContext) -> None:
        self.learner = learner
        self.context = context

    def on_task_start(self, task_index: int) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_update(self, update_step: int) -> None:
        pass

    def on_task_end(self, task_index: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Method state for checkpoints (counters, statistics)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        """What the method did over the run as plain data (numbers, strings, lists, dicts), kept
        in the run record as ``method_summary``: e.g. neurons replaced, parameter growth."""
        return {}


def method_class(name: str) -> type[Method]:
    cls = METHODS.load(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UnknownNameError(f"{METHODS.origin(name)} resolves to {shorten(repr(cls))}, which is not a ctmarl Method")
    return cls


def method_origin(method: Method | type[Method]) -> str:
    """``"method 'my_method' (distribution my-method 0.1.0)"`` for a method (instance or class)."""
    cls = method if isinstance(method, type) else type(method)
    return METHODS.origin(METHODS.name_of(f"{cls.__module__}:{cls.__qualname__}"))


def hook_error(method: Method | type[Method], hook: str, where: str, exc: BaseException) -> PluginError:
    """The one-line error for ``exc`` raised by ``method``'s ``hook`` (``where``: "at update 17");
    raise it ``from exc`` so that the CLI logs the plug-in's traceback."""
    first_line = shorten((str(exc).strip().splitlines() or [""])[0], 200)
    return PluginError(f"{method_origin(method)} raised {type(exc).__name__} in {hook} {where}: {first_line}")


def read_config_yaml(source: Any, where: str) -> dict[str, Any]:
    """A YAML mapping of config keys from a path or a ``Traversable``; an empty file is ``{}``."""
    data = read_yaml(source, where)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    return dict(data)


def canonical_method_name(name: str) -> str:
    """The registered name of a ``package.module:Class`` reference to a registered method (its
    records, file names and shipped defaults are the name form's: one run is one leaderboard
    entry whichever way it was asked for); any other name unchanged."""
    return METHODS.name_of(name) if ":" in name else name


def method_defaults_file(name: str) -> Any | None:
    """``configs/<name>.yaml`` beside the module of the method registered as ``name``, if shipped."""
    name = canonical_method_name(name)
    if ":" in name:  # a class reference that is not registered has no name to find defaults by
        return None
    package = method_class(name).__module__.rpartition(".")[0]
    if not package:
        return None
    try:
        path = resources.files(package) / "configs" / f"{name}.yaml"
    except (ModuleNotFoundError, TypeError):
        return None
    return path if path.is_file() else None


def method_defaults(name: str) -> dict[str, Any]:
    """The shipped YAML defaults of method ``name`` (``{}`` when it ships none), validated."""
    source = method_defaults_file(name)
    if source is None:
        return {}
    where = f"{source}"
    data = read_config_yaml(source, where)
    from_mapping(method_class(name).Config, data, where)
    return data


def load_method_config(path: str | Path) -> dict[str, Any]:
    """Config overrides from a user's YAML file (``--method-config``)."""
    return read_config_yaml(Path(path), str(path))


def make_method(name: str, overrides: dict[str, Any] | None = None, where: str = "method config") -> Method:
    """Instantiate a method by name: its shipped YAML defaults, then ``overrides`` on top, checked
    against its ``Config`` dataclass (an unknown key is a ConfigError naming ``where``)."""
    cls = method_class(name)
    values = {**method_defaults(name), **(overrides or {})}
    if is_dataclass(cls.Config):
        for field in fields(cls.Config):
            if field.init and field.name not in values and field.default is MISSING and field.default_factory is MISSING:
                raise ConfigError(f"{METHODS.origin(name)}: {cls.Config.__name__}.{field.name} has no default; give "
                                  f"it one (or set it in the file given to --method-config)")
    config = from_mapping(cls.Config, values, where)
    try:
        return cls(config)
    except Exception as exc:  # noqa: BLE001 -- the plug-in's own constructor failed: report whose
        raise hook_error(cls, "__init__", "when made", exc) from exc
