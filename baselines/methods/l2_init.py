"""``l2_init``: regenerative regularisation towards the initial weights (Kumar et al. 2023).

L2 Init ("Maintaining Plasticity in Continual Learning via Regenerative Regularization") adds

    λ / 2 · ||θ − θ₀||²

to the loss for every trainable parameter θ of the learner (agent and mixer: the parameters its
optimizer updates, GRU and output layers included), θ₀ being their values when the method is
attached. Its gradient λ (θ − θ₀) is added in ``after_backward`` (gradients present, before
clipping and the optimizer step), so the learner's TD loss is untouched and the method works with
every learner whose trainable parameters live under its ``agent`` and ``mixer`` modules. Unlike
L2 towards zero, the pull keeps the weights near a distribution that is easy to train from, which
is what Kumar et al. find preserves plasticity across task sequences. Target networks are not
regularised (they are copies). The hooks change gradients, never parameters, so the output is
never changed by a hook call.

Default λ = 1e-3: the middle of the grid Kumar et al. search (1e-2 … 1e-5; the best value varies
by problem) - not tuned here. ``examples/my_method`` is the same idea written as a third-party
plug-in, restricted to the incoming layers of the neuron groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ctmarl.config import check_range
from ctmarl.learner import Learner
from ctmarl.method import Method, MethodContext
from ctmarl_baselines.methods.surgery import optimized_parameters

MODULES = ("agent", "mixer")


@dataclass(frozen=True)
class L2InitConfig:
    strength: float = 1e-3
    """λ: weight of the pull towards the initial weights."""

    def __post_init__(self) -> None:
        check_range(self, "strength", low=0.0)


class L2Init(Method):
    """Adds λ (θ − θ₀) to the gradient of every trainable parameter after each backward pass."""

    Config = L2InitConfig
    touches = "modules"
    preserves_output = True

    def touched_modules(self) -> tuple[str, ...]:
        return MODULES  # gradients only, of the online agent and mixer

    def __init__(self, config: L2InitConfig | None = None) -> None:
        super().__init__(config)
        #: parameter name -> θ₀
        self.initial: dict[str, torch.Tensor] = {}

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return optimized_parameters(self.learner, MODULES)

    def attach(self, learner: Learner, context: MethodContext) -> None:
        super().attach(learner, context)
        self.initial = {name: p.detach().clone() for name, p in self._trainable()}

    @torch.no_grad()
    def after_backward(self) -> None:
        strength = self.config.strength
        if strength == 0.0:
            return
        for name, param in self._trainable():
            if param.grad is not None:
                param.grad.add_(param - self.initial[name], alpha=strength)

    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        """Relative distance ||θ − θ₀|| / ||θ₀|| of the agent and the mixer at the end of the run."""
        out = {}
        for module in MODULES:
            pairs = [(p, self.initial[n]) for n, p in self._trainable() if n.startswith(module + ".")]
            if pairs:
                moved = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in pairs))
                start = torch.sqrt(sum((p0 ** 2).sum() for _, p0 in pairs))
                out[module] = float(moved / start.clamp_min(1e-12))
        return {"relative_distance_to_init": out}

    # θ₀ is the method's state: a resumed run must pull towards the same weights.
    def state_dict(self) -> dict[str, Any]:
        return {"initial": dict(self.initial)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = dict(state["initial"])
