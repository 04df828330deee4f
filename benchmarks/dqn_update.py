"""DQN's gradient step, eager against compiled (and the earlier flat-parameter path), side by side in one process.

Paths (``--paths``, the first is the reference):

* ``eager``: the agent as it runs with ``compile=off``: per-tensor parameters, Adam's fused kernel,
  ``torch.nn.utils.clip_grad_norm_(foreach=True)``.
* ``torch``: ``compile=torch``, the loss (forward and backward) through ``torch.compile``.
* ``cuda_graph``: ``compile=cuda_graph``, the whole step replayed from one CUDA graph (CUDA only).
* ``flat``: the earlier version, rebuilt here on an eager agent: every weight a view of one flat
  parameter (assigned through ``p.data``), one flat gradient zeroed and clipped by hand, fused Adam
  on the flat tensor.
* ``nstepN`` (e.g. ``nstep3``): eager with ``n_steps=N``: what the n-step sums in the replay memory
  cost per gradient step (its targets differ, so it is not checked against the reference's weights).
* ``auto``: ``compile=auto`` (the default): eager on the CPU, the CUDA graph on CUDA.
* ``floor``: the bare arithmetic of one step, no agent: the same network (the reference's initial
  weights), one batch drawn once into preallocated tensors, then per step ``zero_grad``, forward,
  Huber loss against fixed targets, backward and Adam (fused, as the agent's). No sampling, no
  target network, no clipping, no metrics.
* ``floor_clip``: ``floor`` plus the clipping alone (so ``floor_target`` − ``floor_clip`` is the
  target network's share).
* ``floor_target``: ``floor`` plus what the algorithm itself adds to the arithmetic, done as the
  agent does it: the target network's forward pass on a round's next observations (one pass for
  the round's G batches, under ``inference_mode``; the batch repeated G times) and the clipping of
  the gradient's global norm (the same arithmetic as ``clip_grad_norm_``). Still no sampling, no
  slicing, no metrics.
* ``sample``: the replay memory's side alone: drawing and gathering a round's batches onto the
  device (``DeviceBatches.sample``), per gradient step.

``--baseline FILE`` adds the path ``baseline``: an earlier ``agents/dqn.py`` loaded as a module of its
own and run eagerly (``git show 0e5d529:agents/dqn.py > /tmp/dqn_before.py``), so a change to the
step is timed before and after in one process, alternated, under the same load.

``--floor`` times ``floor,floor_target,eager``. With any floor among the paths the script prints, for
each whole step (every path that learns) and each floor, the ratio of the two blocks timed side by
side in a repeat: median (min, max) over the repeats.

All agents start from the same weights and replay memory and draw the same batches. CartPole (the
default): RL Zoo's preset, MLP [256, 256], batch 64, memory filled by random play, rounds of 128
gradient steps. ``--atari``: the Nature CNN on (4, 84, 84) uint8 stacks (random frames), RL Zoo's
Atari batch 32, rounds of 1 gradient step as ``train_freq`` 4 gives (``--steps`` rounds are timed
together). First each path's first round is timed alone (for compiled paths: the compile or
graph recording), and each path is checked to reach the reference's weights after a few steps.
Then rounds alternate between the paths (ABBA order for two), and each timed block divided by
its gradient steps gives ms per gradient step; the table shows median, min and max over the
repeats and each path's median against the reference's.

    python benchmarks/dqn_update.py                                    # eager vs torch.compile, CPU
    python benchmarks/dqn_update.py --paths eager,flat                 # the earlier comparison
    python benchmarks/dqn_update.py --device cuda --atari --paths eager,torch,cuda_graph --steps 200
    python benchmarks/dqn_update.py --paths eager,nstep3               # what 3-step returns cost
    python benchmarks/dqn_update.py --repeats 2 --steps 8              # a smoke run
    python benchmarks/dqn_update.py --floor --repeats 10               # whole step vs its floor, CartPole MLP
    python benchmarks/dqn_update.py --floor --atari --repeats 10       # ... and the Nature CNN at batch 32
    python benchmarks/dqn_update.py --paths floor,floor_target,baseline,eager --baseline /tmp/dqn_before.py
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
import types
from typing import Any

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


class Floor:
    """The bare arithmetic of ``agent``'s gradient step on one fixed batch (``floor``; ``floor_target`` with
    the target network's forward pass and the gradient clipping): the time a step cannot go below."""

    def __init__(self, agent: DQN, with_target: bool, per_round: int, with_clip: bool = False) -> None:
        self.with_target = with_target
        self.with_clip = with_clip or with_target
        self.per_round = per_round
        self.net = copy.deepcopy(agent.online)  # the same network and weights, its own parameters
        self.target = copy.deepcopy(agent.target)
        self.params = list(self.net.parameters())
        b = agent.cfg.batch_size
        batch = agent.batches.sample(b)
        self.obs, self.action, self.next_obs = batch.obs.clone(), batch.action.clone(), batch.next_obs.clone()
        with torch.no_grad():
            self.y = batch.reward + batch.discount * (1.0 - batch.terminated) * self.target(self.next_obs).max(1).values
        self.max_norm = agent.cfg.max_grad_norm
        self.delta = agent.cfg.huber_delta
        fused = agent.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(self.params, lr=agent.cfg.learning_rate, fused=fused or None)
        self._last = torch.zeros((), device=agent.device)
        self.next_round = self.next_obs.repeat(per_round, *(1,) * (self.next_obs.dim() - 1))  # (G·B, ...)

    def learn(self, steps: int) -> None:
        for g in range(steps):
            if self.with_target and g % self.per_round == 0:  # once per round, as the agent
                with torch.inference_mode():
                    self.target(self.next_round[: min(steps - g, self.per_round) * len(self.obs)])
            self.optimizer.zero_grad(set_to_none=True)
            q = self.net(self.obs).gather(1, self.action.unsqueeze(1)).squeeze(1)
            loss = torch.nn.functional.huber_loss(q, self.y, delta=self.delta)
            loss.backward()
            if self.with_clip:
                clip_arithmetic(self.params, self.max_norm)
            self.optimizer.step()
            self._last = loss

    def sync(self) -> None:
        self._last.item()


def clip_arithmetic(params: list[torch.Tensor], max_norm: float) -> None:
    """What ``clip_grad_norm_(foreach=True)`` computes, without its grouping: the global norm, then one scale."""
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


class SampleOnly:
    """The replay memory's side of a round alone: ``gradient_steps`` batches drawn and moved at once (``sample``)."""

    def __init__(self, agent: DQN) -> None:
        self.agent = agent
        self._last: torch.Tensor | None = None

    def learn(self, steps: int) -> None:
        self._last = self.agent.batches.sample(steps * self.agent.cfg.batch_size).reward

    def sync(self) -> None:
        if self._last is not None:
            self._last.sum().item()


def build(
    hparams: DQNConfig, transitions: list[Transition], device: str = "cpu", compile: str = "off", module: Any = None
) -> Any:
    """A DQN agent (``module``'s, else this checkout's) with the networks seeded alike and the memory filled."""
    obs = transitions[0].obs
    if obs.dtype == np.uint8:
        obs_space: gym.Space[Any] = gym.spaces.Box(0, 255, obs.shape[1:], np.uint8)
        act_space = gym.spaces.Discrete(6)
    else:
        obs_space, act_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2)
    ctx = Context(obs_space, act_space, 1, 0, torch.device(device), 1)
    torch.manual_seed(0)  # the networks' initial weights come from the global generator
    if module is None:
        agent = DQN(hparams.model_copy(update={"compile": compile}), ctx)
    else:
        agent = module.DQN(module.DQNConfig(**{**hparams.model_dump(), "compile": compile}), ctx)
    for t in transitions:
        agent.observe(t)
    return agent


def atari_play(steps: int, seed: int = 0) -> list[Transition]:
    """One long episode of random (4, 84, 84) uint8 frame stacks and random actions (no emulator needed)."""
    rng = np.random.default_rng(seed)
    stack = np.repeat(rng.integers(0, 256, (1, 84, 84), dtype=np.uint8), 4, axis=0)
    out = []
    no = np.zeros(1, bool)
    for _ in range(steps):
        nxt = np.concatenate([stack[1:], rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)])
        out.append(Transition(stack[None], rng.integers(0, 6, 1), rng.normal(size=1), nxt[None], no, no))
        stack = nxt
    return out


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


FLOORS = ("floor", "floor_clip", "floor_target", "sample")


def sync(agent: Any) -> None:
    """Wait for the device's arithmetic (a no-op on the CPU)."""
    if hasattr(agent, "_sums"):  # a DQN agent, this checkout's or a baseline's
        agent._sums.sum().item()
    else:
        agent.sync()


def ms_per_step(agent: Any, rounds: int, steps: int) -> float:
    """Wall time of ``rounds`` learning rounds of ``steps`` gradient steps, in ms per gradient step."""
    start = time.perf_counter()
    for _ in range(rounds):
        agent.learn(steps)
    sync(agent)
    return (time.perf_counter() - start) / (rounds * steps) * 1e3


def load_baseline(path: str) -> Any:
    """An earlier ``agents/dqn.py``, imported from ``path`` as a module of its own."""
    spec = importlib.util.spec_from_file_location("dqn_baseline", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


def make(path: str, hparams: DQNConfig, transitions: list[Transition], device: str, baseline: Any = None) -> Any:
    if path == "baseline":
        assert baseline is not None, "the baseline path needs --baseline FILE"
        return build(hparams, transitions, device, module=baseline)
    if path in FLOORS:
        agent = build(hparams, transitions, device)
        if path == "sample":
            return SampleOnly(agent)
        return Floor(agent, path == "floor_target", hparams.gradient_steps, with_clip=path == "floor_clip")
    if path == "flat":
        return make_flat(build(hparams, transitions, device))
    if path.startswith("nstep"):
        return build(hparams.model_copy(update={"n_steps": int(path[5:])}), transitions, device)
    return build(hparams, transitions, device, compile="off" if path == "eager" else path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed blocks per path")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps per block (CartPole 128, Atari 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (gymlab's default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--atari", action="store_true", help="Nature CNN, batch 32, rounds of 1 gradient step")
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated: eager, auto, torch, cuda_graph, flat, nstep3, floor, floor_clip, floor_target, sample "
        "(default eager,torch; with --floor floor,floor_target,eager)",
    )
    parser.add_argument("--floor", action="store_true", help="the whole step against its floors (see above)")
    parser.add_argument("--baseline", default=None, help="an earlier agents/dqn.py, timed as the path 'baseline'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    paths = (args.paths or ("floor,floor_target,eager" if args.floor else "eager,torch")).split(",")
    if args.atari:
        hparams = DQNConfig(learning_rate=1e-4, batch_size=32, buffer_size=10_000, frame_stack=4)
        transitions, per_round, steps = atari_play(3_000), 1, args.steps or 100
    else:
        resolved = resolve("dqn", "CartPole-v1").hparams
        assert isinstance(resolved, DQNConfig)
        hparams, transitions = resolved, random_play(5_000)
        per_round = steps = args.steps or 128
    rounds = steps // per_round

    # First round alone (compile / graph recording), then the same arithmetic: from the same weights
    # and batches every path ends near the reference's weights.
    agents: dict[str, Any] = {}
    for path in paths:
        agents[path] = make(path, hparams, transitions, args.device, baseline)
        start = time.perf_counter()
        agents[path].learn(per_round)
        sync(agents[path])
        print(f"{path}: first round ({per_round} gradient steps, compile included) {time.perf_counter() - start:.2f} s")
        agents[path].learn(4 * per_round if per_round == 1 else 3)
    learners = [path for path in paths if path not in FLOORS]
    for path in learners[1:]:
        ref = agents[learners[0]]
        if path.startswith("nstep"):
            continue  # other targets, other weights
        gap = max(
            (a - b).abs().max().item() for a, b in zip(ref.online_params, agents[path].online_params, strict=True)
        )
        print(f"same update: {path} vs {learners[0]}, largest weight difference {gap:.2e}")
        assert gap < 1e-3, gap

    for agent in agents.values():  # warm-up: allocations, kernels
        ms_per_step(agent, rounds, per_round)
    times: dict[str, list[float]] = {path: [] for path in paths}
    for r in range(args.repeats):
        for path in paths if r % 2 == 0 else paths[::-1]:  # ABBA: no path always runs first
            # A floor times its steps in one block (it has no rounds); the same number of steps.
            n, k = (1, rounds * per_round) if path.startswith("floor") else (rounds, per_round)
            times[path].append(ms_per_step(agents[path], n, k))

    net = "Nature CNN" if args.atari else f"MLP {hparams.net_arch}"
    print(
        f"\nDQN gradient step, {'Atari' if args.atari else 'CartPole'} ({net}, batch {hparams.batch_size}), "
        f"{args.repeats} blocks × {rounds} rounds × {per_round} steps per path, device {args.device}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    print(f"| path | median ms/step | min | max | median / {paths[0]} |")
    print("|---|---|---|---|---|")
    base = statistics.median(times[paths[0]])
    for path, values in times.items():
        median = statistics.median(values)
        print(f"| {path} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | {median / base:.3f} |")
    floors = [path for path in ("floor", "floor_clip", "floor_target") if path in times]
    if learners and floors:
        print("\nthe whole step against its floors, ratio per repeat (the two timed side by side):")
        print("| whole step | floor | median ratio | min | max |")
        print("|---|---|---|---|---|")
        for whole in learners:
            for path in floors:
                ratios = [w / f for w, f in zip(times[whole], times[path], strict=True)]
                median = statistics.median(ratios)
                print(f"| {whole} | {path} | {median:.3f} | {min(ratios):.3f} | {max(ratios):.3f} |")


if __name__ == "__main__":
    main()
