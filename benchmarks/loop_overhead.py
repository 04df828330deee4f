"""Env steps per second of tabular Q-learning through gymlab's loop vs a minimal hand-written loop.

Both run in this process on the same env with the same hyperparameters, alternated, repeated;
the figure is the median ratio gymlab / hand-written. Evaluation, checkpoints and logging are
as a user gets them by default except that evaluation is kept to the end of the run.

    python benchmarks/loop_overhead.py [--env Taxi-v4] [--steps 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from gymlab.agent import load_agent_class
from gymlab.config import validate
from gymlab.loop import train

HP = {"learning_rate": 0.5, "gamma": 0.99, "epsilon_start": 1.0, "epsilon_final": 0.05, "exploration_fraction": 0.5}


def hand_written(env_id: str, steps: int, seed: int) -> float:
    """The smallest honest Q-learning loop: one env, scalar ε-greedy, in-place TD update."""
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    assert isinstance(obs_space, gym.spaces.Discrete) and isinstance(act_space, gym.spaces.Discrete)
    n_s, n_a = int(obs_space.n), int(act_space.n)
    q = np.zeros((n_s, n_a))
    rng = np.random.default_rng(seed)
    s, _ = env.reset(seed=seed)
    lr, gamma = HP["learning_rate"], HP["gamma"]
    decay_steps = HP["exploration_fraction"] * steps
    start = time.perf_counter()
    for t in range(steps):
        eps = max(HP["epsilon_final"], 1.0 - (1.0 - HP["epsilon_final"]) * t / decay_steps)
        a = int(rng.integers(n_a)) if rng.random() < eps else int(q[s].argmax())
        s2, r, term, trunc, _ = env.step(a)
        target = r if term else r + gamma * q[s2].max()
        q[s, a] += lr * (target - q[s, a])
        s = s2
        if term or trunc:
            s, _ = env.reset()
    return steps / (time.perf_counter() - start)


def through_gymlab(env_id: str, steps: int, seed: int) -> float:
    cls = load_agent_class("tabular_q")
    cfg = validate(
        {
            "agent": "tabular_q",
            "env": env_id,
            "steps": steps,
            "seed": seed,
            "eval_every": 0,
            "eval_episodes": 1,
            "checkpoint_every": 0,
            "hparams": HP,
        },
        cls,
    )
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        train(cfg, Path(d))
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Taxi-v4")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hand, lab, ratios = [], [], []
    for rep in range(args.repeats):
        h = hand_written(args.env, args.steps, rep)
        g = through_gymlab(args.env, args.steps, rep)
        hand.append(h)
        lab.append(g)
        ratios.append(g / h)
        print(f"repeat {rep}: hand-written {h:,.0f} steps/s, gymlab {g:,.0f} steps/s, ratio {g / h:.2f}")
    print(
        f"{args.env}, {args.steps:,} steps x {args.repeats}: hand-written median {statistics.median(hand):,.0f} "
        f"steps/s, gymlab median {statistics.median(lab):,.0f} steps/s; ratio median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
