import itertools

import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

from ctmarl.envs.pettingzoo_view import ParallelEnvView
from ctmarl.scenario import make_scenario

# DESIGN.md §4.1, typed in independently of the scenario file.
DESIGN = {
    "M1": [[-10, -10, 12], [-9, -12, -8], [-4, -8, -11]],
    "M2": [[-11, -4, -8], [12, -10, -10], [-8, -9, -12]],
    "M3": [[-8, -12, -9], [-10, -11, -4], [-10, 12, -8]],
    "M4": [[12, -8, -11], [-4, -10, -9], [-12, -10, -8]],
    "M5": [[-9, -8, -10], [-12, -4, -10], [-11, -8, 12]],
}
OPTIMUM = {"M1": (0, 2), "M2": (1, 0), "M3": (2, 1), "M4": (0, 0), "M5": (2, 2)}


@pytest.mark.parametrize("task", make_scenario("matrix_drift").tasks("quick"), ids=lambda t: t.name)
def test_payoff_of_every_joint_action(task):
    expected = DESIGN[task.name.removesuffix("-return")]
    env = task.make_env(9)
    env.reset()
    joint = torch.tensor(list(itertools.product(range(3), repeat=2)))
    result = env.step(joint)
    assert result.reward.tolist() == [expected[a][b] for a, b in joint.tolist()]
    assert result.terminated.all() and not result.truncated.any()
    best = joint[result.score.argmax()].tolist()
    assert tuple(best) == OPTIMUM[task.name.removesuffix("-return")]
    assert result.score.max() == 1.0 and result.score.min() == 0.0
    assert result.score.tolist() == pytest.approx([(v + 12) / 24 for v in result.reward.tolist()])


def test_all_matrices_are_permutations_of_one_another():
    values = {tuple(sorted(sum(m, []))) for m in DESIGN.values()}
    assert len(values) == 1


def _view(seed):
    task = make_scenario("matrix_drift").tasks("smoke")[0]
    return task.make_env(1, seed=seed)


def test_pettingzoo_parallel_api():
    parallel_api_test(ParallelEnvView(_view), num_cycles=10)
    parallel_seed_test(lambda: ParallelEnvView(_view))


def test_view_state_and_masks():
    env = ParallelEnvView(_view)
    obs, infos = env.reset(seed=1)
    assert set(obs) == {"agent_0", "agent_1"}
    assert infos["agent_0"]["action_mask"].tolist() == [1, 1, 1]
    assert env.state().shape == (1,)
    _, rewards, terms, _, infos = env.step({"agent_0": 0, "agent_1": 2})
    assert rewards == {"agent_0": 12.0, "agent_1": 12.0} and all(terms.values())
    assert infos["agent_0"]["score"] == 1.0 and env.agents == []
