"""Checkpoint files and the state_dict round trips they are made of (exact, small, fast).

End-to-end resuming (killed and resumed runs equal uninterrupted ones) is tests/test_resume.py.
"""

import errno
import io
import os
import signal

import pytest
import torch

from ctmarl import checkpoint
from ctmarl.checkpoint import (
    CheckpointWriter, check_identity, deferred_interrupts, read_checkpoint, write_checkpoint,
)
from ctmarl.envs.base import BatchedEnv
from ctmarl.envs.matrix import MatrixGameEnv, MatrixSettings
from ctmarl.envs.predator_prey import PredatorPreyEnv, PredatorPreySettings
from ctmarl.errors import CheckpointError, OutputError
from ctmarl.learner import make_learner
from ctmarl.testing import random_episodes
from ctmarl_baselines.replay import EpisodeReplay


def payload(value: float = 1.0) -> dict:
    return {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
            "identity": {"config_hash": "abc", "seed": 0}, "env_steps": 10, "updates": 2,
            "versions": {}, "state": {"weights": torch.full((3,), value), "counts": [1, 2]}}


def no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def through_file(state):
    """What a state looks like after torch.save + torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- files ------------------------------------------------------------------------------------
def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "run.ckpt"
    write_checkpoint(payload(), path)
    loaded = read_checkpoint(path)
    assert torch.equal(loaded["state"]["weights"], torch.ones(3)) and loaded["state"]["counts"] == [1, 2]
    assert no_temporaries(tmp_path)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    write_checkpoint(payload(1.0), path)
    before = path.read_bytes()

    def disk_full(data, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_serialise", disk_full)
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*run.ckpt: No space left on device "
                                          r"\(the previous checkpoint is intact\)"):
        write_checkpoint(payload(2.0), path)
    assert path.read_bytes() == before and no_temporaries(tmp_path)
    assert torch.equal(read_checkpoint(path)["state"]["weights"], torch.ones(3))


def test_unwritable_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="no earlier checkpoint exists"):
        write_checkpoint(payload(), tmp_path / "missing" / "run.ckpt")


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    path = tmp_path / "run.ckpt"
    stale = tmp_path / ".run.ckpt.x1y2.tmp"
    other = tmp_path / ".other.ckpt.x1y2.tmp"
    stale.write_bytes(b"partial")
    other.write_bytes(b"another run's")
    checkpoint.remove_stale_temporaries(path)
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error_and_stays(tmp_path, damage):
    path = tmp_path / "run.ckpt"
    write_checkpoint(payload(), path)
    data = path.read_bytes()
    data = {"truncate": data[: len(data) // 2], "garbage": os.urandom(200), "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"is corrupt or truncated .*it was left as it is"):
        read_checkpoint(path)
    assert path.read_bytes() == data


class Unsafe:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_unsafe_pickle_is_refused_not_run(tmp_path):
    path = tmp_path / "run.ckpt"
    torch.save({"format": checkpoint.FORMAT, "state": Unsafe()}, path)
    with pytest.raises(CheckpointError, match=r"holds an object that a weights_only load refuses \(GLOBAL "):
        read_checkpoint(path)
    assert path.exists()


@pytest.mark.parametrize("content, message", [
    ({"a": torch.zeros(1)}, "is not a ctmarl checkpoint"),
    ([1, 2], "is not a ctmarl checkpoint"),
    ({**payload(), "format_version": 99}, "has format_version 99; this ctmarl reads version 1"),
    ({k: v for k, v in payload().items() if k != "state"}, "lacks 'state'"),
])
def test_foreign_content_is_refused(tmp_path, content, message):
    path = tmp_path / "run.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    assert path.exists()


def test_identity_mismatch_names_what_differs(tmp_path):
    saved = {"identity": {"config_hash": "a" * 64, "method_config": {"tau": 0.1, "every": 5},
                          "neuron_every_updates": 50}}
    check_identity(saved, dict(saved["identity"]), tmp_path / "x.ckpt")  # the same run: accepted
    wanted = {"config_hash": "b" * 64, "method_config": {"tau": 0.2, "every": 5}, "neuron_every_updates": 50}
    with pytest.raises(CheckpointError) as info:
        check_identity(saved, wanted, tmp_path / "x.ckpt")
    message = str(info.value)
    assert "was written by a different run" in message and "refusing to resume" in message
    assert "method_config: checkpoint {'tau': 0.1}, requested {'tau': 0.2}" in message
    assert "config_hash: checkpoint 'aaaaaaaaaaaa', requested 'bbbbbbbbbbbb'" in message
    assert "neuron_every_updates" not in message


# --- when checkpoints are written ------------------------------------------------------------
def test_env_step_schedule_crosses_multiples(tmp_path):
    writer = CheckpointWriter(tmp_path / "run.ckpt", {}, every_env_steps=100)
    assert [writer.due(s) for s in (0, 99, 100, 250)] == [False, False, True, True]
    writer.write({}, env_steps=130, updates=4)
    assert [writer.due(s) for s in (130, 199, 200)] == [False, False, True]
    assert writer.describe() == f"its last checkpoint (env step 130) is kept at {tmp_path / 'run.ckpt'}"
    resumed = CheckpointWriter(tmp_path / "run.ckpt", {}, every_env_steps=100, last_env_steps=260)
    assert not resumed.due(299) and resumed.due(300)


def test_time_schedule(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    writer = CheckpointWriter(tmp_path / "run.ckpt", {}, every_seconds=60.0)
    assert writer.describe() == "no checkpoint had been written yet"
    clock[0] += 59.0
    assert not writer.due(10**6)
    clock[0] += 1.0
    assert writer.due(0)
    writer.write({}, env_steps=5, updates=1)
    assert not writer.due(10**6)


def test_first_ctrl_c_is_a_request_second_stops():
    previous = signal.getsignal(signal.SIGINT)
    with deferred_interrupts() as request:
        assert not request.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


# --- state round trips ------------------------------------------------------------------------
PP = PredatorPreySettings(grid_size=5, n_agents=3, n_prey=2, episode_limit=12, sight_range=1,
                          capture_reward=10.0, catchers_required=2, prey_moves=True,
                          miscapture_punishment=-1.0)


def play(env, avail, steps, seed):
    """Step with random available actions: every output of every step."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for _ in range(steps):
        scores = torch.rand(avail.shape, generator=generator).masked_fill(~avail, -1.0)
        outputs.append(env.step(scores.argmax(-1)))
        avail = outputs[-1].avail_actions
    return outputs


def test_predator_prey_state_round_trip_mid_episode():
    env = PredatorPreyEnv(PP, num_envs=6, seed=3)
    (*_, avail) = play(env, env.reset().avail_actions, 5, seed=0)[-1][:3]
    state = through_file(env.state_dict())
    clone = PredatorPreyEnv(PP, num_envs=6, seed=99)  # another seed: everything must come from state
    clone.load_state_dict(state)
    expected, got = play(env, avail, 10, seed=1), play(clone, avail, 10, seed=1)
    for a, b in zip(expected, got):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for a, b in zip(env.reset(), clone.reset()):  # the generator carried over too
        assert torch.equal(a, b)


def test_predator_prey_state_of_another_size_is_refused():
    small = PredatorPreyEnv(PP, num_envs=2)
    with pytest.raises(ValueError, match=r"'copy_keys' has shape \[2, 2\], this env needs \[4, 2\]"):
        PredatorPreyEnv(PP, num_envs=4).load_state_dict(small.state_dict())


def test_matrix_state_is_its_generator():
    env = MatrixGameEnv(MatrixSettings(payoff=((1.0, 0.0), (0.0, 2.0))), num_envs=2, seed=5)
    env.generator.manual_seed(7)
    torch.rand(3, generator=env.generator)
    clone = MatrixGameEnv(MatrixSettings(payoff=((1.0, 0.0), (0.0, 2.0))), num_envs=2, seed=1)
    clone.load_state_dict(through_file(env.state_dict()))
    assert torch.equal(torch.rand(4, generator=env.generator), torch.rand(4, generator=clone.generator))


def test_env_family_without_state_cannot_be_checkpointed():
    class Plain(BatchedEnv):
        info = None

        def reset(self, seed=None):
            pass

        def step(self, actions):
            pass

    with pytest.raises(CheckpointError, match="env family Plain does not implement state_dict"):
        Plain(None, 1).state_dict()


@pytest.mark.parametrize("chunks", [[5], [5, 5, 3]])  # part full; wrapped around
def test_replay_round_trip_saves_only_filled_rows(chunks):
    info = PredatorPreyEnv(PP, 1).info
    replay = EpisodeReplay(8, torch.device("cpu"))
    for seed, episodes in enumerate(chunks):
        replay.add(random_episodes(info, episodes, seed=seed))
    state = through_file(replay.state_dict())
    assert state["storage"]["reward"].shape[0] == min(len(replay), 8)
    clone = EpisodeReplay(8, torch.device("cpu"))
    clone.load_state_dict(state)
    assert (len(clone), clone.cursor) == (len(replay), replay.cursor)
    assert all(torch.equal(a, b) for a, b in zip(replay.storage, clone.storage))
    a = replay.sample(4, torch.Generator().manual_seed(2))
    b = clone.sample(4, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="capacity 8, this replay 16"):
        EpisodeReplay(16, torch.device("cpu")).load_state_dict(state)


@pytest.mark.parametrize("name", ["qmix", "qplex"])
def test_learner_round_trip_continues_bit_for_bit(name):
    info = PredatorPreyEnv(PP, 1).info
    config = {"batch_size": 4, "buffer_episodes": 16, "target_update_interval_episodes": 6,
              "agent_hidden_dim": 8}

    def build(seed):
        torch.manual_seed(seed)
        return make_learner(name, info, config, seed=seed)

    learner = build(0)
    for step in range(3):
        learner.add_episodes(random_episodes(info, 4, seed=step))
        learner.update()
    saved = through_file(learner.checkpoint_state())
    clone = build(1)  # other initial weights and sampling seed: everything must come from the state
    clone.load_checkpoint_state(saved)
    for step in range(3, 7):
        for each in (learner, clone):
            each.add_episodes(random_episodes(info, 4, seed=step))
            each.update()
    assert clone.updates == learner.updates == 7 and clone.episodes_seen == learner.episodes_seen
    assert clone.episodes_at_target_sync == learner.episodes_at_target_sync
    for (key, a), b in zip(learner.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), key
