"""REINFORCE on CartPole-v1: gymlab's agent vs the classic PyTorch-examples recipe.

The figure is how many env steps, and how much wall time, each needs before the 0.05-smoothed
episode return (``running = 0.05 · return + 0.95 · running``, starting at 10, updated per finished
episode in the order episodes finish) first reaches 475. Both run in this process with one torch
thread, on the same seeds, alternating which goes first; each stops at the threshold or at the
step cap. gymlab runs its shipped preset (configs/reinforce/CartPole-v1.yaml: 8 envs, value
baseline) through the real loop; its steps are summed over the 8 envs.

The reference is the recipe of pytorch/examples' reinforcement_learning/reinforce.py, rewritten
here: policy 4-128-2 with dropout 0.6 (kept on while acting, as there), Adam 1e-2, γ 0.99,
returns standardised per episode, one update per episode, one env.

    python benchmarks/reinforce.py [--seeds 5] [--cap 300000] [--threshold 475]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymlab.agents.reinforce import Reinforce

from gymlab.agent import Transition
from gymlab.config import resolve
from gymlab.loop import train

ALPHA = 0.05  # smoothing of the running return
START = 10.0  # its initial value, as in the PyTorch example


def reference(seed: int, cap: int, threshold: float) -> tuple[int | None, float]:
    """The PyTorch-examples REINFORCE recipe; (env steps to threshold or None, seconds)."""
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    policy = torch.nn.Sequential(
        torch.nn.Linear(4, 128), torch.nn.Dropout(p=0.6), torch.nn.ReLU(), torch.nn.Linear(128, 2)
    )
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    eps = np.finfo(np.float32).eps.item()
    running, steps, start = START, 0, time.perf_counter()
    obs, _ = env.reset(seed=seed)
    while steps < cap:
        log_probs, rewards, done = [], [], False
        while not done:
            dist = torch.distributions.Categorical(logits=policy(torch.as_tensor(obs).unsqueeze(0)))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            obs, reward, terminated, truncated, _ = env.step(action.item())
            rewards.append(float(reward))
            done = terminated or truncated
            steps += 1
        g, returns = 0.0, list[float]()
        for r in reversed(rewards):
            g = r + 0.99 * g
            returns.insert(0, g)
        ret = torch.tensor(returns)
        ret = (ret - ret.mean()) / (ret.std() + eps)
        loss = (-torch.cat(log_probs) * ret).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        running = ALPHA * sum(rewards) + (1 - ALPHA) * running
        if running >= threshold:
            return steps, time.perf_counter() - start
        obs, _ = env.reset()
    return None, time.perf_counter() - start


class _Reached(Exception):
    """Raised from inside the loop to stop a run the moment the threshold is reached."""


class TimedReinforce(Reinforce):
    """gymlab's agent unchanged, plus a watch on the smoothed return of finished episodes."""

    threshold: float = 475.0

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.returns = np.zeros(ctx.num_envs)
        self.running = START
        self.steps = 0

    def observe(self, transition: Transition) -> None:
        super().observe(transition)
        self.returns += transition.reward
        self.steps += len(transition.reward)
        for i in np.flatnonzero(transition.terminated | transition.truncated):
            self.running = ALPHA * self.returns[i] + (1 - ALPHA) * self.running
            self.returns[i] = 0.0
            if self.running >= self.threshold:
                raise _Reached(self.steps)


def through_gymlab(seed: int, cap: int, threshold: float) -> tuple[int | None, float]:
    """gymlab's preset through the loop; (env steps to threshold or None, seconds)."""
    TimedReinforce.threshold = threshold
    cfg = resolve(
        f"{__name__}:TimedReinforce" if __name__ != "__main__" else "__main__:TimedReinforce",
        "CartPole-v1",
        Path(__file__).resolve().parents[1] / "configs" / "reinforce" / "CartPole-v1.yaml",
        [f"steps={cap}", "eval_every=0", "checkpoint_every=0", "eval_episodes=1"],
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        try:
            train(cfg, Path(d))
        except _Reached as reached:
            return int(reached.args[0]), time.perf_counter() - start
        return None, time.perf_counter() - start


def summary(values: Sequence[float | None], fmt: str) -> str:
    done = [v for v in values if v is not None]
    missed = len(values) - len(done)
    if not done:
        return "never reached"
    text = f"median {fmt.format(statistics.median(done))} ({fmt.format(min(done))}–{fmt.format(max(done))})"
    return text + (f", {missed} of {len(values)} runs hit the cap" if missed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cap", type=int, default=300_000, help="env steps after which a run gives up")
    parser.add_argument("--threshold", type=float, default=475.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[tuple[int | None, float]]] = {"reference": [], "gymlab": []}
    runners = {"reference": reference, "gymlab": through_gymlab}
    for seed in range(args.seeds):
        order = ["reference", "gymlab"] if seed % 2 == 0 else ["gymlab", "reference"]
        for name in order:
            steps, secs = runners[name](seed, args.cap, args.threshold)
            results[name].append((steps, secs))
            shown = f"{steps:>7d} steps" if steps is not None else f"  cap {args.cap} hit"
            print(f"seed {seed} {name:<9} {shown}  {secs:6.1f} s", flush=True)
    print(f"\nenv steps and wall time to a {ALPHA}-smoothed return of {args.threshold:g} on CartPole-v1:")
    for name, runs in results.items():
        steps_list = [s for s, _ in runs]
        secs_list = [t if s is not None else None for s, t in runs]
        print(f"  {name:<9} steps {summary(steps_list, '{:,.0f}')}; seconds {summary(secs_list, '{:.1f}')}")
    ratios = [
        (g[0] / r[0], g[1] / r[1])
        for g, r in zip(results["gymlab"], results["reference"], strict=True)
        if g[0] is not None and r[0] is not None
    ]
    if ratios:
        print(
            f"  gymlab / reference per seed: steps median {statistics.median(a for a, _ in ratios):.2f}, "
            f"wall time median {statistics.median(b for _, b in ratios):.2f}"
        )


if __name__ == "__main__":
    main()
