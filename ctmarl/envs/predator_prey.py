"""Predator-prey with a miscapture punishment (the ``predator_prey`` env family).

The relative-overgeneralisation "stag hunt" of DCG (Böhmer et al. 2020), also used by WQMIX and
QPLEX: predators on a bounded grid must catch prey in pairs; a lone catch attempt is punished.
Optionally the prey come in ``prey_kinds`` kinds of which only ``paying_kind`` pays (the others are
decoys), so that tasks can change which prey the team must hunt.

==================  ================================================================================
agents              ``n_agents`` predators (standard world: 8)
prey                ``n_prey`` prey moving at random (standard world: 8), of ``prey_kinds`` kinds
                    (default 1): prey ``i`` is of kind ``i * prey_kinds // n_prey``, so the kinds
                    are contiguous blocks of prey indices whose sizes differ by at most one, the
                    earlier kinds the larger (2 kinds of 4 prey: 0, 0, 1, 1; of 5: 0, 0, 0, 1, 1)
world               ``grid_size`` x ``grid_size`` bounded grid (standard: 10x10); row 0 is the top
actions             6 per agent: 0 right, 1 down, 2 left, 3 up, 4 stay, 5 catch
observation         (2 ``sight_range`` + 1)^2 x (2 + ``prey_kinds``) floats (75 for the 5x5 view
                    and one kind, 100 for two kinds): for each cell of the window centred on the
                    agent (rows top to bottom, then columns left to right), the flags [other
                    active agent, live prey of kind 0, ..., live prey of kind K-1, outside the
                    grid]. A frozen agent observes all zeros. Which kind pays is not observed.
state               3 x (n_agents + n_prey) floats (48 standard): per agent then per prey
                    [row / (G-1), col / (G-1), present]; frozen agents and captured prey are zeros.
                    With ``prey_kinds`` K > 1 each prey's entry is followed by its one-hot kind
                    (K floats, zeros once captured): 3 n_agents + (3 + K) n_prey floats. Sizes
                    depend on the world's sizes and K only (never on ``paying_kind`` or rewards)
action mask         moves that would leave the grid are unavailable; stay is always available;
                    catch is available iff a live prey is on one of the 4 neighbouring cells;
                    a frozen agent may only stay
reward              shared: ``capture_reward`` (10) per prey of the paying kind captured this
                    step, plus ``decoy_reward`` (<= 0, default 0) per prey of another kind
                    captured this step, plus ``miscapture_punishment`` p (<= 0) once per prey (of
                    any kind) that some but too few agents tried to catch this step
episode             terminated when every prey of the paying kind is captured (with one kind:
                    every prey) or every agent is frozen; truncated at ``episode_limit`` steps
                    (standard: 200)
score               captured paying prey / capturable paying prey, capturable = min(paying prey,
                    n_agents // ``catchers_required``): each capture freezes >= 2 agents, so 8
                    agents can catch at most 4 of 8 prey; a score of 1 is the best any team can
                    do. With one kind every prey pays (captured prey / min(n_prey, ...))
task settings       ``miscapture_punishment`` (``predator_prey_penalty``: 0, -0.5, -1, -1.5, -2);
                    ``paying_kind`` and p (``predator_prey_drift``). ``interpolable`` (blended by
                    a gradual transition): ``miscapture_punishment``, ``capture_reward``,
                    ``decoy_reward``; ``paying_kind`` switches at the task's start
==================  ================================================================================

Rules of one step (all copies at once, in this order):

1. **Agents move, simultaneously.** An active agent choosing a move (0-3) proposes the neighbouring
   cell in that direction. The move succeeds iff the cell is inside the grid, was empty (no active
   agent, no live prey) at the start of the step, and no other agent wins the same cell: among
   agents proposing one cell, a random one (uniform, fresh every step) gets it and the others stay.
   So swaps and following another agent into the cell it leaves are blocked. A move off the grid
   (masked, but possible in an ended copy) is a no-op. Frozen agents never move.
2. **Captures, prey one at a time** in a random order drawn fresh every step (the original's).
   For each live prey, count the active agents on its 4 neighbouring cells that chose *catch* and
   have not been frozen earlier in this step (catchers stay in place and prey has not moved yet,
   so this is exactly the catch the agent saw as available). With at least ``catchers_required``
   (2) of them the prey is captured: +``capture_reward`` if it is of ``paying_kind``, else
   +``decoy_reward``; either way the prey is removed, and those catchers are frozen and removed
   from the grid (for the rest of the episode they observe zeros, may only stay, are invisible and
   no longer block). With 1 .. ``catchers_required``-1 the team gets ``miscapture_punishment``
   once for that prey, whatever its kind. So an agent next to two prey is punished for each lone
   catch, but takes part in at most one capture, and a team captures at most
   n_agents // catchers_required prey per episode: catching a decoy costs the team its catchers.
   *Catch* is available next to a live prey of any kind: agents must tell the kinds apart by
   their observation channels, and which kind pays only by the rewards.
3. **Prey move, simultaneously** (if ``prey_moves``). Every live prey picks uniformly at random one
   of its 4 neighbouring cells that is inside the grid and empty (agents after their moves, frozen
   agents removed, prey at their current cells); with no such cell it stays. Among prey picking one
   cell a random one gets it and the others stay. Prey never stay voluntarily (the original's
   ``p_stags_rest = 0``).
4. The episode counter advances; termination, truncation and score are computed.

Episodes start with agents and prey on distinct cells drawn uniformly without replacement. Prey
kinds change no random draw: with the same key, a world with kinds places and moves everything
exactly as the one-kind world (only rewards, score, termination and the observed channels differ).

Differences from the original (DCG's ``stag_hunt.py`` with WQMIX's ``pred_prey_punish.yaml``):
the original moves agents, then prey, one at a time in a random order, so an agent may follow
another into the cell it vacates, and a prey may take a cell another prey just left or re-pick
after losing a cell; ours resolves the two movement phases simultaneously (so that all copies step
with one set of tensor ops), with contested cells going to the entity earlier in the random order,
as they would in the original. Captures keep the original's sequential rule exactly (step 2). The
original interleaves each prey's capture with its move, so a prey earlier in the order is still
blocked by catchers that a later capture freezes; ours moves prey after all captures. The original's
observation had no wall channel (``observe_walls: False``) but an always-empty hare channel, so
the size (75) is the same. Its state was the whole 10x10x3 grid; ours is the entity list above.
Papers report its return (at most 40 in the standard world, 4 captures x 10); our score divides
captures by the capturable prey instead. Prey kinds are ours: the original's second kind, hares,
differ in how many catchers they need and what they pay; ours differ only in what they pay
(``paying_kind``, ``decoy_reward``), so a task can switch which prey the team must hunt.

Randomness is counter-based: each copy draws a 64-bit key from :attr:`generator` at
:meth:`~PredatorPreyEnv.reset`, and every random choice of that copy is a hash of (key, step,
entity), computed with exact integer ops. So a copy's trajectory depends only on its key, its
state and its actions, never on the number of copies (nor, given the keys, on the device):
``env_b.copy_keys[i]`` given to :meth:`~PredatorPreyEnv.reset_to` of a one-copy env reproduces
copy ``i`` of ``env_b`` step for step. :meth:`~PredatorPreyEnv.reset_to` also places agents and prey
by hand for tests.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any

import torch

from ctmarl.envs.base import BatchedEnv, EnvInfo, Observation, StepResult

RIGHT, DOWN, LEFT, UP, STAY, CATCH = range(6)
N_ACTIONS = 6
#: (row, col) offset of each action; row 0 is the top of the grid.
ACTION_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0), (0, 0), (0, 0))
N_CHANNELS = 3  # other agents, prey, outside the grid (one prey kind; 2 + prey_kinds in general)
#: Most prey kinds (each adds an observation channel per window cell).
MAX_PREY_KINDS = 16

_MASK32 = 0xFFFFFFFF
# Multipliers of a 32-bit integer hash (hash-prospector's "[16 21f0aaad 15 735a2d97 15]"); both are
# below 2**31, so x * m < 2**63 for x < 2**32: exact in int64 on every device, no overflow.
_HASH_MUL = (0x21F0AAAD, 0x735A2D97)
_STEP_MUL = 0x61C88647  # -2**32 / golden ratio mod 2**32 (< 2**31): spreads consecutive steps
# Random streams, hashed into per-entity salts.
_STREAM_PLACE, _STREAM_AGENT_ORDER, _STREAM_PREY_DIRECTION, _STREAM_PREY_ORDER = range(1, 5)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _HASH_MUL[0]) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _HASH_MUL[1]) & _MASK32
    return x ^ (x >> 15)


#: Upper bounds of the world's sizes. The tables built per env hold cells^2 = grid_size^4
#: entries (grid 32: 10^6) and cells x window entries; the runner's tensors scale with agents x
#: episode_limit (the scenario also bounds their product per tier, ctmarl.scenario.MAX_BATCH_VALUES).
#: Rewards are any finite float32 numbers (ctmarl.config's default); returns that overflow in
#: training are stopped at run time (NonFiniteLossError).
_UPPER_BOUNDS = {"grid_size": 32, "n_agents": 64, "n_prey": 256, "episode_limit": 10_000, "sight_range": 16}


@dataclass(frozen=True)
class PredatorPreySettings:
    """One predator-prey world; ``miscapture_punishment`` is what the tasks change."""

    grid_size: int
    """Side G of the square, bounded grid."""
    n_agents: int
    """Predators (the learning agents)."""
    n_prey: int
    """Prey, placed at random at the start of each episode."""
    episode_limit: int
    """Steps after which an episode is truncated."""
    miscapture_punishment: float
    """Team reward (<= 0) per prey that some, but fewer than ``catchers_required``, agents catch."""
    sight_range: int = 2
    """Agents see the (2 sight_range + 1)^2 window centred on themselves (2: 5x5)."""
    capture_reward: float = 10.0
    """Team reward per captured prey."""
    catchers_required: int = 2
    """Agents that must choose *catch* next to a prey on the same step to capture it."""
    prey_moves: bool = True
    """Whether prey move at random each step (False: prey stand still, e.g. for tests)."""
    prey_kinds: int = 1
    """Kinds of prey (1: every prey pays, the original world). Prey ``i`` is of kind
    ``i * prey_kinds // n_prey`` (contiguous blocks, the earlier kinds one larger when uneven);
    each kind has its own observation channel."""
    paying_kind: int = 0
    """The kind whose capture gives ``capture_reward`` and counts in the score."""
    decoy_reward: float = 0.0
    """Team reward (<= 0) per captured prey of another kind than ``paying_kind`` (a *decoy*); its
    capture still removes it and freezes its catchers."""

    def __post_init__(self) -> None:
        for name, low in (("grid_size", 2), ("n_agents", 1), ("n_prey", 1), ("episode_limit", 1),
                          ("sight_range", 0), ("catchers_required", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be >= {low}, got {getattr(self, name)}")
        for name, high in _UPPER_BOUNDS.items():
            if getattr(self, name) > high:
                raise ValueError(f"{name}: must be <= {high}, got {getattr(self, name)}")
        if self.n_agents + self.n_prey > self.grid_size**2:
            raise ValueError(
                f"n_agents + n_prey ({self.n_agents + self.n_prey}) must fit on the "
                f"{self.grid_size}x{self.grid_size} grid"
            )
        if self.catchers_required > self.n_agents:
            raise ValueError(
                f"catchers_required ({self.catchers_required}) must be <= n_agents ({self.n_agents})"
            )
        if self.miscapture_punishment > 0:
            raise ValueError(f"miscapture_punishment: must be <= 0, got {self.miscapture_punishment}")
        if self.capture_reward <= 0:
            raise ValueError(f"capture_reward: must be > 0, got {self.capture_reward}")
        if not 1 <= self.prey_kinds <= min(self.n_prey, MAX_PREY_KINDS):
            raise ValueError(f"prey_kinds: must be in [1, min(n_prey, {MAX_PREY_KINDS})] (every kind has a prey), "
                             f"got {self.prey_kinds} with n_prey {self.n_prey}")
        if not 0 <= self.paying_kind < self.prey_kinds:
            raise ValueError(f"paying_kind: must be in [0, prey_kinds - 1 = {self.prey_kinds - 1}], "
                             f"got {self.paying_kind}")
        if self.decoy_reward > 0:
            raise ValueError(f"decoy_reward: must be <= 0, got {self.decoy_reward}")
        if self.prey_kinds == 1 and self.decoy_reward != 0:
            raise ValueError(f"decoy_reward: has no effect with prey_kinds 1 (no prey is a decoy); leave it 0, "
                             f"got {self.decoy_reward}")

    def prey_kind(self, prey: int) -> int:
        """The kind of prey ``prey`` (fixed by its index, so that state sizes stay fixed)."""
        return prey * self.prey_kinds // self.n_prey

    @property
    def paying_prey(self) -> int:
        """Prey of the paying kind (all prey with one kind)."""
        return sum(self.prey_kind(i) == self.paying_kind for i in range(self.n_prey))

    @property
    def capturable_prey(self) -> int:
        """Most paying prey a team can capture in one episode (each capture freezes its catchers)."""
        return min(self.paying_prey, self.n_agents // self.catchers_required)


class PredatorPreyEnv(BatchedEnv):
    """``num_envs`` predator-prey worlds stepped together (rules in the module docstring)."""

    Settings = PredatorPreySettings
    score_meaning = (
        "captured prey / capturable prey (min(n_prey, n_agents // catchers_required)) at episode end"
    )
    record_notes = (
        "DCG/WQMIX stag-hunt rules with each phase (agent moves, captures, prey moves) resolved "
        "simultaneously; see ctmarl/envs/predator_prey.py"
    )

    interpolable = ("miscapture_punishment", "capture_reward", "decoy_reward")

    @classmethod
    def notes_for(cls, settings: PredatorPreySettings) -> str:
        """The record's notes: with prey kinds, also which kind pays and how the score counts."""
        if settings.prey_kinds == 1:
            return cls.record_notes
        return (f"{cls.record_notes}. {settings.prey_kinds} prey kinds (prey i is of kind i * prey_kinds // "
                "n_prey); only the paying kind's captures pay capture_reward and count in the score, "
                "captured paying prey / min(paying prey, n_agents // catchers_required); a decoy's "
                "capture pays decoy_reward and freezes its catchers")

    def set_settings(self, settings: PredatorPreySettings) -> None:
        """Rewards only (``interpolable``): the world's sizes and rules stay as built."""
        fixed = [f.name for f in dataclasses.fields(settings) if f.name not in self.interpolable]
        if any(getattr(settings, name) != getattr(self.settings, name) for name in fixed):
            raise ValueError("set_settings may change only " + ", ".join(self.interpolable))
        self.settings = settings

    def __init__(self, settings: PredatorPreySettings, num_envs: int, device="cpu", seed: int = 0):
        super().__init__(settings, num_envs, device, seed)
        s = settings
        self.n_agents, self.n_prey, self.grid_size = s.n_agents, s.n_prey, s.grid_size
        self.n_cells = s.grid_size**2
        self.window_cells = (2 * s.sight_range + 1) ** 2
        self.n_channels = 2 + s.prey_kinds  # other agents, prey of each kind, outside the grid
        self._info = EnvInfo(
            n_agents=s.n_agents,
            obs_dim=self.n_channels * self.window_cells,
            state_dim=3 * (s.n_agents + s.n_prey) + (s.n_prey * s.prey_kinds if s.prey_kinds > 1 else 0),
            n_actions=N_ACTIONS,
            episode_limit=s.episode_limit,
        )
        self._build_tables()
        e, dev = num_envs, self.device
        # Episode state: agents then prey, as flat cell indices row * G + col, and whether each is
        # present (agent active, prey alive).
        self.cell = torch.zeros(e, s.n_agents + s.n_prey, dtype=torch.long, device=dev)
        self.present = torch.ones(e, s.n_agents + s.n_prey, dtype=torch.bool, device=dev)
        self.t = torch.zeros(e, dtype=torch.long, device=dev)
        self._set_keys(torch.zeros(e, 2, dtype=torch.long, device=dev))
        # Derived from the state by _observe() and reused by the next step.
        self._grid = self._grid_template.clone()
        self._catch_adjacent = torch.zeros(e, s.n_prey, s.n_agents, dtype=torch.bool, device=dev)

    # --- precomputed tables ---------------------------------------------------------------------
    def _build_tables(self) -> None:
        g, r, dev = self.grid_size, self.settings.sight_range, self.device
        n, p, cells = self.n_agents, self.n_prey, self.n_cells
        # Occupancy grids have two extra columns: OUTSIDE (code 2 + prey_kinds, what the window shows
        # beyond the walls) and BLANK (always 0: where absent entities are scattered, what frozen
        # agents see).
        self._outside, self._blank = cells, cells + 1
        rows = torch.arange(g).repeat_interleave(g)
        cols = torch.arange(g).repeat(g)
        offsets = torch.tensor(ACTION_OFFSETS)
        to_r, to_c = rows[:, None] + offsets[:, 0], cols[:, None] + offsets[:, 1]
        inside = (to_r >= 0) & (to_r < g) & (to_c >= 0) & (to_c < g)
        index = torch.arange(cells)
        #: [cells, A] cell an action leads to (the cell itself for stay, catch and off-grid moves)
        self._target = torch.where(inside, to_r * g + to_c, index[:, None]).to(dev)
        self._prey_options = self._target[:, :4].contiguous()
        #: [cells + 1, A] action mask before the catch rule (on-grid moves, stay); last row: frozen
        avail = inside & (torch.arange(N_ACTIONS) != CATCH)
        frozen = (torch.arange(N_ACTIONS) == STAY)[None]
        self._avail = torch.cat([avail, frozen]).to(dev)
        #: [cells * cells] whether two cells are 4-neighbours (prey cell major)
        manhattan = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
        self._neighbours = (manhattan == 1).reshape(-1).to(dev)
        #: [cells + 1, K] grid column of each window cell; the centre (the agent itself) reads
        #: BLANK, as does every cell of the last row (what a frozen agent sees)
        d = torch.arange(-r, r + 1)
        side = len(d)
        win_r = (rows[:, None, None] + d[None, :, None]).expand(cells, side, side).reshape(cells, -1)
        win_c = (cols[:, None, None] + d[None, None, :]).expand(cells, side, side).reshape(cells, -1)
        win_inside = (win_r >= 0) & (win_r < g) & (win_c >= 0) & (win_c < g)
        window = torch.where(win_inside, win_r * g + win_c, self._outside)
        window[:, self.window_cells // 2] = self._blank
        self._window = torch.cat([window, torch.full((1, self.window_cells), self._blank)]).to(dev)
        #: [C + 1, C] grid code (0 empty, 1 agent, 2 + k prey of kind k, C = 2 + prey_kinds
        #: outside) -> observation channels (code c sets channel c - 1)
        c = self.n_channels
        self._code_channels = torch.cat([torch.zeros(1, c), torch.eye(c)]).to(dev)
        template = torch.zeros(self.num_envs, cells + 2, dtype=torch.long, device=dev)
        template[:, self._outside] = c
        self._grid_template = template
        #: [P] each prey's kind (fixed by its index), [P] whether it pays, [P, K] its one-hot kind
        self._prey_kind = torch.tensor([self.settings.prey_kind(i) for i in range(p)], device=dev)
        self._paying = self._prey_kind == self.settings.paying_kind
        self._paying_count = self.settings.paying_prey
        self._kind_onehot = torch.eye(self.settings.prey_kinds, device=dev)[self._prey_kind]
        self._codes = torch.cat([torch.ones(n, dtype=torch.long, device=dev),
                                 2 + self._prey_kind]).expand(self.num_envs, -1)
        #: [cells + 2, 3] state features (row / (G-1), col / (G-1), 1); zeros for absent entities
        features = torch.stack([rows.float() / max(g - 1, 1), cols.float() / max(g - 1, 1),
                                torch.ones(cells)], 1)
        self._state_features = torch.cat([features, torch.zeros(2, 3)]).to(dev)
        # Salts: one per random draw of a step, in the order [agent order | prey dirs | prey order].
        salts = [(_STREAM_AGENT_ORDER << 24) | i for i in range(n)]
        salts += [(_STREAM_PREY_DIRECTION << 24) | i for i in range(4 * p)]
        salts += [(_STREAM_PREY_ORDER << 24) | i for i in range(p)]
        self._step_salts = mix32(torch.tensor(salts, dtype=torch.long)).to(dev)
        self._place_salts = mix32(torch.tensor([(_STREAM_PLACE << 24) | i for i in range(cells)])).to(dev)
        self._agent_index = torch.arange(n, device=dev)
        self._prey_index = torch.arange(p, device=dev)
        self._cell_index = torch.arange(cells, device=dev)

    # --- contract -------------------------------------------------------------------------------
    @property
    def info(self) -> EnvInfo:
        return self._info

    def reset(self, seed: int | None = None) -> Observation:
        self._reseed(seed)
        self._set_keys(torch.randint(0, 2**32, (self.num_envs, 2), generator=self.generator,
                                     device=self.device))
        self.t = torch.zeros_like(self.t)
        # A uniform random placement without replacement: sort the cells by a hash of (key, cell).
        scores = mix32(self._copy_base(self.t)[:, None] ^ self._place_salts) * self.n_cells + self._cell_index
        self.cell = scores.argsort(dim=1)[:, : self.n_agents + self.n_prey].contiguous()
        self.present = torch.ones_like(self.present)
        return self._observe()

    def reset_to(
        self,
        agent_positions,
        prey_positions,
        agent_active=None,
        prey_alive=None,
        copy_keys=None,
    ) -> Observation:
        """Start episodes from given positions (for tests and equivalence checks).

        ``agent_positions`` [E, N, 2] and ``prey_positions`` [E, P, 2] are (row, col) cells;
        ``agent_active`` [E, N] / ``prey_alive`` [E, P] (default all True) mark frozen agents and
        captured prey; ``copy_keys`` [E, 2] (default: drawn from :attr:`generator`) fix every
        random choice of the episode. Present entities must sit on distinct cells.
        """
        dev, g = self.device, self.grid_size
        e, n, p = self.num_envs, self.n_agents, self.n_prey
        agents = torch.as_tensor(agent_positions, dtype=torch.long, device=dev)
        prey = torch.as_tensor(prey_positions, dtype=torch.long, device=dev)
        if agents.shape != (e, n, 2) or prey.shape != (e, p, 2):
            raise ValueError(f"positions must be [{e}, {n}, 2] and [{e}, {p}, 2], got "
                             f"{list(agents.shape)} and {list(prey.shape)}")
        positions = torch.cat([agents, prey], 1)
        if bool(((positions < 0) | (positions >= g)).any()):
            raise ValueError(f"positions must lie in [0, {g})")
        present = torch.ones(e, n + p, dtype=torch.bool, device=dev)
        if agent_active is not None:
            present[:, :n] = torch.as_tensor(agent_active, dtype=torch.bool, device=dev)
        if prey_alive is not None:
            present[:, n:] = torch.as_tensor(prey_alive, dtype=torch.bool, device=dev)
        cell = positions[..., 0] * g + positions[..., 1]
        for row_cells, row_present in zip(cell.tolist(), present.tolist()):
            occupied = [c for c, here in zip(row_cells, row_present) if here]
            if len(occupied) != len(set(occupied)):
                raise ValueError("present agents and prey must occupy distinct cells")
        if copy_keys is None:
            copy_keys = torch.randint(0, 2**32, (e, 2), generator=self.generator, device=dev)
        copy_keys = torch.as_tensor(copy_keys, dtype=torch.long, device=dev).clone()
        if copy_keys.shape != (e, 2) or bool(((copy_keys < 0) | (copy_keys > _MASK32)).any()):
            raise ValueError(f"copy_keys must be [{e}, 2] integers in [0, 2**32)")
        self._set_keys(copy_keys)
        self.cell, self.present = cell, present
        self.t = torch.zeros_like(self.t)
        return self._observe()

    def step(self, actions: torch.Tensor) -> StepResult:
        s, n, p = self.settings, self.n_agents, self.n_prey
        actions = actions.to(self.device, torch.long)
        self.t = self.t + 1
        noise = mix32(self._copy_base(self.t)[:, None] ^ self._step_salts)  # [E, N + 5P]
        agent_noise, prey_dir_noise, prey_noise = noise.split((n, 4 * p, p), dim=1)
        agent_cell, prey_cell = self.cell[:, :n], self.cell[:, n:]
        active, alive = self.present[:, :n], self.present[:, n:]

        # 1. Agents move into cells empty at the start of the step (stay, catch and off-grid moves
        #    "target" the agent's own, occupied cell); a contested cell goes to the proposer with
        #    the highest random priority.
        target = _lookup(self._target.view(-1), agent_cell * N_ACTIONS + actions)
        moving = active & (self._grid.gather(1, target) == 0)
        moving &= _wins(target, moving, agent_noise * n + self._agent_index)
        agent_cell = torch.where(moving, target, agent_cell)

        # 2. Captures, prey one at a time in this step's random prey order, as the original: an
        #    agent frozen by one capture no longer counts for the prey after it. Catchers did not
        #    move and prey have not moved since the last observation, so its adjacency holds. The
        #    order dependence is inherently sequential: this loop runs n_prey batched iterations.
        prey_priority = prey_noise * p + self._prey_index
        order = prey_priority.argsort(dim=1, descending=True)  # [E, P] prey, first processed first
        catchers = self._catch_adjacent & (actions == CATCH)[:, None, :]  # [E, P, N]
        catchers = catchers.gather(1, order[:, :, None].expand_as(catchers))  # in processing order
        frozen = torch.zeros_like(active)
        counts = []
        for rank in range(p):
            counted = catchers[:, rank] & ~frozen
            n_catching = counted.sum(1)
            frozen |= counted & (n_catching >= s.catchers_required)[:, None]
            counts.append(n_catching)
        n_catching = torch.stack(counts, 1)  # [E, P] in processing order
        captured = n_catching >= s.catchers_required
        miscaught = (n_catching > 0) & ~captured
        if s.prey_kinds == 1:
            reward = s.capture_reward * captured.sum(1) + s.miscapture_punishment * miscaught.sum(1)
        else:  # a capture pays only for the paying kind; a decoy's capture pays decoy_reward
            paying = _lookup(self._paying, order)  # [E, P] in processing order
            reward = (s.capture_reward * (captured & paying).sum(1) + s.decoy_reward * (captured & ~paying).sum(1)
                      + s.miscapture_punishment * miscaught.sum(1))
        active = active & ~frozen
        alive = alive & ~torch.zeros_like(captured).scatter_(1, order, captured)
        self.cell = torch.cat([agent_cell, prey_cell], 1)
        self.present = torch.cat([active, alive], 1)

        # 3. Prey move to a random empty neighbouring cell (off-grid options are the prey's own,
        #    occupied cell); a contested cell goes to one of its claimants at random.
        if s.prey_moves:
            grid = self._occupancy()
            options = _lookup(self._prey_options, prey_cell)  # [E, P, 4]
            free = grid.gather(1, options.view(-1, 4 * p)).view_as(options) == 0
            pick = torch.where(free, prey_dir_noise.view(-1, p, 4), -1).argmax(-1, keepdim=True)
            prey_target = options.gather(2, pick).squeeze(2)
            prey_moving = alive & free.any(-1)
            prey_moving &= _wins(prey_target, prey_moving, prey_priority)
            self.cell[:, n:] = torch.where(prey_moving, prey_target, prey_cell)

        # 4. Episode end and score.
        observation = self._observe()
        if s.prey_kinds == 1:
            captured_total, catchable = p - alive.sum(1), p
        else:  # only the paying kind counts; the episode ends when nothing is left to earn
            captured_total, catchable = (~alive & self._paying).sum(1), self._paying_count
        terminated = (captured_total == catchable) | ~active.any(1)
        truncated = (self.t >= s.episode_limit) & ~terminated
        score = captured_total.float() / s.capturable_prey
        return StepResult(*observation, reward=reward.float(), terminated=terminated,
                          truncated=truncated, score=score)

    def state_dict(self) -> dict[str, Any]:
        """Generator, and the episodes in progress: copy keys, step counters, cells and presence
        (the grid and catch adjacency are derived from these)."""
        return {"generator": self.generator.get_state(), "copy_keys": self.copy_keys.clone(),
                "t": self.t.clone(), "cell": self.cell.clone(), "present": self.present.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        e, entities = self.num_envs, self.n_agents + self.n_prey
        shapes = {"copy_keys": (e, 2), "t": (e,), "cell": (e, entities), "present": (e, entities)}
        for key, shape in shapes.items():
            if tuple(state[key].shape) != shape:
                raise ValueError(f"predator_prey state {key!r} has shape {list(state[key].shape)}, "
                                 f"this env needs {list(shape)}")
        self.generator.set_state(state["generator"])
        self._set_keys(state["copy_keys"].to(self.device, torch.long))
        self.t = state["t"].to(self.device, torch.long)
        self.cell = state["cell"].to(self.device, torch.long)
        self.present = state["present"].to(self.device, torch.bool)
        self._observe()  # re-derives the occupancy grid and catch adjacency the next step reads

    # --- helpers --------------------------------------------------------------------------------
    def _set_keys(self, copy_keys: torch.Tensor) -> None:
        self.copy_keys = copy_keys
        self._copy_hash = mix32(copy_keys[:, 1] ^ mix32(copy_keys[:, 0]))

    def _copy_base(self, t: torch.Tensor) -> torch.Tensor:
        """[E] per-copy, per-step hash of (copy key, step)."""
        return mix32(self._copy_hash ^ ((t * _STEP_MUL) & _MASK32))

    def _occupancy(self) -> torch.Tensor:
        """[E, cells + 2] codes: 0 empty, 1 active agent, 2 + k live prey of kind k; then OUTSIDE =
        2 + prey_kinds, BLANK = 0."""
        grid = self._grid_template.clone()
        grid.scatter_(1, torch.where(self.present, self.cell, self._blank), self._codes)
        grid[:, self._blank] = 0
        return grid

    def _observe(self) -> Observation:
        e, n, k = self.num_envs, self.n_agents, self.window_cells
        self._grid = grid = self._occupancy()
        agent_cell, prey_cell = self.cell[:, :n], self.cell[:, n:]
        active, alive = self.present[:, :n], self.present[:, n:]
        agent_row = torch.where(active, agent_cell, self.n_cells)  # frozen: the all-BLANK row
        seen = grid.gather(1, _lookup(self._window, agent_row).view(e, n * k))
        obs = _lookup(self._code_channels, seen).view(e, n, self.n_channels * k)

        pair = prey_cell[:, :, None] * self.n_cells + agent_cell[:, None, :]
        self._catch_adjacent = _lookup(self._neighbours, pair) & alive[:, :, None] & active[:, None, :]
        avail = _lookup(self._avail, agent_row)  # [E, N, A]
        avail[:, :, CATCH] = self._catch_adjacent.any(1)

        state = _lookup(self._state_features, torch.where(self.present, self.cell, self._blank))
        if self.settings.prey_kinds == 1:
            state = state.view(e, -1)
        else:  # each prey's entry ends with its one-hot kind (zeros once captured)
            prey_state = torch.cat([state[:, n:], self._kind_onehot * alive[:, :, None]], 2)
            state = torch.cat([state[:, :n].reshape(e, -1), prey_state.view(e, -1)], 1)
        return Observation(obs, state, avail)

    # --- inspection (tests, rendering) ----------------------------------------------------------
    @property
    def agent_active(self) -> torch.Tensor:
        """[E, N] whether each agent is active (not frozen by a capture)."""
        return self.present[:, : self.n_agents]

    @property
    def prey_alive(self) -> torch.Tensor:
        """[E, P] whether each prey is still uncaptured."""
        return self.present[:, self.n_agents :]

    @property
    def agent_positions(self) -> torch.Tensor:
        """[E, N, 2] (row, col) of every agent (frozen agents keep their last cell)."""
        cell = self.cell[:, : self.n_agents]
        return torch.stack([cell // self.grid_size, cell % self.grid_size], -1)

    @property
    def prey_positions(self) -> torch.Tensor:
        """[E, P, 2] (row, col) of every prey (captured prey keep their last cell)."""
        cell = self.cell[:, self.n_agents :]
        return torch.stack([cell // self.grid_size, cell % self.grid_size], -1)

    @property
    def prey_kind(self) -> torch.Tensor:
        """[P] the kind of every prey (the same in every copy and episode)."""
        return self._prey_kind

    def render_text(self, copy: int = 0) -> str:
        """The grid of one copy as text: ``A`` active agent, ``P`` live prey (with several kinds:
        the kind's hexadecimal digit), ``.`` empty."""
        grid = self._occupancy()[copy, : self.n_cells].view(self.grid_size, self.grid_size).tolist()
        symbols = ".A" + ("P" if self.settings.prey_kinds == 1 else "0123456789abcdef"[: self.settings.prey_kinds])
        return "\n".join("".join(symbols[c] for c in row) for row in grid)


def _wins(target: torch.Tensor, contending: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """[E, M] whether each contender has the highest priority among contenders for its target."""
    same = (target[:, :, None] == target[:, None, :]) & contending[:, None, :]
    beaten = same & (priority[:, None, :] > priority[:, :, None])
    return ~beaten.any(-1)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a long ``index`` of any shape (index_select: much faster on CPU)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])
