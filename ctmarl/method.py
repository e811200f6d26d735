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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ctmarl.config import from_mapping
from ctmarl.errors import UnknownNameError
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


def method_class(name: str) -> type[Method]:
    cls = METHODS.load(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UnknownNameError(f"method {name!r} resolves to {cls!r}, which is not a ctmarl Method")
    return cls


def make_method(name: str, overrides: dict[str, Any] | None = None, where: str = "method config") -> Method:
    """Instantiate a method by name with its config, optionally overriding config keys."""
    cls = method_class(name)
    return cls(from_mapping(cls.Config, overrides or {}, where))
