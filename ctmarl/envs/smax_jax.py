"""The JAX side of the ``smax`` backend: SMACv2-style episode generation on JaxMARL's SMAX, vmapped
over env copies, jitted, and handed to torch with ``torch.from_dlpack`` (no copies).

Imported only when an ``smax`` env first resets (it imports jax and jaxmarl). Rules and shapes are
documented in :mod:`ctmarl.envs.smax`.

One :class:`Program` per structure (units, map size, episode limit, device) holds the two jitted,
vmapped functions; task parameters (unit-type probabilities, reflect probability) are traced
arguments, so every task of a scenario runs the same compiled code: it compiles once per batch size
(the training envs and the evaluation envs), not once per task.

On a GPU, JAX and torch share the device and the hand-over is zero-copy both ways: ``torch.from_dlpack``
passes torch's current stream, which JAX makes wait for the step's outputs, and ``jnp.from_dlpack``
passes JAX's stream, which torch makes wait for the actions. JAX's default of taking 75% of the GPU's
memory at start-up is turned off (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, unless set otherwise before
this import): it would leave torch a quarter of the card, and a second run on the same GPU (a
``--workers`` sweep) none.
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

# Before JAX starts its GPU backend (on first use, after this import): see the module docstring.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ctmarl.envs.base import EnvInfo, Observation, StepResult  # noqa: E402
from ctmarl.envs.smax import STOP, UNIT_TYPES, SMAXSettings, smax_sizes  # noqa: E402

#: Distance kept between start positions and the map edge, which kills SMAX units.
EDGE_MARGIN = 1.0
#: Half-width of the uniform noise added to units placed on one point (SMAX pushes overlapping
#: units apart, which needs distinct positions).
START_NOISE = 0.5
#: SMACv2's surrounded start: the inner end of each diagonal is this far from the centre (per axis).
SURROUND_OFFSET = 2.0
#: XLA's CPU backend at optimisation level 1 compiles these programs about 40% faster than at its
#: default level, with the same step time (measured at 8 and 1024 copies).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


@dataclass(frozen=True)
class Structure:
    """What a compiled program depends on (task parameters are arguments, not structure)."""

    n_units: int
    n_enemies: int
    map_size: int
    episode_limit: int
    platform: str
    device_id: int


def _import_smax():
    """JaxMARL's SMAX modules, imported without its side effects on the streams.

    Importing jaxmarl prints to stdout, and its MABrax module sets ``sys.stdout`` / ``sys.stderr``
    back to ``sys.__stdout__`` / ``sys.__stderr__``, which would undo any redirection active at the
    time (pytest's capture, click's test runner, a caller's ``redirect_stdout``). So all four are
    pointed at a sink during the import and restored after it.
    """
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = sink
    try:
        from jaxmarl.environments.smax import heuristic_enemy_smax_env, smax_env
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved
    return heuristic_enemy_smax_env, smax_env


_heuristic_module, _smax_module = _import_smax()
HeuristicEnemySMAX = _heuristic_module.HeuristicEnemySMAX
EnemyEnvState = _heuristic_module.State  # (SMAX state, enemy policy state)
WorldState = _smax_module.State  # SMAX's episode state


def jax_device(device: torch.device):
    """The JAX device matching a torch device: the same GPU where JAX has one, else the CPU.

    A CUDA torch device with a CPU-only JAX falls back to JAX on the CPU (with a warning): the
    tensors are then copied to the GPU every step instead of shared.
    """
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(gpus):
            return gpus[index]
        warnings.warn(f"torch device {device} but JAX has no GPU {index} (install jax[cuda12]); "
                      "SMAX runs on the CPU and its tensors are copied to the GPU each step",
                      RuntimeWarning, stacklevel=3)
    return jax.devices("cpu")[0]


class Program:
    """Jitted, vmapped reset and step of one :class:`Structure` (module docstring)."""

    def __init__(self, structure: Structure):
        s = self.structure = structure
        self.env = HeuristicEnemySMAX(
            num_allies=s.n_units, num_enemies=s.n_enemies, map_width=s.map_size, map_height=s.map_size,
            max_steps=s.episode_limit,
        )
        expected = smax_sizes(s.n_units, s.n_enemies)
        actual = (self.env.obs_size, self.env.state_size, self.env.num_ally_actions)
        if actual != (expected.obs_dim, expected.state_dim, expected.n_actions):
            raise RuntimeError(f"jaxmarl's SMAX sizes {actual} differ from ctmarl's "
                               f"{(expected.obs_dim, expected.state_dim, expected.n_actions)}: "
                               "an unsupported jaxmarl version")
        if tuple(self.env.unit_type_names) != UNIT_TYPES:
            raise RuntimeError(f"jaxmarl's SMAX unit set {self.env.unit_type_names} is not {UNIT_TYPES}")
        if self.env.num_movement_actions - 1 != STOP:
            raise RuntimeError(f"jaxmarl's SMAX stop action is {self.env.num_movement_actions - 1}, not {STOP}")
        options = CPU_COMPILER_OPTIONS if s.platform == "cpu" else None
        self.reset = jax.jit(jax.vmap(self._reset_one, in_axes=(None, 0, None, None, None, None)),
                             compiler_options=options)
        self.step = jax.jit(jax.vmap(self._step_one), compiler_options=options)
        self.state_tree = None  # treedef of the batched env state, known after the first reset

    # --- one copy -------------------------------------------------------------------------------
    def _reset_one(self, episode_key, copy_index, type_probabilities, reflect_probability,
                   enemy_type_probabilities, mirror):
        """(copy key, env state, obs [N, O], state [S], avail [N, A]) of a fresh episode. The
        enemies mirror the allies when ``mirror`` (SMACv2), else are drawn from
        ``enemy_type_probabilities`` (with the key the mirror uses for extra enemies)."""
        s, env = self.structure, self.env
        n_total = s.n_units + s.n_enemies
        key = jax.random.fold_in(episode_key, copy_index)
        key, ally_key, enemy_key, position_key, policy_key = jax.random.split(key, 5)
        log_p = jnp.log(type_probabilities)
        allies = jax.random.categorical(ally_key, log_p, shape=(s.n_units,))
        if s.n_enemies > s.n_units:
            extra = jax.random.categorical(enemy_key, log_p, shape=(s.n_enemies - s.n_units,))
            mirrored = jnp.concatenate([allies, extra])
        else:
            mirrored = allies[: s.n_enemies]
        drawn = jax.random.categorical(enemy_key, jnp.log(enemy_type_probabilities), shape=(s.n_enemies,))
        enemies = jnp.where(mirror, mirrored, drawn)
        unit_types = jnp.concatenate([allies, enemies]).astype(jnp.uint8)
        # SMAX's episode state, built as its reset builds it (its reset would draw SMAX's own
        # unit types and positions, which we replace by SMACv2's draws).
        world = WorldState(
            unit_positions=self._start_positions(position_key, reflect_probability),
            unit_alive=jnp.ones((n_total,), dtype=jnp.bool_),
            unit_teams=jnp.zeros((n_total,)).at[s.n_units:].set(1),
            unit_health=env.unit_type_health[unit_types],
            unit_types=unit_types,
            unit_weapon_cooldowns=jnp.zeros((n_total,)),
            prev_movement_actions=jnp.zeros((n_total, 2)),
            prev_attack_actions=jnp.zeros((n_total,), dtype=jnp.int32),
            step=jnp.array(0, dtype=jnp.int32),
            done=jnp.array(False),
        )
        world = env._push_units_away(world)  # as SMAX's reset does: separate overlapping units
        world = world.replace(unit_positions=self._inside(world.unit_positions))
        state = _strong(EnemyEnvState(state=world,
                                      enemy_policy_state=env.get_enemy_policy_initial_state(policy_key)))
        obs = env.get_obs(state)
        return (key, state, jnp.stack([obs[a] for a in env.agents]), self._state(state, env.get_world_state(state)),
                self._avail(state))

    def _step_one(self, key, state, actions):
        env, n = self.env, self.structure.n_units
        key, step_key = jax.random.split(key)
        actions = self._only_available(state, actions)
        obs, state, rewards, _, _ = env.step_env(
            step_key, state, {agent: actions[i] for i, agent in enumerate(env.agents)}
        )
        world = state.state
        allies_alive, enemies_alive = world.unit_alive[:n].any(), world.unit_alive[n:].any()
        terminated = ~allies_alive | ~enemies_alive
        truncated = (world.step >= self.structure.episode_limit) & ~terminated
        won = (allies_alive & ~enemies_alive).astype(jnp.float32)
        return (key, state, jnp.stack([obs[a] for a in env.agents]), self._state(state, obs["world_state"]),
                self._avail(state), rewards[env.agents[0]], terminated, truncated, won)

    def _only_available(self, state, actions):
        """[N] ``actions`` with each one unavailable in ``state`` (the mask the agents were shown)
        replaced by stop, SMAX's no-op (no move, no attack; recorded as "no attack").

        SMAX itself does not apply the mask: it checks an attack's range on each of the step's
        physics steps, so an attack on an enemy out of range at the start of the step still hits
        if the enemy walks into range during it, and it records every attack action as the unit's
        last attack, which teammates observe. Out-of-range action ids become stop too.
        """
        available = self._avail(state)  # [N, A]
        chosen = jnp.arange(available.shape[-1]) == actions[:, None]  # [N, A] one-hot
        return jnp.where((available & chosen).any(-1), actions, jnp.asarray(STOP, actions.dtype))

    def _state(self, state, world_state):
        """SMAX's world state with positions divided by the map size and weapon cooldowns by the
        unit type's cooldown (clipped to [0, 1]), as SMAX's observations scale them."""
        env, s = self.env, self.structure
        n_total, width = s.n_units + s.n_enemies, len(env.own_features)
        units = world_state[: n_total * width].reshape(n_total, width)
        types = state.state.unit_types
        cooldown = jnp.clip(units[:, 3] / env.unit_type_weapon_cooldowns[types], 0.0, 1.0)
        units = units.at[:, 1:3].divide(float(s.map_size)).at[:, 3].set(cooldown)
        return jnp.concatenate([units.reshape(-1), world_state[n_total * width:]])

    def _avail(self, state):
        avail = self.env.get_avail_actions(state)
        return jnp.stack([avail[a] for a in self.env.agents]).astype(jnp.bool_)

    def _start_positions(self, key, reflect_probability):
        """[N + M, 2] SMACv2 start positions: reflect with ``reflect_probability``, else surrounded."""
        choice_key, reflect_key, surround_key = jax.random.split(key, 3)
        reflect = jax.random.uniform(choice_key) < reflect_probability
        return self._inside(jnp.where(reflect, self._reflect(reflect_key), self._surrounded(surround_key)))

    def _inside(self, positions):
        return jnp.clip(positions, EDGE_MARGIN, self.structure.map_size - EDGE_MARGIN)

    def _reflect(self, key):
        """Allies uniform on the left half (x < map/2 - 1), enemies at their mirror images."""
        s = self.structure
        size = float(s.map_size)
        ally_key, extra_key = jax.random.split(key)
        allies = jax.random.uniform(ally_key, (s.n_units, 2), minval=jnp.array([0.0, 0.0]),
                                    maxval=jnp.array([size / 2 - 1, size]))
        mirrored = allies.at[:, 0].set(size - allies[:, 0])
        if s.n_enemies > s.n_units:
            extra = jax.random.uniform(extra_key, (s.n_enemies - s.n_units, 2),
                                       minval=jnp.array([size / 2, 0.0]), maxval=jnp.array([size, size]))
            enemies = jnp.concatenate([mirrored, extra])
        else:
            enemies = mirrored[: s.n_enemies]
        return jnp.concatenate([allies, enemies])

    def _surrounded(self, key):
        """Allies at the centre; enemies in 1-4 groups on distinct diagonals, each at a uniform
        fraction of the way from its corner to the point SURROUND_OFFSET from the centre."""
        s = self.structure
        size = float(s.map_size)
        count_key, member_key, diagonal_key, fraction_key, noise_key = jax.random.split(key, 5)
        centre = jnp.array([size / 2, size / 2])
        corners = jnp.array([[0.0, 0.0], [0.0, size], [size, size], [size, 0.0]])
        inner = centre + SURROUND_OFFSET * jnp.sign(corners - centre)
        n_groups = jax.random.randint(count_key, (), 1, 5)
        group = jax.random.randint(member_key, (s.n_enemies,), 0, n_groups)
        diagonal = jax.random.permutation(diagonal_key, 4)[group]
        fraction = jax.random.uniform(fraction_key, (4,))[group][:, None]
        enemies = inner[diagonal] * fraction + corners[diagonal] * (1 - fraction)
        allies = jnp.broadcast_to(centre, (s.n_units, 2))
        noise = jax.random.uniform(noise_key, (s.n_units + s.n_enemies, 2), minval=-START_NOISE,
                                   maxval=START_NOISE)
        return jnp.concatenate([allies, enemies]) + noise


def _strong(tree):
    """``tree`` with every weakly typed leaf made strongly typed: a reset must return exactly the
    types a step returns, or the step compiles twice."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), tree)


_PROGRAMS: dict[Structure, Program] = {}


def program_for(structure: Structure) -> Program:
    """The shared program of ``structure`` (built on first use)."""
    if structure not in _PROGRAMS:
        _PROGRAMS[structure] = Program(structure)
    return _PROGRAMS[structure]


class BatchRunner:
    """``num_envs`` copies of one task on one device: runs a :class:`Program` and converts its
    outputs to torch tensors that share the JAX buffers."""

    def __init__(self, settings: SMAXSettings, num_envs: int, device: torch.device, info: EnvInfo):
        self.settings, self.num_envs, self.device, self.info = settings, num_envs, device, info
        self.jax_device = jax_device(device)
        self.program = program_for(Structure(
            settings.n_units, settings.n_enemies, settings.map_size, settings.episode_limit,
            self.jax_device.platform, self.jax_device.id,
        ))
        put = lambda x: jax.device_put(x, self.jax_device)
        self.copy_index = put(jnp.arange(num_envs, dtype=jnp.uint32))
        self.type_probabilities = put(jnp.asarray(settings.type_probabilities(), dtype=jnp.float32))
        self.reflect_probability = put(jnp.float32(settings.effective_reflect_probability))
        self.enemy_type_probabilities = put(jnp.asarray(settings.enemy_type_probabilities(), dtype=jnp.float32))
        self.mirror = put(jnp.bool_(settings.enemy_unit_weights is None))
        self.keys: Any = None  # [E, 2] per-copy keys of the episodes in progress
        self.state: Any = None  # batched SMAX state of the episodes in progress
        #: JAX arrays of the latest reset or step (what the returned tensors share memory with)
        self.outputs: tuple = ()
        # Tensors share JAX's buffers when JAX runs where torch wants them (else: copied over).
        self._shared = (self.jax_device.platform == "cpu") == (device.type == "cpu")

    def _episode_key(self, seed: int, resets: int):
        # The seed's 64 bits as a raw threefry key (jax.random.PRNGKey keeps only 32 of them
        # without x64), then the reset counter folded in.
        seed %= 2**64
        base = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
        return jax.device_put(jax.random.fold_in(base, resets), self.jax_device)

    def reset(self, seed: int, resets: int) -> Observation:
        self.outputs = keys, state, obs, world_state, avail = self.program.reset(
            self._episode_key(seed, resets), self.copy_index, self.type_probabilities,
            self.reflect_probability, self.enemy_type_probabilities, self.mirror,
        )
        self.keys, self.state = keys, state
        if self.program.state_tree is None:
            self.program.state_tree = jax.tree.structure(state)
        return Observation(self._torch(obs), self._torch(world_state), self._torch(avail))

    def step(self, actions: torch.Tensor) -> StepResult:
        if self.state is None:
            raise RuntimeError("step() before reset()")
        actions = actions.to(device=self.device, dtype=torch.int32).contiguous()
        if self._shared:
            jax_actions = jnp.from_dlpack(actions)  # shares the torch buffer
        else:
            jax_actions = jax.device_put(actions.cpu().numpy(), self.jax_device)
        self.outputs = outputs = self.program.step(self.keys, self.state, jax_actions)
        self.keys, self.state = outputs[0], outputs[1]
        obs, world_state, avail, reward, terminated, truncated, won = (self._torch(x) for x in outputs[2:])
        return StepResult(obs, world_state, avail, reward, terminated, truncated, won)

    def _torch(self, array) -> torch.Tensor:
        tensor = torch.from_dlpack(array)  # zero-copy: the tensor shares the JAX buffer
        return tensor if self._shared else tensor.to(self.device)

    def warm_up(self) -> float:
        """Compile reset and step for this batch size (one throwaway episode step); seconds taken."""
        started = time.perf_counter()
        keys, state, *_ = self.program.reset(self._episode_key(0, 0), self.copy_index,
                                             self.type_probabilities, self.reflect_probability,
                                             self.enemy_type_probabilities, self.mirror)
        stop = jax.device_put(jnp.full((self.num_envs, self.settings.n_units), 4, jnp.int32), self.jax_device)
        jax.block_until_ready(self.program.step(keys, state, stop))
        if self.program.state_tree is None:
            self.program.state_tree = jax.tree.structure(state)
        return time.perf_counter() - started

    # --- checkpoints ----------------------------------------------------------------------------
    def episode_state(self) -> dict[str, Any] | None:
        """The episodes in progress as CPU tensors (keys and every leaf of the SMAX state)."""
        if self.state is None:
            return None
        leaves = jax.tree.leaves(self.state)
        # uint32 keys are stored as int64 (torch's checkpoint loader knows every int64 tensor)
        keys = torch.from_numpy(np.array(self.keys).astype(np.int64))
        return {"keys": keys, "leaves": [_to_cpu_tensor(x) for x in leaves]}

    def load_episode_state(self, episode: dict[str, Any]) -> None:
        if self.program.state_tree is None:
            self.warm_up()
        tree = self.program.state_tree
        leaves = episode["leaves"]
        if len(leaves) != tree.num_leaves or tuple(episode["keys"].shape) != (self.num_envs, 2):
            raise ValueError(f"smax episode state does not fit this env ({self.num_envs} copies, "
                             f"{tree.num_leaves} state arrays)")
        put = lambda t: jax.device_put(np.asarray(t.numpy()), self.jax_device)
        self.keys = jax.device_put(episode["keys"].numpy().astype(np.uint32), self.jax_device)
        self.state = jax.tree.unflatten(tree, [put(t) for t in leaves])


def _to_cpu_tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a copy: the checkpoint must not alias JAX buffers
