"""Neuron-level plasticity scores (DESIGN.md §6) and a monitor that logs them over training.

For a neuron group with incoming weights W [H, D], bias b [H] and post-activations h [M, H]
(M rows: every (episode, step, agent) row of the latest replay batch's online forward pass):

- dormant (ReDo):  a_i = mean_M |h_i|;   s_i = a_i / (mean_k a_k + 1e-9);   dormant if s_i <= τ_d
- GraMa:           g_i = mean |∂L/∂[W_i, b_i]| (D+1 entries);   s_i = g_i / (mean_k g_k + 1e-9)
- stagnant (KNIFE): r_i = ‖∂L/∂[W_i, b_i]‖₂ / (‖[W_i, b_i]‖₂ + 1e-8), averaged by an EMA over
                   updates (r̄ ← β r̄ + (1-β) r, β = 0.9, started at the first r);
                   s_i = r̄_i / (mean_k r̄_k + 1e-12);   stagnant if s_i <= τ_s

Default thresholds τ_d = τ_g = τ_s = 0.1. For threshold sensitivity the monitor also logs the
stagnant ratio at τ_s = 0.25 (a public port of KNIFE's metric flags RUA < 0.25) and the dormant
ratio at τ_d = 0.025 (ReDo's value in Plasticine, the PyTorch ReDo port), from the same scores
(no extra pass over the data). Gradients are the raw ones of the TD loss, before
clipping. Neurons a method froze (``NeuronGroup.frozen``: KNIFE's knowledge and compensation
neurons, zero gradient by design) are left out: the means in the normalisations, the three ratios,
their overlaps and the update-ratio statistics run over the trainable neurons only (counting frozen
neurons would report a method's own frozen neurons as stagnant and GraMa-low). Weight and gradient
norms and the effective rank describe the whole layer. The effective rank of h is Roy & Vetterli's (2007): exp(entropy of the normalised
singular values of h), between 1 and min(M, H).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctmarl.learner import NeuronGroup

DORMANT_EPS = 1e-9
GRAMA_EPS = 1e-9
RATIO_EPS = 1e-8
STAGNANT_EPS = 1e-12


def layer_normalised(values: torch.Tensor, eps: float) -> torch.Tensor:
    """s_i = v_i / (mean_k v_k + eps) over the last dimension."""
    return values / (values.mean(-1, keepdim=True) + eps)


def dormant_scores(activations: torch.Tensor) -> torch.Tensor:
    """[M, H] post-activations -> [H] ReDo scores."""
    return layer_normalised(activations.abs().mean(0), DORMANT_EPS)


def incoming_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[W_i, b_i] rows [H, D+1] (or [H, D] without bias)."""
    return weight if bias is None else torch.cat([weight, bias.unsqueeze(1)], dim=1)


def grama_scores(weight_grad: torch.Tensor, bias_grad: torch.Tensor | None) -> torch.Tensor:
    """[H, D] and [H] gradients -> [H] GraMa scores."""
    return layer_normalised(incoming_rows(weight_grad, bias_grad).abs().mean(1), GRAMA_EPS)


def update_ratios(
    weight: torch.Tensor, bias: torch.Tensor | None, weight_grad: torch.Tensor, bias_grad: torch.Tensor | None
) -> torch.Tensor:
    """Raw r_i = ‖∂L/∂[W_i, b_i]‖₂ / (‖[W_i, b_i]‖₂ + 1e-8): [H]."""
    # torch.linalg.vector_norm is what Tensor.norm(dim=1) calls, without its Python dispatch:
    # this runs after every backward pass of a KNIFE run.
    grad_norm = torch.linalg.vector_norm(incoming_rows(weight_grad, bias_grad), dim=1)
    return grad_norm / (torch.linalg.vector_norm(incoming_rows(weight, bias), dim=1) + RATIO_EPS)


def stagnant_scores(ratio_ema: torch.Tensor, frozen: torch.Tensor | None = None) -> torch.Tensor:
    """[H] EMA of update ratios -> [H] KNIFE stagnation scores, normalised by the mean over the
    trainable neurons; ``frozen`` [H] bool neurons score +inf (never stagnant)."""
    if frozen is None:
        return layer_normalised(ratio_ema, STAGNANT_EPS)
    scores = torch.full_like(ratio_ema, torch.inf)
    scores[~frozen] = layer_normalised(ratio_ema[~frozen], STAGNANT_EPS)
    return scores


def effective_rank(activations: torch.Tensor) -> float:
    """exp(entropy of normalised singular values) of an [M, H] activation matrix."""
    singular = torch.linalg.svdvals(activations.float())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def group_gradients(group: NeuronGroup) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(∂L/∂W, ∂L/∂b) of a group's incoming layer, zeros where no gradient flowed."""
    weight, bias = group.incoming.weight, group.incoming.bias
    weight_grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
    if bias is None:
        return weight_grad, None
    return weight_grad, bias.grad if bias.grad is not None else torch.zeros_like(bias)


def group_update_ratios(group: NeuronGroup) -> torch.Tensor:
    weight_grad, bias_grad = group_gradients(group)
    return update_ratios(group.incoming.weight.detach(), _detached(group.incoming.bias), weight_grad, bias_grad)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


class StagnationTracker:
    """EMA of each group's update ratios, updated after every backward pass.

    Keyed by group name; a group whose width changed (a method grew it) restarts its EMA.
    Used by the metrics monitor and by methods that act on stagnant neurons (KNIFE).
    """

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.ema: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def observe(self, groups: list[NeuronGroup]) -> None:
        for group in groups:
            ratio = group_update_ratios(group)
            previous = self.ema.get(group.name)
            if previous is None or previous.shape != ratio.shape:
                self.ema[group.name] = ratio.clone()
            else:
                previous.mul_(self.beta).add_(ratio, alpha=1.0 - self.beta)

    def scores(self, group: NeuronGroup) -> torch.Tensor | None:
        ema = self.ema.get(group.name)
        if ema is None or ema.shape[0] != group.width:  # not observed since the group last grew
            return None
        return stagnant_scores(ema, group.frozen)

    def state_dict(self) -> dict:
        return {"beta": self.beta, "ema": {k: v.clone() for k, v in self.ema.items()}}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict`; ``device``: where the EMAs go (a checkpoint is read onto
        the CPU, and the ratios they are updated with live on the learner's device)."""
        self.beta = state["beta"]
        self.ema = {k: v.clone() if device is None else v.to(device, copy=True) for k, v in state["ema"].items()}


@dataclass(frozen=True)
class Thresholds:
    dormant: float = 0.1
    grama: float = 0.1
    stagnant: float = 0.1
    #: The second thresholds logged for sensitivity (see the module docstring).
    stagnant_alternative: float = 0.25
    dormant_alternative: float = 0.025


@dataclass(frozen=True)
class GroupSnapshot:
    """Every logged quantity of one group at one logging update."""

    stagnant_ratio: float
    dormant_ratio: float
    grama_ratio: float
    stagnant_and_dormant: float
    stagnant_and_grama: float
    update_ratio_mean: float
    update_ratio_median: float
    weight_norm: float
    grad_norm: float
    stagnant_ratio_025: float
    """Stagnant ratio at τ_s = 0.25 (threshold sensitivity)."""
    dormant_ratio_0025: float
    """Dormant ratio at τ_d = 0.025 (threshold sensitivity)."""
    effective_rank: float


def snapshot_group(
    group: NeuronGroup, activations: torch.Tensor, ratio_ema: torch.Tensor, thresholds: Thresholds
) -> GroupSnapshot:
    """Scores of one group from its activations [M, H] and gradients present now (ratios over
    the trainable neurons, see the module docstring)."""
    weight_grad, bias_grad = group_gradients(group)
    keep = group.trainable
    trainable_ema = ratio_ema[keep]
    stagnant_score = stagnant_scores(trainable_ema)
    dormant_score = dormant_scores(activations[:, keep])
    stagnant = stagnant_score <= thresholds.stagnant
    dormant = dormant_score <= thresholds.dormant
    grama = grama_scores(weight_grad[keep], None if bias_grad is None else bias_grad[keep]) <= thresholds.grama
    rows = incoming_rows(group.incoming.weight.detach(), _detached(group.incoming.bias))
    values = torch.stack([
        stagnant.float().mean(), dormant.float().mean(), grama.float().mean(),
        (stagnant & dormant).float().mean(), (stagnant & grama).float().mean(),
        trainable_ema.mean(), trainable_ema.median(), rows.norm(),
        incoming_rows(weight_grad, bias_grad).norm(),
        (stagnant_score <= thresholds.stagnant_alternative).float().mean(),
        (dormant_score <= thresholds.dormant_alternative).float().mean(),
    ]).tolist()
    return GroupSnapshot(*values, effective_rank=effective_rank(activations))


class NeuronMonitor:
    """Logs every group's scores every ``interval`` updates (0 = never), at small cost.

    The stagnation EMA is updated after every backward pass (a few row norms per group). On a
    logging update only, forward hooks on the groups' activation modules capture the latest
    batch's post-activations, and the full snapshot is taken with the gradients present.
    """

    def __init__(self, groups_fn, interval: int, thresholds: Thresholds = Thresholds(), beta: float = 0.9):
        self.groups_fn = groups_fn
        self.interval = interval
        self.thresholds = thresholds
        self.tracker = StagnationTracker(beta)
        self.activations: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self.pending: dict[str, GroupSnapshot] | None = None

    def wants(self, update: int) -> bool:
        """Whether update number ``update`` (1-based) is a logging update."""
        return self.interval > 0 and update % self.interval == 0

    def arm(self) -> None:
        """Capture activations during the next forward pass."""
        self.activations.clear()
        for group in self.groups_fn():
            self._hooks.append(group.activation.register_forward_hook(self._capture(group.name)))

    def _capture(self, name: str):
        def hook(module, inputs, output):
            self.activations[name] = output.detach().reshape(-1, output.shape[-1])
        return hook

    def disarm(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def after_backward(self) -> None:
        groups = self.groups_fn()
        self.tracker.observe(groups)
        if self._hooks:
            self.pending = {
                g.name: snapshot_group(g, self.activations[g.name], self.tracker.ema[g.name], self.thresholds)
                for g in groups if g.name in self.activations
            }

    def take(self) -> dict[str, GroupSnapshot] | None:
        """The snapshot of the last armed update (once)."""
        self.disarm()
        pending, self.pending = self.pending, None
        return pending
