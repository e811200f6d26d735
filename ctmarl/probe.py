"""A direct plasticity probe: how well can the network still fit new targets? (Lyle et al. 2023)

Plasticity loss shows in task scores only through exploration, value scale and the task's own
difficulty; Lyle et al.'s probe measures trainability directly: train a copy of the network for a
fixed number of steps to fit fixed random targets, and see how much of the loss it removes. Here,
at the end of every task, on a fixed batch of episodes (the run's first collection: ε = 1 there, so
it is the same batch for every method of a seed):

- targets: the network's own outputs at the start of the probe plus a fixed random function of
  the inputs, ``sin(FREQUENCY · x·p_j + φ_j)`` per output j, with ``p_j ~ N(0, 1/D)`` and
  ``φ_j ~ U[0, 2π)`` drawn once per run (x: an agent's observation, previous action and id for
  its Q-values [B, T, N, A]; the state and joint action for Q_tot [B, T]), standardised per output
  over the batch (zero mean, unit variance: no constant output fits any of it). Adding the
  function to the network's own outputs makes the starting loss the same (1 per part) whatever
  the scale the learner's values have grown to, so the probe measures how far the function can
  still move;
- training: ``steps`` Adam steps (lr ``lr``) of mean squared error over every real step, agent
  and action (agent) and every real step (Q_tot), the two losses summed, on the learner's
  trainable parameters (the ones its optimizer holds; gradient hooks a method installed, such as
  KNIFE's masks of frozen neurons, apply as in training);
- measured: the share of each loss removed, ``1 - L_end / L_start`` (1: fitted; 0: no progress;
  negative: it got worse), for the agents' Q-values, for Q_tot, and for their sum;
- reference: the same probe on a freshly initialised learner of the same class and config
  (seeded from the run seed), once per run.

Steps: 100 (Adam, lr 1e-3); the smoke tier, made for tests, uses 10. The record says which.

The probe never changes a run's numbers: the trained copy is the learner itself, whose
parameters are saved before and copied back bit for bit after (its optimizer, replay and
generators are not touched), the targets come from the probe's own generator, and the fresh
learner is built inside ``torch.random.fork_rng`` (a test checks records with the probe on and
off are equal). A learner without ``probe_outputs`` (see :class:`ctmarl.learner.Learner`) is not
probed (``None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ctmarl.learner import EpisodeBatch, Learner

#: Frequency of the random target function: high enough that targets vary between nearby inputs,
#: low enough that a fresh network fits a good share of them in ``steps`` steps.
FREQUENCY = 3.0
PARTS = ("agent", "q_tot", "total")


@dataclass(frozen=True)
class ProbeSettings:
    steps: int = 100
    """Adam steps of the probe."""
    lr: float = 1e-3
    """Adam's learning rate (PyMARL2's learning rate)."""
    max_episodes: int = 32
    """Episodes of the run's first collection kept as the probe batch."""


def can_probe(learner: Learner) -> bool:
    return callable(getattr(learner, "probe_outputs", None))


class RandomTargets:
    """A fixed random function per output, drawn once from ``seed`` for the batch's sizes."""

    def __init__(self, batch: EpisodeBatch, seed: int):
        generator = torch.Generator(device=batch.obs.device)
        generator.manual_seed(seed)
        self.agent_projection, self.agent_phase = self._draw(self.agent_features(batch).shape[-1],
                                                             batch.avail_actions.shape[-1], generator)
        self.mixer_projection, self.mixer_phase = self._draw(self.mixer_features(batch).shape[-1], 1, generator)

    @staticmethod
    def _draw(inputs: int, outputs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        device = generator.device
        projection = torch.randn(inputs, outputs, generator=generator, device=device) / math.sqrt(inputs)
        phase = torch.rand(outputs, generator=generator, device=device) * (2 * math.pi)
        return projection, phase

    @staticmethod
    def agent_features(batch: EpisodeBatch) -> torch.Tensor:
        """[B, T, N, O + A + N]: observation, previous action one-hot (zeros at t = 0), agent id."""
        b, t, n = batch.actions.shape
        a = batch.avail_actions.shape[-1]
        previous = F.one_hot(batch.actions, a).float()
        previous = torch.cat([previous.new_zeros(b, 1, n, a), previous[:, :-1]], dim=1)
        ids = torch.eye(n, device=batch.obs.device).expand(b, t, n, n)
        return torch.cat([batch.obs[:, :t].float(), previous, ids], dim=-1)

    @staticmethod
    def mixer_features(batch: EpisodeBatch) -> torch.Tensor:
        """[B, T, S + N·A]: state and joint action one-hot."""
        b, t, n = batch.actions.shape
        joint = F.one_hot(batch.actions, batch.avail_actions.shape[-1]).float().reshape(b, t, -1)
        return torch.cat([batch.state[:, :t].float(), joint], dim=-1)

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Random parts of the targets: agents [B, T, N, A], Q_tot [B, T]; each output
        standardised over the batch's real steps (zero mean, unit variance), so no constant
        fits any of it and the starting loss is 1 per part."""
        agent = torch.sin(FREQUENCY * self.agent_features(batch) @ self.agent_projection + self.agent_phase)
        mixer = torch.sin(FREQUENCY * self.mixer_features(batch) @ self.mixer_projection + self.mixer_phase)
        return _standardised(agent, batch.mask[..., None, None]), _standardised(mixer, batch.mask[..., None])[..., 0]


def _standardised(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` [B, T, ..., J] shifted and scaled per output j to zero mean and unit variance over
    the real steps (``mask`` [B, T, 1...] broadcasting); a constant output becomes 0."""
    mask = mask.expand_as(values)
    dims = tuple(range(values.dim() - 1))
    count = mask.sum(dims).clamp(min=1.0)
    mean = (values * mask).sum(dims) / count
    variance = ((values - mean).pow(2) * mask).sum(dims) / count
    return (values - mean) / variance.sqrt().clamp(min=1e-6) * (variance > 1e-12)


def _losses(learner: Learner, batch: EpisodeBatch, agent_target: torch.Tensor,
            mixer_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, q_tot = learner.probe_outputs(batch)
    mask = batch.mask
    agent_error = (q - agent_target).pow(2).mean(-1).mean(-1)  # [B, T]
    return (agent_error * mask).sum() / mask.sum(), ((q_tot - mixer_target).pow(2) * mask).sum() / mask.sum()


def fit_share(learner: Learner, batch: EpisodeBatch, targets: RandomTargets, settings: ProbeSettings) -> dict[str, float]:
    """Train ``learner``'s trainable parameters in place to fit the targets; return the share of
    each loss removed. The caller restores the parameters (see :func:`probe`)."""
    params = [p for group in learner.optimizer.param_groups for p in group["params"] if p.requires_grad]
    with torch.no_grad():
        q0, q_tot0 = learner.probe_outputs(batch)
        agent_random, mixer_random = targets(batch)
        agent_target, mixer_target = q0 + agent_random, q_tot0 + mixer_random
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    start = None
    for _ in range(settings.steps):
        agent_loss, mixer_loss = _losses(learner, batch, agent_target, mixer_target)
        if start is None:
            start = (agent_loss.item(), mixer_loss.item())
        optimizer.zero_grad(set_to_none=True)
        (agent_loss + mixer_loss).backward()
        optimizer.step()
    with torch.no_grad():
        agent_loss, mixer_loss = _losses(learner, batch, agent_target, mixer_target)
    end = (agent_loss.item(), mixer_loss.item())
    return _shares(start, end)


def _shares(start: tuple[float, float], end: tuple[float, float]) -> dict[str, float]:
    def share(before: float, after: float) -> float:
        return 1.0 - after / before if before > 0 else 0.0
    return {"agent": share(start[0], end[0]), "q_tot": share(start[1], end[1]),
            "total": share(sum(start), sum(end))}


def probe(learner: Learner, batch: EpisodeBatch, targets: RandomTargets,
          settings: ProbeSettings = ProbeSettings()) -> dict[str, float]:
    """The probe on ``learner`` itself, which is left exactly as it was (parameters copied back,
    gradients cleared)."""
    params = [p for group in learner.optimizer.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    try:
        with torch.enable_grad():
            return fit_share(learner, batch, targets, settings)
    finally:
        with torch.no_grad():
            for param, value, grad in zip(params, saved, grads):
                param.copy_(value)
                param.grad = grad


def fresh_probe(learner: Learner, batch: EpisodeBatch, targets: RandomTargets, seed: int,
                settings: ProbeSettings = ProbeSettings()) -> dict[str, float]:
    """The probe on a freshly initialised learner of ``learner``'s class and config (built as
    :func:`ctmarl.learner.make_learner` builds learners), without touching torch's global
    random state."""
    devices = [learner.device] if learner.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        fresh = type(learner)(learner.info, learner.config, device=learner.device, seed=seed)
        return probe(fresh, batch, targets, settings)


class PlasticityProbe:
    """The probe over a run: holds the fixed batch and targets, collects per-task results."""

    def __init__(self, seed: int, settings: ProbeSettings = ProbeSettings()):
        self.seed, self.settings = seed, settings
        self.batch: EpisodeBatch | None = None
        self.targets: RandomTargets | None = None
        self.fresh: dict[str, float] | None = None
        self.per_task: dict[str, list[float]] = {part: [] for part in PARTS}

    def offer_batch(self, batch: EpisodeBatch) -> None:
        """Keep the run's first collection (cut to ``max_episodes``) as the probe batch."""
        if self.batch is None:
            kept = EpisodeBatch(*(t[: self.settings.max_episodes].clone() for t in batch))
            self._set_batch(kept)

    def _set_batch(self, batch: EpisodeBatch) -> None:
        self.batch = batch
        self.targets = RandomTargets(batch, self.seed)

    def at_task_end(self, learner: Learner) -> None:
        if self.batch is None or not can_probe(learner):
            return
        if self.fresh is None:
            self.fresh = fresh_probe(learner, self.batch, self.targets, self.seed, self.settings)
        for part, value in probe(learner, self.batch, self.targets, self.settings).items():
            self.per_task[part].append(value)

    def result(self) -> dict[str, Any] | None:
        """What the record holds as ``plasticity_probe`` (None when nothing was probed)."""
        if self.fresh is None:
            return None
        return {"steps": self.settings.steps, "lr": self.settings.lr, "frequency": FREQUENCY,
                "fresh": dict(self.fresh), "per_task": {k: list(v) for k, v in self.per_task.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"batch": None if self.batch is None else tuple(self.batch), "fresh": self.fresh,
                "per_task": {k: list(v) for k, v in self.per_task.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict`; ``device``: the learner's (a checkpoint is read onto the
        CPU; the batch and the targets drawn for it must be where the learner is)."""
        if state["batch"] is not None:
            batch = EpisodeBatch(*state["batch"])
            self._set_batch(batch if device is None else batch.to(device))
        self.fresh = state["fresh"]
        self.per_task = {k: list(v) for k, v in state["per_task"].items()}
