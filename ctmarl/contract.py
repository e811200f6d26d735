"""The method contract, checked as a run goes: every ``ctmarl evaluate`` run guards its method.

``ctmarl validate-method`` (:mod:`ctmarl.validate_method`) checks a method thoroughly on a small
harness; this module checks the cheap part of the same contract on the real run, so a record can
only exist if its method kept the contract while making it. :class:`ContractGuard` wraps every
hook call the runner makes (:mod:`ctmarl.protocol`):

``protocol`` (at attach)
    the method's ``Config`` is a frozen dataclass and ``method.config`` an instance of it;
    ``touches`` is one of :data:`~ctmarl.validate_method.SCOPES`; with ``touches = "modules"``,
    ``touched_modules()`` names modules the learner has.
``scope`` (every hook call the method's class overrides)
    the learner's parameters are snapshotted before the call; after it, any parameter outside the
    declared scope that changed (value or shape, or appeared or disappeared) is a violation, and so
    is a changed gradient in ``after_backward`` (the scopes of :mod:`ctmarl.validate_method`).
    Hooks a method does not override are the base class's no-ops and cost nothing.
``output`` (methods declaring ``preserves_output``)
    a hook call that changed parameters must leave the output on a fixed probe batch (Q_tot for
    one joint action per episode, and the agents' recurrent state) unchanged to
    :data:`~ctmarl.validate_method.OUTPUT_TOLERANCE`. ``attach``, ``on_task_start`` and
    ``on_task_end`` compute the output before the call; the per-update hooks (``after_backward``,
    ``after_update``) recompute the "before" output from the snapshot (``torch.func.functional_call``)
    only when a call changed values without changing the network's structure, which keeps the
    check's cost near zero on the calls that change nothing. A per-update call that changes the
    structure (growth mid-task) is counted as ``outputs_unchecked``: ``validate-method`` checks
    those.
``optimizer``
    after a call that changed the structure, every trainable parameter is in the optimizer.
``state``
    ``method.state_dict()`` survives ``torch.save`` and a ``weights_only`` load, as ctmarl's
    checkpoints need: after ``attach``, after every ``on_task_end`` (or task end), and at every
    checkpoint, so a method whose state cannot be checkpointed fails on its first task, not at
    a ``--resume`` hours later.

A violation stops the run with a :class:`~ctmarl.errors.ContractError` naming the method, its
distribution, the hook, where in the run, and what it broke (the CLI's one ``error:`` line, exit
2). A finished run's record carries ``contract`` (:meth:`ContractGuard.outcome`): the counts of
checked and changing hook calls, output checks and state round trips, and ``clean: true``; the
leaderboard refuses a plug-in method's record without it (reference methods' older records are
covered by ``validate-method`` in CI and by ``provenance.git_commit``).

What this cannot see, like ``validate-method``: changes made outside hook calls (tensor hooks on
gradients); buffers are compared for the output check but not judged for scope; the
neuron-level scope is per parameter tensor, not per row or column.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import torch

from ctmarl.checkpoint import refused_global
from ctmarl.errors import ContractError
from ctmarl.method import Method, hook_error, method_origin
from ctmarl.testing import random_episodes
from ctmarl.validate_method import (OUTPUT_TOLERANCE, config_class_problem, neuron_group_scope, parameter_changes,
                                    probe_output, scope_predicate, touches_problem, unknown_touched_modules,
                                    untrained_parameter)

CONTRACT_VERSION = 1
#: Hooks a run calls, in the order the record lists their counts.
HOOKS = ("attach", "on_task_start", "after_backward", "after_update", "on_task_end")
#: Hooks that run once per task (or run): the output before them is always computed.
STRUCTURAL_HOOKS = ("attach", "on_task_start", "on_task_end")
PROBE_EPISODES = 2


def call_method(method: Method, name: str, where: str) -> Any:
    """``method.<name>()``; a plug-in's exception becomes its one error line (hook_error)."""
    try:
        return getattr(method, name)()
    except Exception as exc:  # noqa: BLE001 -- a plug-in may raise anything
        raise hook_error(method, name, where, exc) from exc


class _Flat:
    """The learner's parameters (and gradients) copied into one flat tensor each: comparing two
    is one ``torch.equal`` when nothing changed, which is almost every call."""

    def __init__(self, named: list[tuple[str, torch.Tensor]], grads: bool, copiers: tuple[_Copier, _Copier],
                 slot: int):
        self.layout = [(name, p.shape) for name, p in named]
        self.values = copiers[0].copy([p.detach() for _, p in named], slot)
        self.grads = None
        if grads:
            self.has_grad = [p.grad is not None for _, p in named]
            self.grads = copiers[1].copy([p.grad.detach() for _, p in named if p.grad is not None], slot)

    def same_as(self, other: _Flat) -> bool:
        if self.layout != other.layout or not torch.equal(self.values, other.values):
            return False
        return self.grads is None or (self.has_grad == other.has_grad and torch.equal(self.grads, other.grads))

    def per_parameter(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """``{name: (value, gradient or None)}``, as :func:`~ctmarl.validate_method.snapshot_parameters`."""
        sizes = [shape.numel() for _, shape in self.layout]
        values = torch.split(self.values, sizes)
        grads: list[torch.Tensor | None] = [None] * len(sizes)
        if self.grads is not None:
            present = iter(torch.split(self.grads, [n for n, has in zip(sizes, self.has_grad) if has]))
            grads = [next(present) if has else None for has in self.has_grad]
        return {name: (v.reshape(shape), g if g is None else g.reshape(shape))
                for (name, shape), v, g in zip(self.layout, values, grads)}


class _Copier:
    """Copies a list of tensors into one of two flat buffers (slot 0: before a hook call, 1:
    after) with one ``torch._foreach_copy_``; the buffers and their views are kept while the
    tensors' shapes stay the same."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.flats: list[torch.Tensor] = []
        self.views: list[list[torch.Tensor]] = []

    def copy(self, tensors: list[torch.Tensor], slot: int) -> torch.Tensor:
        if not tensors:
            return torch.zeros(0)
        key = tuple((t.shape, t.dtype, t.device) for t in tensors)
        if len({k[1:] for k in key}) > 1:  # mixed dtypes or devices: one promoted copy
            return torch.cat([t.reshape(-1).to("cpu", torch.float64) for t in tensors])
        if key != self.key:
            sizes = [t.numel() for t in tensors]
            self.flats = [tensors[0].new_empty(sum(sizes)) for _ in range(2)]
            self.views = [[v.view(t.shape) for v, t in zip(torch.split(flat, sizes), tensors)] for flat in self.flats]
            self.key = key
        torch._foreach_copy_(self.views[slot], tensors)
        return self.flats[slot]


class _Probed(torch.nn.Module):
    """The probe output as a module's forward, so ``functional_call`` can evaluate it with other
    parameter values (the learner's names, prefixed ``learner.``)."""

    def __init__(self, learner: torch.nn.Module, batch, joint_actions: torch.Tensor):
        super().__init__()
        self.learner = learner
        self.batch, self.joint_actions = batch, joint_actions

    def forward(self) -> torch.Tensor:
        return probe_output(self.learner, self.batch, self.joint_actions)


class ContractGuard:
    """Runs a method's hooks for the runner and checks each call (see the module docstring)."""

    def __init__(self, learner: Any, method: Method, seed: int):
        self.learner, self.method = learner, method
        cls = type(method)
        self.overrides = {hook: getattr(cls, hook) is not getattr(Method, hook) for hook in HOOKS}
        self.guarded = isinstance(learner, torch.nn.Module)
        self._scope_cache: tuple[set[str], set[str]] | None = None
        self._copiers = (_Copier(), _Copier())
        self._probed: _Probed | None = None
        if self.guarded:
            info = learner.info
            batch = random_episodes(info, episodes=PROBE_EPISODES, seed=seed + 7_919)
            batch = type(batch)(*(t.to(learner.device) for t in batch))
            g = torch.Generator().manual_seed(seed + 7_919)
            actions = torch.randint(0, info.n_actions, (PROBE_EPISODES, info.n_agents), generator=g)
            self._probed = _Probed(learner, batch, actions.to(learner.device))

    # --- what the record keeps ----------------------------------------------------------------
    def fresh_counts(self) -> dict[str, Any]:
        return {"hooks_checked": {h: 0 for h in HOOKS}, "hooks_changed": {h: 0 for h in HOOKS},
                "outputs_checked": 0, "outputs_unchecked": 0, "state_round_trips": 0}

    def outcome(self, counts: dict[str, Any]) -> dict[str, Any]:
        """The record's ``contract`` block for a run that finished (so kept the contract)."""
        cls = type(self.method)
        return {"version": CONTRACT_VERSION, "clean": True, "guarded": self.guarded, "touches": cls.touches,
                "preserves_output": bool(cls.preserves_output), **counts}

    # --- checks ---------------------------------------------------------------------------------
    def check_protocol(self) -> None:
        """The class-level declarations (before attach)."""
        cls = type(self.method)
        problem = config_class_problem(cls) or touches_problem(cls)
        if problem is None and not isinstance(self.method.config, cls.Config):
            problem = f"method.config is a {type(self.method.config).__name__}, not its {cls.Config.__name__}"
        if problem is not None:
            self._violation("attach", "before training", problem)

    def call(self, hook: str, where: str, fn: Callable[[], Any], counts: dict[str, Any], grads: bool = False) -> None:
        """Run ``fn`` (the method's ``hook``) and check what it did; ``counts``: the run's counters."""
        if not (self.guarded and self.overrides[hook]):
            self._run(hook, where, fn)
            if hook == "attach" and self.guarded:
                self._check_modules()
            return
        before = self._snapshot(grads, 0)
        out_before = self._output() if self.method.preserves_output and hook in STRUCTURAL_HOOKS else None
        if hook == "attach" and self.method.touches == "neuron_groups":
            self._scope()  # the scope before any call (attach may add groups, but not remove any)
        self._run(hook, where, fn)
        counts["hooks_checked"][hook] += 1
        if hook == "attach":
            self._check_modules()
        after = self._snapshot(grads, 1)
        changed, reshaped = self._compare(hook, where, before, after, grads)
        if reshaped:
            self._scope_cache = None
            self._check_optimizer(hook, where)
        if changed:
            counts["hooks_changed"][hook] += 1
            if self.method.preserves_output:
                self._check_output(hook, where, before, out_before, reshaped, counts)

    def round_trip(self, where: str, counts: dict[str, Any] | None) -> dict[str, Any]:
        """``method.state_dict()``, checked to load with ``weights_only`` (as checkpoints are)."""
        state = self.state_dict(where)
        buffer = io.BytesIO()
        try:
            torch.save(state, buffer)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- pickling errors come in many types
            first = refused_global(exc) or (str(exc).strip().splitlines() or [""])[0][:200]
            self._violation("state_dict", where, "its state cannot be checkpointed (torch.save, then torch.load with "
                            f"weights_only=True): {type(exc).__name__}: {first}; keep tensors, numbers, strings, "
                            "lists and dicts in state_dict()")
        if counts is not None:
            counts["state_round_trips"] += 1
        return state

    def state_dict(self, where: str) -> dict[str, Any]:
        return call_method(self.method, "state_dict", where)

    def summary(self, where: str) -> dict[str, Any]:
        return call_method(self.method, "summary", where)

    def structure_changed(self) -> None:
        """Something outside a hook rebuilt the structure (a resumed method's ``load_state_dict``)."""
        self._scope_cache = None

    # --- internals ------------------------------------------------------------------------------
    def _run(self, hook: str, where: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except ContractError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a plug-in's failure: one line naming it
            raise hook_error(self.method, hook, where, exc) from exc

    def _violation(self, hook: str, where: str, what: str) -> None:
        raise ContractError(f"{method_origin(self.method)} broke the method contract in {hook} {where}: {what} "
                            "(ctmarl validate-method checks the whole contract)")

    def _snapshot(self, grads: bool, slot: int) -> _Flat:
        return _Flat(list(self.learner.named_parameters()), grads, self._copiers, slot)

    def _scope(self) -> tuple[set[str], set[str]]:
        if self._scope_cache is None:
            self._scope_cache = neuron_group_scope(self.learner)
        return self._scope_cache

    def _compare(self, hook: str, where: str, before: _Flat, after: _Flat, grads: bool) -> tuple[bool, bool]:
        """(values changed, structure changed); a change outside the scope is a violation."""
        if before.same_as(after):
            return False, False
        reshaped = before.layout != after.layout
        before, after = before.per_parameter(), after.per_parameter()
        changes = parameter_changes(before, after, grads)
        if not changes:
            return False, reshaped
        touches = self.method.touches
        if touches == "neuron_groups":
            scope_before = self._scope()
            if reshaped:
                self._scope_cache = None
            scope_after = self._scope()
        else:
            scope_before = scope_after = (set(), set())
        allowed = scope_predicate(self.method, scope_before, scope_after)
        for name, what, new in changes:
            if not allowed(name, new):
                hint = (f" (touched_modules: {', '.join(self.method.touched_modules()) or 'none'})"
                        if touches == "modules" else "")
                self._violation(hook, where, f"it {what} {name}, outside its declared scope touches={touches!r}{hint}")
        values_changed = any(what != "changed the gradient of" for _, what, _ in changes)
        return values_changed, reshaped

    def _check_modules(self) -> None:
        missing, _ = unknown_touched_modules(self.method, self.learner)
        if missing:
            self._violation("attach", "before training", f"touched_modules() names {', '.join(missing)}, which the "
                            f"learner does not have")

    def _check_optimizer(self, hook: str, where: str) -> None:
        name = untrained_parameter(self.learner)
        if name is not None:
            self._violation(hook, where, f"trainable parameter {name} is not in the learner's optimizer (it "
                            "would never train)")

    @torch.no_grad()
    def _output(self) -> torch.Tensor:
        return self._probed()

    @torch.no_grad()
    def _output_with(self, before: _Flat) -> torch.Tensor:
        values = {f"learner.{name}": value for name, (value, _) in before.per_parameter().items()}
        return torch.func.functional_call(self._probed, values, (), strict=False)

    def _check_output(self, hook: str, where: str, before: _Flat, out_before: torch.Tensor | None,
                      reshaped: bool, counts: dict[str, Any]) -> None:
        if out_before is None:
            if reshaped:
                counts["outputs_unchecked"] += 1
                return
            out_before = self._output_with(before)
        out_after = self._output()
        counts["outputs_checked"] += 1
        scale = float(out_before.abs().max())
        delta = math.inf if out_after.shape != out_before.shape else float((out_after - out_before).abs().max())
        if not delta <= OUTPUT_TOLERANCE * (1.0 + scale):
            self._violation(hook, where, f"it changed the network's output by up to {delta:.3g} (scale {scale:.3g}), "
                            "but the method declares preserves_output")

