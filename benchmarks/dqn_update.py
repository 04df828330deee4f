"""DQN's gradient step on public torch against the earlier flat-parameter path, side by side in one process.

The agent (agents/dqn.py) steps with public torch: per-tensor parameters, Adam's fused kernel and
``torch.nn.utils.clip_grad_norm_(foreach=True)``. The earlier version moved every weight into one
flat parameter (the module's tensors became views, assigned through ``p.data``), zeroed and clipped
one flat gradient, and stepped Adam on the flat tensor; that path is rebuilt here, on an agent of
the same class, so the two differ only in those lines.

Both agents start from the same weights and replay memory (filled by random CartPole play) and draw
the same batches, with RL Zoo's CartPole preset: MLP [256, 256], batch 64, 128 gradient steps per
round. Rounds alternate between the paths (ABBA order), and each round's wall time divided by its
gradient steps gives ms per gradient step; the table shows median, min and max over the repeats,
and the ratio of medians. A first check confirms both paths compute the same update.

    python benchmarks/dqn_update.py                      # 30 repeats of 128 gradient steps, one thread
    python benchmarks/dqn_update.py --repeats 2 --steps 8   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import gymnasium as gym
import numpy as np
import torch
from gymlab.agents.dqn import DQN, DQNConfig

from gymlab.agent import Context, Transition
from gymlab.config import resolve


def flatten_parameters(params: list[torch.Tensor]) -> tuple[torch.nn.Parameter, torch.Tensor]:
    """The earlier path: ``params`` become views of one flat parameter, their gradients views of one flat buffer."""
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat_grad = torch.zeros_like(flat)
    flat.grad = flat_grad
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    return flat, flat_grad


def make_flat(agent: DQN) -> DQN:
    """Switch ``agent`` to the flat-parameter update: one flat gradient zeroed and clipped, fused Adam on it."""
    flat, flat_grad = flatten_parameters(agent.online_params)
    agent.optimizer = torch.optim.Adam([flat], lr=agent.cfg.learning_rate, fused=True)

    def optimize(self: DQN, loss: torch.Tensor) -> torch.Tensor:
        flat_grad.zero_()  # not set_to_none: backward accumulates into the flat views
        loss.backward()
        norm = torch.linalg.vector_norm(flat_grad)
        flat_grad.mul_(torch.clamp(self.cfg.max_grad_norm / (norm + 1e-6), max=1.0))
        self.optimizer.step()
        return norm

    agent.optimize = types.MethodType(optimize, agent)
    return agent


def build(hparams: DQNConfig, transitions: list[Transition]) -> DQN:
    ctx = Context(
        gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), 1, 0, torch.device("cpu"), 1
    )
    torch.manual_seed(0)  # the networks' initial weights come from the global generator
    agent = DQN(hparams, ctx)
    for t in transitions:
        agent.observe(t)
    return agent


def random_play(steps: int, seed: int = 0) -> list[Transition]:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        action = int(rng.integers(2))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        out.append(
            Transition(
                obs[None],
                np.array([action]),
                np.array([reward]),
                next_obs[None],
                np.array([terminated]),
                np.array([truncated]),
            )
        )
        obs = env.reset()[0] if terminated or truncated else next_obs
    return out


def ms_per_step(agent: DQN, steps: int) -> float:
    start = time.perf_counter()
    agent.learn(steps)
    agent._sums.sum().item()  # wait for the round's arithmetic (a no-op on the CPU)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per path")
    parser.add_argument("--steps", type=int, default=128, help="gradient steps per round (the preset's 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (gymlab's default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hparams = resolve("dqn", "CartPole-v1").hparams
    assert isinstance(hparams, DQNConfig)
    transitions = random_play(5_000)

    # Same arithmetic: from the same weights and batches, both paths end at the same weights.
    public, flat = build(hparams, transitions), make_flat(build(hparams, transitions))
    public.learn(4)
    flat.learn(4)
    gap = max((a - b).abs().max().item() for a, b in zip(public.online_params, flat.online_params, strict=True))
    print(f"same update: largest weight difference after 4 steps {gap:.2e}")
    assert gap < 1e-4, gap

    paths = {"public (agent)": build(hparams, transitions), "flat + private": make_flat(build(hparams, transitions))}
    for agent in paths.values():  # warm-up: allocations, kernels
        agent.learn(args.steps)
    times: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:  # ABBA: neither path always runs first
            times[name].append(ms_per_step(paths[name], args.steps))

    print(
        f"\nDQN gradient step, CartPole preset (MLP {hparams.net_arch}, batch {hparams.batch_size}), "
        f"{args.repeats} rounds × {args.steps} steps per path, {args.threads} thread(s), torch {torch.__version__}"
    )
    print("| path | median ms/step | min | max |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    ratio = statistics.median(times["flat + private"]) / statistics.median(times["public (agent)"])
    print(f"\nflat/public median time ratio: {ratio:.3f} (below 1: the flat path is faster)")


if __name__ == "__main__":
    main()
