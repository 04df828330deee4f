"""Tabular Q-learning: the update rule, the space checks, and learning on FrozenLake and Taxi."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymlab.agents.tabular_q import TabularQ, TabularQConfig

from gymlab.agent import Context, Transition, load_agent_class
from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve
from gymlab.loop import train


def make_agent(**hp) -> TabularQ:
    ctx = Context(gym.spaces.Discrete(3), gym.spaces.Discrete(2), 1, 0, torch.device("cpu"), 1000)
    return TabularQ(TabularQConfig(**hp), ctx)


def step(agent: TabularQ, s, a, r, s2, terminated=False, truncated=False) -> None:
    agent.observe(
        Transition(
            np.array([s]),
            np.array([a]),
            np.array([r], float),
            np.array([s2]),
            np.array([terminated]),
            np.array([truncated]),
        )
    )
    agent.update(1)


def test_update_bootstraps_unless_terminated():
    agent = make_agent(learning_rate=0.5, gamma=0.9)
    agent.q[2] = [1.0, 3.0]
    step(agent, 0, 1, 1.0, 2)  # target 1 + 0.9 * 3 = 3.7; Q = 0.5 * 3.7
    assert agent.q[0, 1] == pytest.approx(1.85)
    step(agent, 1, 0, 1.0, 2, terminated=True)  # target 1, no bootstrap
    assert agent.q[1, 0] == pytest.approx(0.5)
    step(agent, 1, 1, 1.0, 2, truncated=True)  # truncated: still bootstraps
    assert agent.q[1, 1] == pytest.approx(1.85)


def test_greedy_action_and_epsilon_schedule():
    agent = make_agent(epsilon_start=1.0, epsilon_final=0.1, exploration_fraction=0.5)
    agent.q[0] = [0.0, 1.0]
    assert agent.act(np.array([0, 0]), explore=False).tolist() == [1, 1]
    agent.observe(
        Transition(*(np.zeros(1, int),) * 2, np.zeros(1), np.zeros(1, int), np.zeros(1, bool), np.zeros(1, bool))
    )
    agent.update(250)  # a quarter of the run: halfway through the decay
    assert agent.epsilon == pytest.approx(0.55)
    actions = agent.act(np.zeros(10_000, int), explore=True)
    # greedy action 1 except where exploring picks 0 (half of the 55% random choices)
    assert np.mean(actions == 0) == pytest.approx(0.275, abs=0.02)


def test_rejects_non_discrete_spaces():
    cls = load_agent_class("tabular_q")
    problem = cls.check_spaces(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    assert problem is not None and "Discrete" in problem and "observation space is Box" in problem


def frozenlake_success_probability(q: np.ndarray, horizon: int = 100) -> float:
    """Exact probability that the greedy policy of q reaches the goal within the time limit."""
    env = gym.make("FrozenLake-v1", is_slippery=True)
    transitions = env.unwrapped.P  # type: ignore[attr-defined]
    policy = q.argmax(axis=1)
    n_states = q.shape[0]
    reach = np.zeros(n_states)  # P(goal within t steps | s)
    for _ in range(horizon):
        new = np.zeros(n_states)
        for s in range(n_states):
            for prob, s_next, reward, done in transitions[s][policy[s]]:
                new[s] += prob * (reward if done else reach[s_next])
        reach = new
    return float(reach[0])


def train_preset(tmp_path: Path, env: str, *overrides: str):
    cfg = resolve("tabular_q", env, None, ["eval_every=0", "checkpoint_every=0", *overrides], seed=0)
    result = train(cfg, tmp_path)
    return result, Checkpoint.read(tmp_path / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_frozenlake_greedy_policy_succeeds_70_percent(tmp_path):
    _, ckpt = train_preset(tmp_path, "FrozenLake-v1")
    success = frozenlake_success_probability(ckpt.agent_state["policy"]["q"])
    assert success >= 0.70  # the optimum within 100 steps is 0.744


@pytest.mark.slow
def test_taxi_mean_eval_return_at_least_7(tmp_path):
    result, _ = train_preset(tmp_path, "Taxi-v4")
    assert result.last_eval >= 7


def test_learning_fails_without_the_update(tmp_path, monkeypatch):
    """The learning tests measure learning: with the update removed the same budget learns nothing."""
    monkeypatch.setattr(TabularQ, "update", lambda self, step: {})
    _, ckpt = train_preset(tmp_path, "FrozenLake-v1", "steps=20000")
    assert frozenlake_success_probability(ckpt.agent_state["policy"]["q"]) < 0.1


def test_the_per_copy_act_draws_what_the_batched_formulation_draws():
    """act() over Python scalars is an optimisation: the same actions and generator state as the batched numpy form."""
    space = gym.spaces.Discrete(7)
    ctx = Context(space, gym.spaces.Discrete(4, start=2), 3, 11, torch.device("cpu"), 1000)
    agent = TabularQ(TabularQConfig(epsilon_start=0.4), ctx)
    agent.q = np.random.default_rng(1).normal(size=agent.q.shape)
    rng = np.random.default_rng(11)
    obs = np.random.default_rng(2).integers(7, size=(200, 3))
    for row in obs:
        expected = agent.q[row].argmax(axis=1)
        for i, u in enumerate(rng.random(3).tolist()):
            if u < 0.4:
                expected[i] = int(u / 0.4 * 4)
        np.testing.assert_array_equal(agent.act(row, explore=True), expected + 2)
        np.testing.assert_array_equal(agent.act(row, explore=False), agent.q[row].argmax(axis=1) + 2)
    assert agent.rng.bit_generator.state == rng.bit_generator.state
