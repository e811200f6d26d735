"""``shrink_perturb``: shrink and perturb at task boundaries (Ash & Adams 2020).

At the start of every task but the first, every trainable parameter θ of the learner (agent and
mixer: the parameters its optimizer updates) becomes

    θ ← λ θ + σ θ_fresh

where θ_fresh is a fresh sample from the parameter's initial distribution: the parameters of a
newly built learner of the same class and config (the registry's constructor contract,
``cls(info, config, device=..., seed=...)``), drawn under a seed from the method's generator, so
every layer gets its own initialiser (``nn.Linear``'s, ``nn.GRU``'s, QPLEX's block-diagonal
layers with their zero blocks). Defaults λ = 0.8, σ = 0.2: a convex step of 20% towards a fresh
initialisation (the interpolating form used by D'Oro et al. 2023; Ash & Adams's original perturbs
with small Gaussian noise instead of a fresh initialisation). With ``reset_optimizer`` the
optimizer state of every parameter is dropped as well, since every parameter moved. Target
networks are not touched; they catch up at the learner's next target copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctmarl.config import check_range
from ctmarl.errors import ConfigError
from ctmarl.learner import Learner
from ctmarl.method import Method, MethodContext
from ctmarl_baselines.methods.recycling import METHOD_SEED_OFFSET
from ctmarl_baselines.methods.surgery import reset_moments


@dataclass(frozen=True)
class ShrinkPerturbConfig:
    shrink: float = 0.8
    """λ: factor on the current parameters."""
    perturb: float = 0.2
    """σ: factor on the fresh initialisation added to them."""
    reset_optimizer: bool = True
    """Drop the optimizer state (Adam/RMSprop moments, step counts) of every parameter."""

    def __post_init__(self) -> None:
        if self.shrink < 0 or self.perturb < 0:
            raise ValueError(f"shrink and perturb: must be >= 0, got {self.shrink} and {self.perturb}")
        # Both are factors on weights: above 1 the method would grow the network, not shrink it.
        check_range(self, "shrink", 0.0, 1.0)
        check_range(self, "perturb", 0.0, 1.0)


def trainable_parameters(learner: Learner) -> list[torch.Tensor]:
    """The parameters the learner's optimizer updates, in its order."""
    return [p for group in learner.optimizer.param_groups for p in group["params"]]


def fresh_parameters(learner: Learner, seed: int) -> list[torch.Tensor]:
    """Initial values of the learner's trainable parameters, as a new learner of the same class
    and config built under ``seed`` has them (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(learner)(learner.info, learner.config, device="cpu", seed=0)
    values = trainable_parameters(fresh)
    current = trainable_parameters(learner)
    shapes, fresh_shapes = [tuple(p.shape) for p in current], [tuple(p.shape) for p in values]
    if shapes != fresh_shapes:
        raise ConfigError("shrink_perturb: the learner's trainable parameters no longer match a freshly built "
                          "one (another intervention changed the network?)")
    return [value.detach() for value in values]


@torch.no_grad()
def shrink_perturb_(params: list[torch.Tensor], fresh: list[torch.Tensor], shrink: float, perturb: float) -> None:
    """In place: θ ← shrink θ + perturb θ_fresh for every pair."""
    for param, value in zip(params, fresh, strict=True):
        param.mul_(shrink).add_(value.to(param.device, param.dtype), alpha=perturb)


class ShrinkPerturb(Method):
    Config = ShrinkPerturbConfig
    touches = "all"  # every parameter is shrunk and perturbed, the GRU's recurrent weights too

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.generator = torch.Generator()
        self.applied = 0
        self._generator_state: torch.Tensor | None = None

    def attach(self, learner: Learner, context: MethodContext) -> None:
        super().attach(learner, context)
        if not context.announce_task_boundaries:
            raise ConfigError("ShrinkPerturb needs a protocol that announces task boundaries")
        self.generator.manual_seed((context.seed + METHOD_SEED_OFFSET) % (2**63))
        if self._generator_state is not None:  # loaded from a checkpoint before attaching
            self.generator.set_state(self._generator_state)

    def on_task_start(self, task_index: int) -> None:
        if task_index == 0:
            return
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        params = trainable_parameters(self.learner)
        shrink_perturb_(params, fresh_parameters(self.learner, seed), self.config.shrink, self.config.perturb)
        if self.config.reset_optimizer:
            for param in params:
                reset_moments(self.learner.optimizer, param)
        self.applied += 1

    def summary(self) -> dict:
        """How many task starts shrank and perturbed the network."""
        return {"applied": self.applied}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "applied": self.applied}

    def load_state_dict(self, state: dict) -> None:
        self._generator_state = state["generator"]
        self.generator.set_state(self._generator_state)
        self.applied = int(state["applied"])
