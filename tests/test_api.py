"""ctmarl.api: make / make_parallel_env, an outside learner's run (OutsideRun) and its record."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pettingzoo.test import parallel_api_test

import ctmarl
from ctmarl.api import OutsideRun, leaderboard_admission
from ctmarl.errors import CtmarlError
from ctmarl.evaluate import RunSpec, build_record, rounded
from ctmarl.learner import make_learner
from ctmarl.method import make_method
from ctmarl.protocol import Training, _derive_seed, rollout
from ctmarl.record import load_record
from ctmarl.scenario import make_scenario

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "outside_learner.py"


# --- make / make_parallel_env ----------------------------------------------------------------

def test_make_by_name_and_by_index_gives_the_same_task():
    by_name = ctmarl.make("matrix_drift", task="M3", tier="smoke")
    by_index = ctmarl.make("matrix_drift-v1", task=2, tier="smoke")
    assert by_name.settings == by_index.settings == make_scenario("matrix_drift").tasks("smoke")[2].settings
    assert by_name.num_envs == make_scenario("matrix_drift").tier("smoke").num_envs == 32
    first = by_name.reset()
    assert first.obs.shape == (32, 2, 1) and first.state.shape == (32, 1)
    assert first.avail_actions.shape == (32, 2, 3) and first.avail_actions.dtype == torch.bool
    step = by_name.step(torch.zeros(32, 2, dtype=torch.long))
    assert step.reward.shape == step.score.shape == (32,)


def test_make_num_envs_and_the_tier_decide_the_batch():
    env = ctmarl.make("predator_prey_penalty", task="p1", tier="smoke", num_envs=3, seed=5)
    info = env.info
    assert env.num_envs == 3 and (info.n_agents, info.episode_limit) == (2, 20)  # the smoke tier's world
    assert env.reset().obs.shape == (3, info.n_agents, info.obs_dim)


def test_a_repeated_task_name_means_its_first_visit():
    tasks = make_scenario("matrix_drift_repeat").tasks("smoke")
    assert ctmarl.make("matrix_drift_repeat", "M3", tier="smoke").settings == tasks[2].settings
    assert tasks[7].name == "M3#2"
    assert ctmarl.make("matrix_drift_repeat", "M3#2", tier="smoke", num_envs=1).settings == tasks[7].settings


@pytest.mark.parametrize("task, message", [
    ("M9", "matrix_drift-v1 has no task 'M9'; tasks: M1, M2, M3, M4, M5, M1-return"),
    (6, "task must be a task name or an index in 0..5, got 6"),
    (-1, "index in 0..5, got -1"),
    (True, "index in 0..5, got True"),
])
def test_make_refuses_an_unknown_task_listing_the_valid_ones(task, message):
    with pytest.raises(CtmarlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ctmarl.make("matrix_drift", task=task, tier="smoke")


def test_make_refuses_bad_scenario_tier_and_num_envs():
    with pytest.raises(CtmarlError, match="unknown scenario"):
        ctmarl.make("no_such_scenario")
    with pytest.raises(CtmarlError, match="unknown tier 'huge'"):
        ctmarl.make("matrix_drift", tier="huge")
    with pytest.raises(CtmarlError, match="num_envs must be a positive integer"):
        ctmarl.make("matrix_drift", num_envs=0)


@pytest.mark.parametrize("scenario, task", [("matrix_drift", "M2"), ("predator_prey_penalty", 4)])
def test_make_parallel_env_passes_the_pettingzoo_api_test(scenario, task):
    view = ctmarl.make_parallel_env(scenario, task=task, tier="smoke", seed=1)
    parallel_api_test(view, num_cycles=100)
    assert view.state().shape == view.state_space.shape


def test_importing_ctmarl_does_not_import_the_api_until_used():
    code = ("import sys, ctmarl; assert 'ctmarl.api' not in sys.modules and 'pettingzoo' not in sys.modules; "
            "assert ctmarl.make is sys.modules['ctmarl.api'].make; assert 'OutsideRun' in dir(ctmarl)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- OutsideRun ------------------------------------------------------------------------------

class GreedyPolicy:
    """A ctmarl learner's greedy policy behind the outside-policy interface (with its GRU state)."""

    def __init__(self, learner):
        self.learner, self.generator = learner, torch.Generator()

    def reset(self, num_envs):
        self.hidden = self.learner.initial_hidden(num_envs)
        self.last_actions = torch.full((num_envs, self.learner.info.n_agents), -1, dtype=torch.long)

    def __call__(self, obs, avail_actions):
        actions, self.hidden = self.learner.act(obs, avail_actions, self.last_actions, self.hidden, 0.0, self.generator)
        self.last_actions = actions
        return actions


def _frozen_qmix(scenario, tier, seed):
    """QMIX whose updates never happen: a fixed policy that the suite's runner can run too."""
    torch.manual_seed(seed)
    learner = make_learner("qmix", scenario.env_info(tier), dict(scenario.tier(tier).learner), seed=seed)
    learner.update = lambda after_backward=None: None
    return learner


@pytest.mark.parametrize("scenario_id", ["matrix_drift", "predator_prey_penalty"])
def test_an_outside_run_measures_what_the_suite_measures(scenario_id):
    """The same fixed policy, trained on the same collections: OutsideRun's curves and R equal
    those of the suite's own runner (Evaluator envs, seeds, evaluation points and R order)."""
    scenario, tier, seed = make_scenario(scenario_id), "smoke", 3
    suite_learner = _frozen_qmix(scenario, tier, seed)
    suite = Training(scenario, tier, suite_learner, make_method("none"), seed, probe=False).train()

    learner = _frozen_qmix(scenario, tier, seed)
    policy = GreedyPolicy(learner)
    run = OutsideRun(scenario_id, tier=tier, seed=seed, learner="frozen_qmix", config={"note": "never trained"})
    explore = torch.Generator().manual_seed(_derive_seed(seed, 1))  # the runner's exploration stream
    for task in run.tasks:
        env, task_steps = run.env(task), 0
        while task_steps < run.env_steps_per_task:
            task_steps += rollout(env, learner, learner.epsilon(task_steps), explore).env_steps
            run.evaluate_due(policy, task_steps)
        assert run.end_task(policy) == suite.R[task.index]
    record = run.record()

    for key in ("curves", "R", "R_return"):
        assert record[key] == rounded(getattr(suite, key)), key
    assert record["metrics"]["auc_per_task"] == rounded(suite.summary()["auc_per_task"])
    # Not a vacuous match: the evaluations differ from one another (by task, or by the env's draws).
    assert len(set(suite.curves["score"]) | set(suite.curves["return"])) > 2
    # The same layout as a `ctmarl evaluate` record of the same run.
    reference = build_record(RunSpec(scenario_id, tier=tier, seed=seed, neuron_every_updates=0),
                             scenario, suite_learner, make_method("none"), suite)
    assert list(record) == list(reference)
    for block in ("scenario", "method", "timing", "metrics", "neurons", "provenance"):
        assert list(record[block]) == list(reference[block]), block
    assert record["scenario"] == reference["scenario"] and record["method"] == reference["method"]
    assert record["learner"] == {"name": "frozen_qmix", "entry_point": None, "config": {"note": "never trained"}}
    assert record["timing"]["env_steps"] == suite.env_steps


def test_a_gradual_track_blends_the_training_env_as_the_suite_does():
    run = OutsideRun("matrix_drift_gradual", tier="smoke", learner="probe")
    tasks, budget = run.tasks, run.env_steps_per_task
    share = run.protocol.transition.share
    always = lambda obs, avail: torch.zeros(avail.shape[:2], dtype=torch.long)  # noqa: E731
    env = run.env(0)
    assert env.settings == tasks[0].settings  # the first task starts abruptly
    run.evaluate_due(always, budget)
    run.end_task(always)
    env = run.env(1)
    assert env.settings == tasks[0].settings  # alpha = 0
    run.evaluate_due(always, int(share * budget) // 2)
    middle = [(a + b) / 2 for r0, r1 in zip(tasks[0].settings.payoff, tasks[1].settings.payoff)
              for a, b in zip(r0, r1)]
    assert [value for row in env.settings.payoff for value in row] == pytest.approx(middle)
    run.evaluate_due(always, int(share * budget))
    assert env.settings == tasks[1].settings


def test_an_outside_run_refuses_misuse_with_a_clear_error():
    with pytest.raises(CtmarlError, match="'qmix' is a registered ctmarl learner"):
        OutsideRun("matrix_drift", tier="smoke", learner="qmix")
    with pytest.raises(CtmarlError, match="learner name must be"):
        OutsideRun("matrix_drift", tier="smoke", learner="my/learner")
    with pytest.raises(CtmarlError, match=r"config\.lr: numbers must be finite"):
        OutsideRun("matrix_drift", tier="smoke", learner="mine", config={"lr": math.nan})
    with pytest.raises(CtmarlError, match=r"config\.net: must be plain data"):
        OutsideRun("matrix_drift", tier="smoke", learner="mine", config={"net": torch.nn.Linear(1, 1)})
    run = OutsideRun("matrix_drift", tier="smoke", learner="mine")
    first_action = lambda obs, avail: torch.zeros(avail.shape[:2], dtype=torch.long)  # noqa: E731
    with pytest.raises(CtmarlError, match="get its training env with run.env"):
        run.evaluate_due(first_action, 10)
    with pytest.raises(CtmarlError, match="tasks are trained in order: the current task is 0 \\(M1\\), not 1"):
        run.env("M2")
    run.env("M1")
    assert run.eval_points[:2] == [51, 102]
    assert run.evaluate_due(first_action, 100) == [pytest.approx(2 / 24)]  # M1's payoff -10 in [-12, 12]
    with pytest.raises(CtmarlError, match="has 9 evaluation\\(s\\) left: train 512 env steps on it \\(trained: 100\\)"):
        run.end_task(first_action)
    with pytest.raises(CtmarlError, match="never decreases"):
        run.evaluate_due(first_action, 99)
    with pytest.raises(CtmarlError, match="integer actions of shape \\(8, 2\\)"):
        run.evaluate_due(lambda obs, avail: torch.zeros(8, 2), 512)
    with pytest.raises(CtmarlError, match="0 of 6 tasks have ended"):
        run.record()


# --- the example, as CI runs it --------------------------------------------------------------

def test_the_outside_learner_example_writes_a_valid_record(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--scenario", "matrix_drift", "--tier", "smoke",
                             "--seed", "1", "--out", str(tmp_path / "runs")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "runs" / "matrix_drift-v1_smoke_iql_example_none_seed1.yaml"
    record = load_record(path)
    n_tasks = make_scenario("matrix_drift").n_tasks
    assert len(record["R"]) == n_tasks and all(len(row) == n_tasks for row in record["R"])
    assert sorted(set(record["curves"]["task"])) == list(range(n_tasks))
    assert len(record["metrics"]["auc_per_task"]) == n_tasks
    assert record["learner"]["name"] == "iql_example" and record["learner"]["entry_point"] is None
    assert record["method"]["name"] == "none" and record["seed"] == 1
    reason = leaderboard_admission(path)
    assert "unknown learner 'iql_example'" in reason
    assert f"leaderboard: {reason}" in result.stdout
