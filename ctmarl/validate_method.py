"""``ctmarl validate-method``: does a method plug-in keep the contract every method must keep?

A method declares on its class what its hooks may change (:attr:`ctmarl.method.Method.touches`,
:meth:`~ctmarl.method.Method.touched_modules`) and whether they keep the network's output
(:attr:`~ctmarl.method.Method.preserves_output`). This module checks the declarations and the
generic invariants, as small named checks (Gymnasium's ``env_checker`` style):

``protocol``
    the class derives from :class:`ctmarl.method.Method`; its ``Config`` is a frozen dataclass
    that builds from its defaults (shipped YAML defaults included) plus the given overrides;
    ``touches`` is one of :data:`SCOPES`.

Then, for every registered learner (QMIX, QPLEX) on a small env (``matrix_drift`` at the smoke
tier, replay filled with random episodes), a short continual run: ``tasks`` tasks of
``updates_per_task`` updates with the hooks called as the runner calls them (``attach``,
``on_task_start(k)``, per update ``after_backward`` then ``after_update(u)``, ``on_task_end(k)``).
Around every single hook call the harness snapshots the learner, so what the optimizer step does
between hooks never counts against the method:

``<learner>: runs``
    no hook or update raises; every loss and parameter stays finite; with ``touches = "modules"``,
    ``touched_modules()`` names modules the learner has.
``<learner>: scope``
    parameters outside the declared scope are unchanged by every hook call (value and shape;
    none appears or disappears), and so are their gradients in ``after_backward`` (a method that
    rewrites gradients changes the next optimizer step). Scopes, online and target networks alike:
    ``nothing``; ``neuron_groups`` = the incoming layer (weight, bias, and any parameter the method
    adds to it) of every neuron group and each group's consumer weights (plus parameters the method
    adds to a consumer's module) - what ReDo, GraMa, ReBorn, CBP and KNIFE may change;
    ``modules`` = everything under the modules ``touched_modules()`` names (reset, injection);
    ``all`` = anything (shrink & perturb).
``<learner>: output``
    for a method declaring ``preserves_output``, every hook call leaves the output on a fixed probe
    batch unchanged to 1e-5 (relative to its scale): Q_tot for several joint actions and the agents'
    recurrent state (so both mixer and agent network). For other methods, the hook calls that
    changed it are reported, not judged.
``<learner>: optimizer``
    after every hook call each trainable parameter is in the learner's optimizer (a parameter a
    method adds but does not register would silently never train).
``<learner>: determinism``
    a second run from the same seed ends with identical parameters: a method must draw its
    randomness from seeded generators, or its records cannot be reproduced.
``<learner>: resume``
    a run checkpointed mid-way through a task (the method's ``state_dict()`` with the learner's
    checkpoint state, through ``torch.save`` and a ``weights_only`` load, as ctmarl's checkpoints
    are) and resumed into a fresh learner and method (attach, ``load_state_dict``, then the
    learner's state, as the runner resumes) ends with the same parameters as the uninterrupted run.

Each learner also gets a note of which hooks changed parameters, and how often: a method whose
hooks never fired in this short run was checked vacuously (lower its period with overrides, e.g.
``--method-config``). What this cannot see: changes made outside hook calls (tensor hooks on
gradients, a replaced optimizer step); the neuron-level scope is checked per parameter tensor,
not per row/column.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ctmarl.config import from_mapping
from ctmarl.errors import CtmarlError, UnknownNameError
from ctmarl.learner import EpisodeBatch, make_learner
from ctmarl.method import Method, MethodContext, method_class, method_defaults
from ctmarl.registry import LEARNERS
from ctmarl.testing import random_episodes

SCOPES = ("nothing", "neuron_groups", "modules", "all")
#: Output preservation tolerance: max |Δ| <= OUTPUT_TOLERANCE * (1 + max |output|).
OUTPUT_TOLERANCE = 1e-5
#: Joint-action sets the probe evaluates Q_tot for.
PROBE_ACTION_SETS = 4


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    method: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, problem: str | None, passed: str) -> None:
        self.checks.append(Check(name, problem is None, passed if problem is None else problem))

    def lines(self) -> list[str]:
        out = [f"validate-method {self.method}"]
        out += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        out += [f"  note {n}" for n in self.notes]
        return out


# --- protocol ----------------------------------------------------------------------------------

def check_protocol(cls: Any, overrides: Mapping[str, Any], name: str | None) -> tuple[str | None, Any]:
    """(problem or None, the built config)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return f"{cls!r} does not derive from ctmarl.method.Method", None
    problem = config_class_problem(cls)
    if problem is not None:
        return problem, None
    defaults = method_defaults(name) if name is not None else {}
    try:
        config = from_mapping(cls.Config, {**defaults, **overrides}, f"{cls.__name__}.Config")
    except CtmarlError as exc:
        return f"its Config does not build from its defaults and the overrides: {exc}", None
    return touches_problem(cls), config


def config_class_problem(cls: type[Method]) -> str | None:
    """Why ``cls.Config`` is not a frozen dataclass, or None."""
    config_cls = cls.Config
    if not dataclasses.is_dataclass(config_cls):
        return f"{cls.__name__}.Config ({config_cls!r}) is not a dataclass"
    if not config_cls.__dataclass_params__.frozen:
        return f"{cls.__name__}.Config ({config_cls.__name__}) is not frozen (use @dataclass(frozen=True))"
    return None


def touches_problem(cls: type[Method]) -> str | None:
    """Why ``cls.touches`` is not a known scope, or None."""
    if cls.touches not in SCOPES:
        return f"{cls.__name__}.touches is {cls.touches!r}; must be one of {', '.join(SCOPES)}"
    return None


def unknown_touched_modules(method: Method, learner: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(modules ``touched_modules()`` names that the learner lacks, the learner's online modules)."""
    if method.touches != "modules":
        return [], []
    known = sorted(n for n, _ in learner.named_modules() if n and not n.startswith("target_"))
    return [m for m in method.touched_modules() if m not in known], known


def untrained_parameter(learner: torch.nn.Module) -> str | None:
    """The name of a trainable parameter that is not in the learner's optimizer, or None."""
    registered = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    return next((name for name, param in learner.named_parameters()
                 if param.requires_grad and id(param) not in registered), None)


# --- instrumentation ---------------------------------------------------------------------------

def _module_names(learner: torch.nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in learner.named_modules()}


def _groups(learner) -> list:
    groups = list(learner.neuron_groups())
    if hasattr(learner, "target_neuron_groups"):
        groups += list(learner.target_neuron_groups())
    return groups


def neuron_group_scope(learner: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(parameter names a neuron-level method may change, module names it may add parameters to).

    Incoming layers entirely (weight, bias, anything added), consumer weights; consumer modules
    may gain parameters but their other existing parameters (a GRU's recurrent weights, the next
    layer's bias) are out of scope."""
    modules = _module_names(learner)
    params = {id(p): n for n, p in learner.named_parameters()}
    names, incoming_prefixes, consumer_modules = set(), set(), set()
    for group in _groups(learner):
        if id(group.incoming) in modules:
            incoming_prefixes.add(modules[id(group.incoming)] + ".")
        for consumer in group.consumers:
            if id(consumer.weight) in params:
                names.add(params[id(consumer.weight)])
            if id(consumer.module) in modules:
                consumer_modules.add(modules[id(consumer.module)] + ".")
    names |= {n for n in params.values() if n.startswith(tuple(incoming_prefixes))}
    return names, consumer_modules


@torch.no_grad()
def probe_output(learner: Any, probe: EpisodeBatch, joint_actions: torch.Tensor,
                 repeated: EpisodeBatch | None = None) -> torch.Tensor:
    """The network's output on a fixed probe: Q_tot of ``probe`` (``repeated``: the probe's
    episodes once per row block of ``joint_actions`` [rows, N]) and the agents' recurrent state
    after the first step, flattened - so both the mixer and the agent network are seen."""
    q_tot = learner.joint_q(probe if repeated is None else repeated, joint_actions)
    e, n = probe.obs.shape[0], probe.obs.shape[2]
    avail = torch.ones(e, n, learner.info.n_actions, dtype=torch.bool, device=learner.device)
    last = torch.full((e, n), -1, dtype=torch.long, device=learner.device)
    _, hidden = learner.act(probe.obs[:, 0], avail, last, learner.initial_hidden(e), 0.0, torch.Generator())
    return torch.cat([q_tot.flatten(), hidden.flatten()]).float().cpu()


def scope_predicate(method: Method, before_scope: tuple[set[str], set[str]],
                    after_scope: tuple[set[str], set[str]]) -> Callable[[str, bool], bool]:
    """``allowed(parameter name, is_new)`` for ``method.touches``; the neuron-group scopes
    (:func:`neuron_group_scope`) before and after the hook call, for ``"neuron_groups"``."""
    touches = method.touches
    if touches == "all":
        return lambda name, new: True
    if touches == "nothing":
        return lambda name, new: False
    if touches == "modules":
        prefixes = tuple(f"{p}{m}." for m in method.touched_modules() for p in ("", "target_"))
        return lambda name, new: name.startswith(prefixes)
    names = before_scope[0] | after_scope[0]
    consumer_modules = tuple(before_scope[1] | after_scope[1])
    return lambda name, new: name in names or (new and name.startswith(consumer_modules))


def snapshot_parameters(learner: torch.nn.Module, grads: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    return {n: (p.detach().clone(), p.grad.detach().clone() if grads and p.grad is not None else None)
            for n, p in learner.named_parameters()}


class Instrument:
    """Wraps each hook call: scope, output and optimizer checks, and activity counts."""

    def __init__(self, learner: torch.nn.Module, method: Method, probe: EpisodeBatch, joint_actions: torch.Tensor):
        self.learner, self.method = learner, method
        # One joint_q call for every action set: the probe's episodes repeated once per set.
        sets = joint_actions.shape[0]
        self.probe = probe
        self.repeated = EpisodeBatch(*(t.repeat(sets, *([1] * (t.dim() - 1))) for t in probe))
        self.joint_actions = joint_actions.reshape(-1, joint_actions.shape[-1])  # [sets * E, N]
        self.scope_problem: str | None = None
        self.optimizer_problem: str | None = None
        self.output_changes: list[tuple[str, float]] = []
        self.output_problem: str | None = None
        self.activity: Counter[str] = Counter()

    def output(self) -> torch.Tensor:
        return probe_output(self.learner, self.probe, self.joint_actions, self.repeated)

    def call(self, label: str, hook: Callable[[], Any], grads: bool = False) -> None:
        learner = self.learner
        before = snapshot_parameters(learner, grads)
        before_scope = neuron_group_scope(learner) if self.method.touches == "neuron_groups" else (set(), set())
        out_before = self.output()
        hook()
        after = snapshot_parameters(learner, grads)
        after_scope = neuron_group_scope(learner) if self.method.touches == "neuron_groups" else (set(), set())
        allowed = scope_predicate(self.method, before_scope, after_scope)
        changes = parameter_changes(before, after, grads)
        for name, what, new in changes:
            if not allowed(name, new) and self.scope_problem is None:
                self.scope_problem = (f"{label} {what} {name}, outside the declared scope "
                                      f"touches={self.method.touches!r}{self._scope_hint()}")
        if changes:
            self.activity[label.partition("(")[0]] += 1
        out_after = self.output()
        if out_after.shape != out_before.shape:
            delta = math.inf
        else:
            delta = float((out_after - out_before).abs().max())
        scale = float(out_before.abs().max())
        if delta > OUTPUT_TOLERANCE * (1.0 + scale):
            self.output_changes.append((label, delta))
            if self.method.preserves_output and self.output_problem is None:
                self.output_problem = (f"{label} changed the output by up to {delta:.3g} (scale {scale:.3g}), "
                                       "but the method declares preserves_output")
        if self.optimizer_problem is None:
            name = untrained_parameter(learner)
            if name is not None:
                self.optimizer_problem = f"after {label}, trainable parameter {name} is not in the optimizer"

    def _scope_hint(self) -> str:
        if self.method.touches == "modules":
            return f" (touched_modules: {', '.join(self.method.touched_modules()) or 'none'})"
        return ""


def parameter_changes(before: dict, after: dict, grads: bool) -> list[tuple[str, str, bool]]:
    """(name, "added" / "removed" / "changed" / "changed the gradient of", is new) for every
    parameter that differs between two :func:`snapshot_parameters`."""
    changes = []
    for name in list(before) + [n for n in after if n not in before]:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            changes.append((name, "added" if old is None else "removed", old is None))
        elif old[0].shape != new[0].shape or not torch.equal(old[0], new[0]):
            changes.append((name, "changed", False))
        elif grads and not same_tensor(old[1], new[1]):
            changes.append((name, "changed the gradient of", False))
    return changes


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b)


# --- the harness -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """The small continual run every learner is validated on."""

    scenario: str = "matrix_drift"
    tier: str = "smoke"
    tasks: int = 3
    updates_per_task: int = 20
    seed: int = 0


class ContinualRun:
    """A learner with the method attached, trained through ``setting.tasks`` tasks of random replay
    with the hooks called in the runner's order; optionally instrumented, paused and resumed."""

    def __init__(self, cls: type[Method], config: Any, learner_name: str, setting: Setting, instrument: bool):
        from ctmarl.scenario import make_scenario

        scenario = make_scenario(setting.scenario)
        self.info = scenario.env_info(setting.tier)
        self.setting = setting
        torch.manual_seed(setting.seed)
        self.learner = make_learner(learner_name, self.info, dict(scenario.tier(setting.tier).learner),
                                    seed=setting.seed)
        if not isinstance(self.learner, torch.nn.Module):
            raise UnknownNameError(f"learner {learner_name!r} is not a torch.nn.Module; validate-method needs one")
        self.method = cls(config)
        self.tool = None
        if instrument:
            probe = random_episodes(self.info, episodes=8, seed=10_000 + setting.seed)
            g = torch.Generator().manual_seed(setting.seed)
            actions = torch.randint(0, self.info.n_actions, (PROBE_ACTION_SETS, 8, self.info.n_agents), generator=g)
            self.tool = Instrument(self.learner, self.method, probe, actions)
        self.updates = 0  # global update count, as the runner passes to after_update
        self.stage = "attach"

    def _call(self, label: str, hook: Callable[[], Any], grads: bool = False) -> None:
        outer, self.stage = self.stage, label  # an exception leaves the stage at the hook
        if self.tool is None:
            hook()
        else:
            self.tool.call(label, hook, grads)
        self.stage = outer

    def attach(self) -> None:
        self._call("attach", lambda: self.method.attach(
            self.learner, MethodContext(self.setting.tasks, True, self.setting.seed)))

    def run(self, stop_after_update: int | None = None) -> str | None:
        """Train from where the run stands to the end (or until ``stop_after_update``); the
        problem found, or None."""
        s, learner, method = self.setting, self.learner, self.method
        try:
            while self.updates < s.tasks * s.updates_per_task:
                k, done_in_task = divmod(self.updates, s.updates_per_task)
                if done_in_task == 0:
                    self._call(f"on_task_start({k})", lambda: method.on_task_start(k))
                    learner.add_episodes(random_episodes(
                        self.info, episodes=2 * learner.config.batch_size, seed=s.seed * 1000 + k))
                label = f"after_backward({self.updates + 1})"
                self.stage = f"update {self.updates + 1}"
                result = learner.update(after_backward=lambda: self._call(label, method.after_backward, grads=True))
                if result is None:
                    return f"{self.stage}: the learner had too little replay to update"
                if not math.isfinite(result["loss"]):
                    return f"{self.stage}: the loss is {result['loss']}"
                self.updates += 1
                self._call(f"after_update({self.updates})", lambda: method.after_update(self.updates))
                if self.updates % s.updates_per_task == 0:
                    self._call(f"on_task_end({k})", lambda: method.on_task_end(k))
                if self.updates == stop_after_update:
                    return None
        except Exception as exc:  # a plug-in may raise anything: report it as the failure it is
            return f"{self.stage} raised {type(exc).__name__}: {exc}"
        for name, param in learner.named_parameters():
            if not torch.isfinite(param).all():
                return f"parameter {name} is not finite after the run"
        return None

    def checkpoint(self) -> bytes:
        """What a checkpoint holds of the run, serialised as ctmarl's checkpoints are."""
        import io

        state = {"method": self.method.state_dict(), "learner": self.learner.checkpoint_state(),
                 "rng": torch.get_rng_state(), "updates": self.updates}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def resume(self, checkpoint: bytes) -> None:
        """Restore a checkpoint into this freshly built run, as the runner does: attach, then the
        method's state (it may re-create structure), then the learner's."""
        import io

        state = torch.load(io.BytesIO(checkpoint), weights_only=True)
        self.attach()
        self.stage = "method.load_state_dict"
        self.method.load_state_dict(state["method"])
        self.stage = "learner.load_checkpoint_state"
        self.learner.load_checkpoint_state(state["learner"])
        torch.set_rng_state(state["rng"])
        self.updates = state["updates"]


def _compare(a: torch.nn.Module, b: torch.nn.Module, what: str) -> str | None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if list(pa) != list(pb):
        return f"{what} ends with a different set of parameters"
    for name in pa:
        if pa[name].shape != pb[name].shape or not torch.equal(pa[name], pb[name]):
            return f"{what} ends with a different {name}"
    return None


def _validate_learner(report: Report, cls: type[Method], config: Any, learner_name: str, setting: Setting) -> None:
    prefix = f"{learner_name}: "
    first = ContinualRun(cls, config, learner_name, setting, instrument=True)
    try:
        first.attach()
        problem = _check_touched_modules(first)
    except Exception as exc:
        problem = f"attach raised {type(exc).__name__}: {exc}"
    problem = problem or first.run()
    report.add(prefix + "runs", problem,
               f"{setting.tasks} tasks x {setting.updates_per_task} updates, losses and parameters finite")
    if problem is not None:
        return
    tool = first.tool
    report.add(prefix + "scope", tool.scope_problem,
               f"hooks changed nothing outside touches={cls.touches!r}"
               + (f" ({', '.join(first.method.touched_modules())})" if cls.touches == "modules" else ""))
    changed = ", ".join(f"{label} (max {delta:.3g})" for label, delta in tool.output_changes[:4])
    more = f" and {len(tool.output_changes) - 4} more" if len(tool.output_changes) > 4 else ""
    if cls.preserves_output:
        report.add(prefix + "output", tool.output_problem, "every hook call left the output unchanged")
    else:
        report.notes.append(prefix + ("output changed at " + changed + more if changed else
                                      "no hook call changed the output") + " (preserves_output not declared)")
    report.add(prefix + "optimizer", tool.optimizer_problem, "every trainable parameter is in the optimizer")

    second = ContinualRun(cls, config, learner_name, setting, instrument=False)
    second.attach()
    problem = second.run() or _compare(first.learner, second.learner, "a second run from the same seed")
    report.add(prefix + "determinism", problem and f"{problem}: draw randomness from generators seeded "
               "from the run seed", "a second run from the same seed ends with identical parameters")

    pause = setting.updates_per_task + setting.updates_per_task // 2  # mid-way through task 1
    third = ContinualRun(cls, config, learner_name, setting, instrument=False)
    third.attach()
    problem = third.run(stop_after_update=pause)
    if problem is None:
        checkpoint = third.checkpoint()  # before building the next run: that re-seeds torch
        resumed = ContinualRun(cls, config, learner_name, setting, instrument=False)
        try:
            resumed.resume(checkpoint)
            problem = resumed.run() or _compare(first.learner, resumed.learner,
                                                f"a run resumed from a checkpoint at update {pause}")
        except Exception as exc:
            problem = f"checkpoint/resume at update {pause}: {resumed.stage} raised {type(exc).__name__}: {exc}"
    report.add(prefix + "resume", problem, f"a run checkpointed at update {pause} (state_dict through "
               "torch.save / weights_only load) and resumed ends as the uninterrupted one")
    activity = ", ".join(f"{hook} x{count}" for hook, count in sorted(tool.activity.items()))
    report.notes.append(prefix + (f"hooks that changed parameters: {activity}" if activity else
                                  "no hook changed any parameter in this run (scope and output checks were "
                                  "vacuous; lower the method's period with overrides)"))


def _check_touched_modules(run: ContinualRun) -> str | None:
    unknown, known = unknown_touched_modules(run.method, run.learner)
    if unknown:
        return (f"touched_modules() names {unknown[0]!r}, which the learner does not have; "
                f"modules: {', '.join(known)}")
    return None


def validate_method(
    method: str | type[Method],
    overrides: Mapping[str, Any] | None = None,
    learners: tuple[str, ...] | None = None,
    setting: Setting = Setting(),
) -> Report:
    """Run every check on ``method`` (a registered name, ``package.module:Class`` or a class)."""
    name = method if isinstance(method, str) else None
    cls = method_class(method) if isinstance(method, str) else method
    label = method if isinstance(method, str) else f"{cls.__module__}:{cls.__qualname__}"
    report = Report(label)
    problem, config = check_protocol(cls, dict(overrides or {}), name)
    report.add("protocol", problem, f"a Method with a frozen {getattr(cls, 'Config', type).__name__}, "
               f"touches={getattr(cls, 'touches', None)!r}, preserves_output={getattr(cls, 'preserves_output', None)}")
    if problem is not None:
        return report
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # runs are compared bit for bit
    try:
        for learner_name in learners or tuple(LEARNERS.names()):
            _validate_learner(report, cls, config, learner_name, setting)
    finally:
        torch.set_num_threads(threads)
    return report
