"""SMACv2-style unit-mix battles (the ``smax`` env family), on JaxMARL's SMAX or on real SMACv2.

``n_units`` allied units, one agent each, fight ``n_enemies`` enemy units. Each episode draws the
unit types and start positions SMACv2-style; what a task changes is the **unit-type
distribution** (``unit_weights``), so a scenario drifts by shifting the mix of units it fights
with and against. Two backends run the same task definition (``backend`` setting):

- ``smax`` (default): JaxMARL's SMAX, a JAX re-implementation of SMAC/SMACv2 without StarCraft II,
  ``num_envs`` copies under ``jax.vmap`` + ``jit``, against SMAX's heuristic enemy
  (``HeuristicEnemySMAX``). It is **SMACv2-like, not SMACv2** (differences below).
- ``sc2``: the real SMACv2 (``smacv2`` + StarCraft II) through its
  ``StarCraftCapabilityEnvWrapper`` (:mod:`ctmarl.envs.sc2`), against the game's built-in AI.

Sizes of the ``smax`` backend (N = ``n_units``, M = ``n_enemies``, U = 6 unit types):

==================  ================================================================================
agents              N allied units (5 in the scenarios), one agent each
unit set            U = 6, in SMAX's type-id order: marine, marauder (terran-like), stalker, zealot
                    (protoss-like), zergling, hydralisk (zerg-like)
actions             M + 5 per agent (10 for 5v5): 0 north (+y), 1 east (+x), 2 south, 3 west,
                    4 stop, 5 + k attack enemy k
observation         (7 + U)(N - 1 + M) + 4 + U floats (127 for 5v5): for each other ally, then each
                    enemy, [health fraction, dx / sight range, dy / sight range, last move x, last
                    move y, last attack action / (A - 1), weapon cooldown fraction, type one-hot];
                    zeros unless the unit is alive and within the observer's sight range; then the
                    agent's own [health fraction, x / map, y / map, cooldown fraction, type one-hot].
                    The type one-hots span the whole unit set, so sizes never change across tasks.
state               (6 + U)(N + M) floats (120 for 5v5): SMAX's world state, per unit [health
                    fraction, x / map, y / map, weapon cooldown fraction, type one-hot], zeros for
                    dead units; then every unit's team (0 ally, 1 enemy) and type id (0..5).
                    (SMAX gives x, y in map units and the cooldown in seconds; we scale them as
                    its observations do, so the mixer's input is of order 1.)
action mask         stop is always available; moves iff the unit is alive; attack k iff the unit is
                    alive and enemy k is alive and within its attack range. An unavailable action
                    (by the mask returned with the observations) is replaced by stop before SMAX
                    sees it: the unit stands still, damages no one and shows no last attack to its
                    teammates (SMAX alone would land a masked attack on an enemy that walks into
                    range during the step, and show it as the unit's last attack)
reward              shared, SMAX's: the enemies' health lost this step as a fraction of their total
                    (summed over enemies, divided by M), plus 1 on the step the battle is won; an
                    episode's return is at most about 2
episode             terminated when every ally or every enemy is dead; truncated at
                    ``episode_limit`` steps (100 in the scenarios; a step is 8 SMAX physics steps of
                    1/16 s)
score               1 if the battle was won (every enemy dead, at least one ally alive: dying
                    together is a draw), else 0: averaged over episodes, the **win rate**
task settings       ``unit_weights``: probability of each unit type, e.g. {stalker: 0.8, zealot: 0.2};
                    ``enemy_unit_weights`` (optional, ``smax`` backend only): the enemies' own
                    distribution instead of the mirror, for asymmetric match-ups
==================  ================================================================================

Episode generation, SMACv2's rules (``weighted_teams`` and ``surrounded_and_reflect``):

- **Unit types**: each ally's type is drawn independently from ``unit_weights``; the enemy team
  mirrors it (enemy i has ally i's type), extra enemies (M > N) are drawn the same way. With
  ``enemy_unit_weights`` (not SMACv2: its teams always mirror) each enemy's type is drawn
  independently from those weights instead, so a task can pit, say, stalkers against zealots:
  match-ups whose winning behaviour differs (kite a melee enemy, close in on a ranged one).
- **Start positions**: with probability ``reflect_probability`` (SMACv2's ``p``, 0.5) *reflect*:
  allies uniform on the left half of the map (x up to map/2 - 1), enemies at their mirror images
  x -> map - x; otherwise *surrounded*: allies at the centre, enemies in 1-4 groups (group count
  uniform, members spread uniformly over groups), each group on its own diagonal between a corner
  and a point 2 from the centre, at a uniform fraction of the way.
  ``start_positions: reflect`` or ``surrounded`` fixes one of the two.

How the ``smax`` backend differs from SMACv2 (say so wherever results are reported; records do):

- **No StarCraft II engine**: SMAX's own simple physics: units move at fixed speeds in 4
  directions, overlapping units are pushed apart, no pathing, terrain or collisions with the map,
  fixed damage and cooldowns, no armour, protoss shields folded into health (stalker 160, zealot
  150), no unit abilities. Touching the map edge kills a unit (so starting cells keep 1 from it;
  SMACv2's surrounded enemies can start in a corner).
- **Unit set**: 6 types; SMACv2's third unit of each race (colossus, medivac, baneling) does not
  exist, so the scenarios use only the two shared units per race.
- **Enemy**: JaxMARL's heuristic (attack the closest unit in range, else walk towards a seen enemy
  or across the map), not SC2's built-in AI.
- **Observation, state, actions and reward** are SMAX's (above), not SMACv2's feature layout, and the
  reward is not scaled to SMACv2's 20 per episode. Units at a start point get a little noise
  (SMAX's push-apart needs distinct positions; SC2 spreads spawned units itself).

Randomness: an episode of copy i depends only on (seed, number of the reset, i), through
``jax.random.fold_in``, never on the number of copies. ``state_dict`` holds the seed, the reset
counter and any episode in progress, as plain ints and tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ctmarl.envs.base import BatchedEnv, EnvInfo, Observation, StepResult
from ctmarl.errors import shorten

#: SMAX's unit set, in its type-id order (the order of the type one-hots).
UNIT_TYPES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")
#: The races of SMACv2's generated maps (``10gen_<race>``) and their units; the first two of each
#: race exist in SMAX, the third only in StarCraft II.
RACE_UNITS = {
    "protoss": ("stalker", "zealot", "colossus"),
    "terran": ("marine", "marauder", "medivac"),
    "zerg": ("zergling", "hydralisk", "baneling"),
}
START_POSITIONS = ("surrounded_and_reflect", "reflect", "surrounded")
#: Upper bounds of a battle's sizes (SMACv2 plays up to 20 units a side; observations grow with
#: units x units; the scenario also bounds copies x steps x values per tier).
_UPPER_BOUNDS = {"n_units": 64, "n_enemies": 64, "episode_limit": 10_000, "map_size": 1024}
BACKENDS = ("smax", "sc2")
N_MOVE_ACTIONS = 5  # SMAX: 4 moves + stop
STOP = 4
#: SMAX's per-unit feature counts (before the unit-type one-hot).
_OTHER_UNIT_FEATURES = 7
_OWN_FEATURES = 4

NOTES_SMAX = (
    "SMACv2-like, not SMACv2: backend smax (the default) runs JaxMARL's SMAX, a JAX re-implementation "
    "without the StarCraft II engine (simple physics: no pathing or terrain, shields folded into "
    "health, no abilities, lethal map edges), with 6 unit types (marine, marauder, stalker, zealot, "
    "zergling, hydralisk; no colossus, medivac or baneling), JaxMARL's heuristic enemy instead of "
    "SC2's built-in AI, and SMAX's observations, state and reward (at most about 2 per episode). "
    "SMACv2's team generation (weighted unit types, enemies mirror allies) and start positions "
    "(surrounded / reflect) are reproduced. A scenario with backend: sc2 runs the real SMACv2 instead; "
    "see ctmarl/envs/smax.py"
)
NOTES_SC2 = (
    "real SMACv2 (StarCraftCapabilityEnvWrapper on StarCraft II, 10gen_<race> maps, built-in AI), "
    "mapped from the same task definition; observations and state zero-padded to the largest race "
    "(protoss, with shields); see ctmarl/envs/sc2.py"
)


def race_of(unit_types) -> str | None:
    """The SMACv2 race all of ``unit_types`` belong to, or None if they mix races."""
    races = {race for race, units in RACE_UNITS.items() for unit in unit_types if unit in units}
    if len(races) == 1 and all(any(u in units for units in RACE_UNITS.values()) for u in unit_types):
        return races.pop()
    return None


@dataclass(frozen=True)
class SMAXSettings:
    """One SMACv2-style battle; ``unit_weights`` is what the tasks of a scenario change."""

    unit_weights: Mapping[str, float]
    """Probability of each unit type for every unit, e.g. {stalker: 0.8, zealot: 0.2} (sums to 1)."""
    n_units: int = 5
    """Allied units (agents)."""
    n_enemies: int = 5
    """Enemy units."""
    episode_limit: int = 100
    """Steps after which an episode is truncated."""
    start_positions: str = "surrounded_and_reflect"
    """SMACv2's start-position distribution: surrounded_and_reflect, reflect or surrounded."""
    reflect_probability: float = 0.5
    """With surrounded_and_reflect: probability of a reflect start (SMACv2's ``p``)."""
    map_size: int = 32
    """Side of the square map (SMACv2's generated maps are 32 x 32)."""
    backend: str = "smax"
    """Simulator: smax (JaxMARL's SMAX, SMACv2-like) or sc2 (the real SMACv2 + StarCraft II)."""
    enemy_unit_weights: Mapping[str, float] | None = None
    """The enemies' own unit-type probabilities (``smax`` only); None: the enemies mirror the
    allies, as in SMACv2."""

    def __post_init__(self) -> None:
        for name, low in (("n_units", 1), ("n_enemies", 1), ("episode_limit", 1), ("map_size", 8)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be >= {low}, got {getattr(self, name)}")
        for name, high in _UPPER_BOUNDS.items():
            if getattr(self, name) > high:
                raise ValueError(f"{name}: must be <= {high}, got {getattr(self, name)}")
        if self.start_positions not in START_POSITIONS:
            raise ValueError(f"start_positions: must be one of {', '.join(START_POSITIONS)}, "
                             f"got {shorten(repr(self.start_positions))}")
        if not 0.0 <= self.reflect_probability <= 1.0:
            raise ValueError(f"reflect_probability: must be in [0, 1], got {self.reflect_probability}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {shorten(repr(self.backend))}")
        known = UNIT_TYPES if self.backend == "smax" else tuple(u for us in RACE_UNITS.values() for u in us)
        _check_weights("unit_weights", self.unit_weights, known, self.backend)
        if self.enemy_unit_weights is not None:
            if self.backend != "smax":
                raise ValueError("enemy_unit_weights: only the smax backend has them (SMACv2's enemy team "
                                 "mirrors the allies)")
            _check_weights("enemy_unit_weights", self.enemy_unit_weights, known, self.backend)
        if self.backend == "sc2":
            if race_of(self.team_units) is None:
                raise ValueError(
                    f"unit_weights: backend sc2 needs the units of one race (SMACv2's 10gen_<race> maps "
                    f"hold one race each), got {', '.join(self.team_units)}")
            if self.map_size != 32:
                raise ValueError(f"map_size: SMACv2's generated maps are 32 x 32, got {self.map_size}")

    @property
    def team_units(self) -> tuple[str, ...]:
        """The unit types with a positive weight, in the order given."""
        return tuple(unit for unit, weight in self.unit_weights.items() if weight > 0)

    @property
    def effective_reflect_probability(self) -> float:
        """Probability of a reflect start under ``start_positions``."""
        return {"reflect": 1.0, "surrounded": 0.0}.get(self.start_positions, self.reflect_probability)

    def type_probabilities(self) -> list[float]:
        """[U] probability of each type of :data:`UNIT_TYPES` (the ``smax`` backend's draw)."""
        return [float(self.unit_weights.get(unit, 0.0)) for unit in UNIT_TYPES]

    def enemy_type_probabilities(self) -> list[float]:
        """[U] the enemies' probabilities (the allies' when they mirror; then unused)."""
        weights = self.unit_weights if self.enemy_unit_weights is None else self.enemy_unit_weights
        return [float(weights.get(unit, 0.0)) for unit in UNIT_TYPES]


def _check_weights(name: str, weights: Any, known: tuple[str, ...], backend: str) -> None:
    """``weights`` is a non-empty mapping of known unit types to probabilities summing to 1."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{name}: give at least one unit type")
    for unit, weight in weights.items():
        if unit not in known:
            raise ValueError(f"{name}: unknown unit type {shorten(repr(unit))} for backend {backend}; "
                             f"known: {', '.join(known)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{name}.{unit}: must be a number >= 0, got {shorten(repr(weight))}")
    for unit, weight in weights.items():  # after the loop above: its messages come first
        if weight > 1:
            raise ValueError(f"{name}.{unit}: must be <= 1 (weights are probabilities), got {shorten(repr(weight))}")
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"{name}: must sum to 1, got {total:g}")


def smax_sizes(n_units: int, n_enemies: int) -> EnvInfo:
    """Observation, state and action sizes of the ``smax`` backend (episode_limit left 0)."""
    n_types = len(UNIT_TYPES)
    others = n_units - 1 + n_enemies
    return EnvInfo(
        n_agents=n_units,
        obs_dim=(_OTHER_UNIT_FEATURES + n_types) * others + _OWN_FEATURES + n_types,
        state_dim=(_OWN_FEATURES + n_types + 2) * (n_units + n_enemies),
        n_actions=n_enemies + N_MOVE_ACTIONS,
        episode_limit=0,
    )


class SMAXEnv(BatchedEnv):
    """``num_envs`` SMACv2-style battles on the backend the settings name (module docstring)."""

    Settings = SMAXSettings
    score_meaning = ("battle won (every enemy dead, an ally alive) within the episode limit: 1 or 0; "
                     "the mean over episodes is the win rate")
    #: The statement every record carries (the sc2 backend replaces it on its instances).
    record_notes = NOTES_SMAX

    @classmethod
    def notes_for(cls, settings: SMAXSettings) -> str:
        """The record's statement for runs with ``settings``: it names the backend that ran."""
        return NOTES_SC2 if settings.backend == "sc2" else NOTES_SMAX

    def __init__(self, settings: SMAXSettings, num_envs: int, device="cpu", seed: int = 0):
        super().__init__(settings, num_envs, device, seed)
        if settings.backend == "sc2":
            from ctmarl.envs.sc2 import SC2Backend

            self.backend: Any = SC2Backend(settings, num_envs, self.device, seed)
            self.record_notes = NOTES_SC2
        else:
            self.backend = JaxBackend(settings, num_envs, self.device, seed)

    @property
    def info(self) -> EnvInfo:
        return self.backend.info

    def reset(self, seed: int | None = None) -> Observation:
        return self.backend.reset(seed)

    def step(self, actions: torch.Tensor) -> StepResult:
        return self.backend.step(actions)

    def state_dict(self) -> dict[str, Any]:
        return self.backend.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.backend.load_state_dict(state)

    def warm_up(self) -> float:
        """Compile (smax) or launch (sc2) ahead of the first episode; returns the seconds it took."""
        return self.backend.warm_up()

    def close(self) -> None:
        """Release the backend (the sc2 backend's StarCraft II processes)."""
        self.backend.close()


class JaxBackend:
    """The ``smax`` backend: vmapped, jitted SMAX programs (:mod:`ctmarl.envs.smax_jax`).

    JAX is imported at the first reset, not here, so building an env to read its sizes (scenario
    validation, ``ctmarl list``) costs nothing. The compiled programs are shared by every env of
    the same structure (units, map, episode limit), so the tasks of a scenario compile once.
    """

    def __init__(self, settings: SMAXSettings, num_envs: int, device: torch.device, seed: int):
        self.settings, self.num_envs, self.device = settings, num_envs, device
        sizes = smax_sizes(settings.n_units, settings.n_enemies)
        self.info = EnvInfo(sizes.n_agents, sizes.obs_dim, sizes.state_dim, sizes.n_actions,
                            settings.episode_limit)
        self.seed = seed
        self.resets = 0  # episodes started since the last seeding: the key of the next one
        self._runner: Any = None

    @property
    def runner(self):
        if self._runner is None:
            from ctmarl.envs.smax_jax import BatchRunner

            self._runner = BatchRunner(self.settings, self.num_envs, self.device, self.info)
        return self._runner

    def reset(self, seed: int | None) -> Observation:
        if seed is not None:
            self.seed, self.resets = seed, 0
        observation = self.runner.reset(self.seed, self.resets)
        self.resets += 1
        return observation

    def step(self, actions: torch.Tensor) -> StepResult:
        return self.runner.step(actions)

    def state_dict(self) -> dict[str, Any]:
        episode = None if self._runner is None else self._runner.episode_state()
        return {"seed": self.seed, "resets": self.resets, "episode": episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.resets = int(state["seed"]), int(state["resets"])
        if state.get("episode") is not None:
            self.runner.load_episode_state(state["episode"])

    def warm_up(self) -> float:
        return self.runner.warm_up()

    def close(self) -> None:
        pass
