"""``ln_wd``: layer normalisation in every hidden layer plus weight decay (Lyle et al. 2024).

Lyle et al. ("Disentangling the Causes of Plasticity Loss in Neural Networks", 2024) find that
layer normalisation combined with weight decay keeps networks trainable across many kinds of
non-stationarity, a strong baseline that more specific interventions should beat. Here:

- **LayerNorm**: at attach, the activation of every neuron group (the agent's ``fc1`` layer and
  every hidden layer of the mixer's hypernetworks: the learner's hidden layers) is replaced by
  ``activation(LayerNorm(x))`` over the group's width, with LayerNorm's learnable gain and bias,
  in the online and the target networks alike (:meth:`Learner.replace_module`, which puts the new
  parameters in the optimizer). The neuron monitor's hooks sit on this module, so dormant,
  stagnant and GraMa scores read the normalised layer's outputs. LayerNorm is this method's own
  intervention: no other method runs with it, so KNIFE's growth never meets it.
- **Weight decay**, decoupled (AdamW's form, Loshchilov & Hutter 2019): after every update,
  θ ← θ (1 − η λ) for every trainable agent and mixer parameter, η the learner's learning rate.
  λ = 0.01, AdamW's default; not tuned here.

``touches = "modules"`` (agent, mixer); the output changes at attach (LayerNorm is not the
identity) and slightly at every decay step, so ``preserves_output`` is false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctmarl.config import check_range
from ctmarl.learner import Learner
from ctmarl.method import Method, MethodContext
from ctmarl_baselines.methods.surgery import optimized_parameters

MODULES = ("agent", "mixer")


class LayerNormActivation(nn.Module):
    """``activation(LayerNorm(x))`` over the last dimension (a hidden layer's neurons)."""

    def __init__(self, width: int, activation: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(x))


@dataclass(frozen=True)
class LnWdConfig:
    weight_decay: float = 0.01
    """λ of the decoupled decay θ ← θ (1 − η λ) after every update (η: the learner's lr)."""

    def __post_init__(self) -> None:
        check_range(self, "weight_decay", low=0.0)


class LnWd(Method):
    """LayerNorm before every hidden activation, decoupled weight decay after every update."""

    Config = LnWdConfig
    touches = "modules"
    preserves_output = False

    def touched_modules(self) -> tuple[str, ...]:
        return MODULES

    def attach(self, learner: Learner, context: MethodContext) -> None:
        super().attach(learner, context)
        names = {id(module): name for name, module in learner.named_modules()}
        for group in learner.neuron_groups():
            if isinstance(group.activation, LayerNormActivation):
                continue  # a resumed learner is built fresh: this only guards a second attach
            width = group.width
            learner.replace_module(names[id(group.activation)], lambda act, w=width: LayerNormActivation(w, act))

    def _decayed(self) -> list[torch.nn.Parameter]:
        return [p for _, p in optimized_parameters(self.learner, MODULES)]

    @torch.no_grad()
    def after_update(self, update_step: int) -> None:
        factor = 1.0 - self.learner.config.lr * self.config.weight_decay
        if factor != 1.0:
            torch._foreach_mul_(self._decayed(), factor)

    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        """Norm of the agent's and the mixer's trainable parameters at the end of the run."""
        out = {}
        for module in MODULES:
            params = [p for n, p in self.learner.named_parameters()
                      if n.startswith(module + ".") and p.requires_grad]
            out[module] = float(torch.sqrt(sum((p ** 2).sum() for p in params))) if params else 0.0
        return {"parameter_norm": out, "layer_norms": sum(
            isinstance(g.activation, LayerNormActivation) for g in self.learner.neuron_groups())}
