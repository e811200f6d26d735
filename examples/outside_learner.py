"""Independent Q-learning, written outside ctmarl, trained through a ctmarl scenario.

One small Q-network shared by the agents (input: observation + agent-id one-hot), ε-greedy,
one TD(0) step per env step of the batch; the run goes through every task with the suite's
protocol (ctmarl.OutsideRun) and writes a run record. Seconds at the smoke tier:

    python examples/outside_learner.py --scenario matrix_drift --tier smoke --out runs
"""

import argparse

import torch
from torch import nn

import ctmarl
from ctmarl.api import leaderboard_admission
from ctmarl.record import load_record

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--scenario", default="matrix_drift")
parser.add_argument("--tier", default="smoke")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs")
args = parser.parse_args()

config = {"hidden": 64, "lr": 0.02, "gamma": 0.99, "epsilon_floor": 0.05, "epsilon_anneal_share": 0.5}
torch.manual_seed(args.seed)
run = ctmarl.OutsideRun(args.scenario, tier=args.tier, seed=args.seed, learner="iql_example", config=config)
n_agents, n_actions = run.env_info.n_agents, run.env_info.n_actions
q_net = nn.Sequential(nn.Linear(run.env_info.obs_dim + n_agents, config["hidden"]), nn.ReLU(),
                      nn.Linear(config["hidden"], n_actions))
optimizer = torch.optim.Adam(q_net.parameters(), lr=config["lr"])


def q_values(obs):  # [E, N, O] -> [E, N, A]
    agent_ids = torch.eye(n_agents).expand(obs.shape[0], -1, -1)
    return q_net(torch.cat([obs, agent_ids], -1))


@torch.no_grad()
def greedy(obs, avail):  # the policy ctmarl evaluates: [E, N, O], [E, N, A] bool -> [E, N]
    return q_values(obs).masked_fill(~avail, -torch.inf).argmax(-1)


def collect_and_learn(env, epsilon):
    """One episode in every env copy, a TD(0) update per step; returns the env steps taken."""
    start = env.reset()
    obs, avail, steps = start.obs, start.avail_actions, 0
    live = torch.ones(env.num_envs, dtype=torch.bool)
    for _ in range(run.env_info.episode_limit):
        explore = torch.rand(live.shape[0], n_agents) < epsilon
        random_actions = torch.multinomial(avail.flatten(0, 1).float(), 1).view(-1, n_agents)
        actions = torch.where(explore, random_actions, greedy(obs, avail))
        step = env.step(actions)
        with torch.no_grad():
            next_q = q_values(step.obs).masked_fill(~step.avail_actions, -torch.inf).amax(-1)
            target = step.reward[:, None] + config["gamma"] * (~step.terminated)[:, None] * next_q
        q_taken = q_values(obs).gather(-1, actions[..., None]).squeeze(-1)
        loss = ((q_taken - target).pow(2) * live[:, None]).sum() / (live.sum() * n_agents)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += int(live.sum())
        live &= ~(step.terminated | step.truncated)
        obs, avail = step.obs, step.avail_actions
        if not live.any():
            break
    return steps


for task in run.tasks:
    env, task_steps = run.env(task), 0  # ε restarts each task (the protocol's reset_exploration)
    while task_steps < run.env_steps_per_task:
        share = task_steps / (config["epsilon_anneal_share"] * run.env_steps_per_task)
        task_steps += collect_and_learn(env, max(config["epsilon_floor"], 1.0 - share))
        run.evaluate_due(greedy, task_steps)
    print(f"{task.name}: R row {[round(r, 2) for r in run.end_task(greedy)]}")

path = run.write(args.out)
metrics = load_record(path)["metrics"]  # validated as the leaderboard reads it
print(f"record: {path}")
print(f"performance {metrics['performance']:.3f}  auc {metrics['auc']:.3f}  forgetting {metrics['forgetting']}")
print(f"leaderboard: {leaderboard_admission(path) or 'admitted'}")
