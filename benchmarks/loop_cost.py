"""The loop's own cost per env step, ``1/loop_rate - 1/engine_rate``, at several env counts, and its parts.

Two engines, each run alone beside gymlab in this process, alternated round by round:

* ``taxi``: tabular Q-learning on Taxi-v4. The engine is a hand-written loop over N copies (scalar
  ε-greedy, in-place TD update per copy, the copies stepped in turn); gymlab is ``tabular_q`` through
  :func:`gymlab.loop.train` with ``num_envs=N``.
* ``pong``: random actions on PongNoFrameskip-v4. The engine is ALE's C++ vector env stepped alone
  with the same preprocessing; gymlab is the ``random`` agent through ``train`` on ALE's native env
  (``wrappers: [atari]``: life-loss ends and clipping for the agent, whole-game statistics).

gymlab is timed **from its first env step** to its last periodic progress report: start-up (envs,
ROMs, the TensorBoard writer) and the final evaluation and checkpoint are left out, as the engine's
own set-up is. The cost must not grow with N: every per-step part is paid once per batch of N.

``--parts`` also profiles gymlab runs per engine and N with cProfile (a run's profile less a fifth as
long one's, so that start-up and the final evaluation cancel out) and splits the measured
(unprofiled) time per env step into parts: the engine's own work, the vector env, episode
statistics, the env guard (finite checks, clipping), the agent's act / observe / update, the loop's
own lines and chores (logging, progress). A builtin's or library function's time goes to the part
of whatever gymlab function called it. cProfile inflates call-heavy parts; the split is a guide, the
subtraction above is the figure.

    python benchmarks/loop_cost.py                          # both engines, N = 1 4 8 16, 3 rounds
    python benchmarks/loop_cost.py --engine taxi --steps 200000 --repeats 5 --parts
    PYTHONPATH=/path/to/older/checkout python benchmarks/loop_cost.py ...   # the same for an older tree
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from gymlab.agent import load_agent_class
from gymlab.config import validate
from gymlab.loop import train

TAXI_HP = {
    "learning_rate": 0.5,
    "gamma": 0.99,
    "epsilon_start": 1.0,
    "epsilon_final": 0.05,
    "exploration_fraction": 0.5,
}
PONG = "PongNoFrameskip-v4"
# Seeds whose evaluation seeds stay under 2**31 for up to 16 envs: trees before 52a279c could not
# evaluate on ALE's native env otherwise (its reset refused larger seeds), and "before" runs them.
SEEDS = [0, 3, 7]


class Clock:
    """A ``gymlab.console.Progress`` that notes (time, step) at each report: the loop's rate from its first step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def start(self, total: int, initial: int) -> None:
        self.marks.clear()

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        self.marks.append((time.perf_counter(), step))

    def phase(self, name: str, done: int, total: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass

    def rate(self) -> float:
        """Env steps/s from the first report (after the first step) to the last one before the final evaluation."""
        periodic = self.marks[:-1]  # the last report comes after the final evaluation and checkpoint
        (t0, s0), (t1, s1) = periodic[0], periodic[-1]
        return (s1 - s0) / (t1 - t0)


def gymlab_config(engine: str, n: int, steps: int, seed: int) -> Any:
    common = {"num_envs": n, "steps": steps, "seed": seed, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 0}
    if engine == "taxi":
        return validate(
            {"agent": "tabular_q", "env": "Taxi-v4", "hparams": TAXI_HP, **common}, load_agent_class("tabular_q")
        )
    return validate(
        {
            "agent": "random",
            "env": PONG,
            "wrappers": ["atari"],
            "vectorization": "native",
            **common,
            "eval_max_steps": 1,
        },
        load_agent_class("random"),
    )


def through_gymlab(engine: str, n: int, steps: int, seed: int, profile: cProfile.Profile | None = None) -> float:
    """gymlab's env steps/s, timed from its first env step."""
    clock = Clock()
    cfg = gymlab_config(engine, n, steps, seed)
    with tempfile.TemporaryDirectory() as tmp:
        if profile is not None:
            profile.enable()
        try:
            train(cfg, Path(tmp), progress=clock)
        finally:
            if profile is not None:
                profile.disable()
    return clock.rate()


def taxi_engine(n: int, steps: int, seed: int) -> float:
    """A hand-written Q-learning loop over ``n`` Taxi copies stepped in turn: env steps/s."""
    envs = [gym.make("Taxi-v4") for _ in range(n)]
    n_s, n_a = 500, 6
    q = np.zeros((n_s, n_a))
    rng = np.random.default_rng(seed)
    states = [int(env.reset(seed=seed + i)[0]) for i, env in enumerate(envs)]
    lr, gamma = TAXI_HP["learning_rate"], TAXI_HP["gamma"]
    decay_steps = TAXI_HP["exploration_fraction"] * steps
    final = TAXI_HP["epsilon_final"]
    rounds = steps // n
    start = time.perf_counter()
    for t in range(rounds):
        eps = max(final, 1.0 - (1.0 - final) * t * n / decay_steps)
        for i, env in enumerate(envs):
            s = states[i]
            a = int(rng.integers(n_a)) if rng.random() < eps else int(q[s].argmax())
            s2, r, term, trunc, _ = env.step(a)
            target = r if term else r + gamma * q[s2].max()
            q[s, a] += lr * (target - q[s, a])
            states[i] = int(env.reset()[0]) if term or trunc else s2
    return rounds * n / (time.perf_counter() - start)


def pong_engine(n: int, steps: int, seed: int) -> float:
    """ALE's vector env alone, the preprocessing gymlab's native path asks for, random actions: env steps/s."""
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(
        "pong",
        n,
        num_threads=min(n, os.cpu_count() or 1),
        max_num_frames_per_episode=108_000,
        repeat_action_probability=0.0,  # PongNoFrameskip-v4's: no sticky actions
        full_action_space=False,
        autoreset_mode="SameStep",
        reward_clipping=False,
        episodic_life=False,
        img_height=84,
        img_width=84,
        grayscale=True,
        stack_num=4,
        frameskip=4,
        maxpool=True,
        noop_max=30,
        use_fire_reset=True,
    )
    rounds = steps // n
    actions = np.random.default_rng(seed).integers(0, int(env.single_action_space.n), (rounds, n))  # type: ignore[attr-defined]
    env.reset(seed=seed)
    start = time.perf_counter()
    for t in range(rounds):
        env.step(actions[t])
    rate = rounds * n / (time.perf_counter() - start)
    env.close()
    return rate


ENGINES: dict[str, Callable[[int, int, int], float]] = {"taxi": taxi_engine, "pong": pong_engine}

# Where a profiled function's time goes: the first (path fragment, function name or "") that matches.
PARTS: list[tuple[str, str, str]] = [
    ("envs/atari.py", "", "vector env (gymlab)"),
    ("gymlab/vector.py", "", "vector env (gymlab)"),
    ("gymnasium/wrappers/common.py", "RecordEpisodeStatistics", "episode statistics"),
    ("gymnasium/vector/sync_vector_env.py", "", "vector env (Gymnasium)"),
    ("gymlab/envguard.py", "", "env guard: checks, clipping"),
    ("gymlab/envfault.py", "", "env guard: checks, clipping"),
    ("gymlab/finite.py", "", "env guard: checks, clipping"),
    ("agents/", "act", "agent: act"),
    ("agents/", "_draw", "agent: act"),
    ("agents/", "observe", "agent: observe"),
    ("agents/", "update", "agent: update"),
    ("gymlab/loop.py", "_record_episodes", "loop: episode records"),
    ("gymlab/evaluation.py", "episode_stats", "loop: episode records"),
    ("gymlab/loop.py", "_steps", "loop: its own lines, Transition"),
    ("gymlab/agent.py", "__init__", "loop: its own lines, Transition"),
    ("gymlab/", "", "loop: chores (logging, progress, checkpoints)"),
    ("tensorboard", "", "loop: chores (logging, progress, checkpoints)"),
    ("torch/utils/tensorboard", "", "loop: chores (logging, progress, checkpoints)"),
    ("gymnasium/envs/", "", "engine: the envs' own work"),
    ("gymnasium/wrappers/", "", "engine: the envs' own work"),
    ("gymnasium/core.py", "", "engine: the envs' own work"),
    ("ale_py", "", "engine: the envs' own work"),
]


def part_of(func: tuple[str, int, str]) -> str | None:
    path, _, name = func
    for fragment, fn, part in PARTS:
        if fragment in path and (not fn or fn in name):
            return part
    if name in ("<method 'send' of 'ale_py._ale_py.ALEVectorInterface' objects>",) or "ALEVector" in name:
        return "engine: the envs' own work"
    return None


def split(long: pstats.Stats, short: pstats.Stats) -> dict[str, float]:
    """Each part's share of the steps' time: a long run's profile less a short one's (start-up and the
    final evaluation cancel out); a function with no part gives its time to its callers' parts."""
    a: dict[Any, Any] = long.stats  # type: ignore[attr-defined]
    b: dict[Any, Any] = short.stats  # type: ignore[attr-defined]

    def tottime(func: Any) -> float:
        return max(0.0, a[func][2] - (b[func][2] if func in b else 0.0))

    def callers(func: Any) -> dict[Any, tuple[float, float]]:
        """caller -> (calls, time in ``func`` on its calls), the short run's taken off."""
        out = {}
        for caller, c in a[func][4].items():
            d = b[func][4].get(caller, (0, 0, 0.0, 0.0)) if func in b else (0, 0, 0.0, 0.0)
            out[caller] = (max(0.0, c[1] - d[1]), max(0.0, c[2] - d[2]))
        return out

    memo: dict[Any, dict[str, float]] = {}

    def dist(func: Any, depth: int = 0) -> dict[str, float]:
        if func in memo:
            return memo[func]
        part = part_of(func)
        out: dict[str, float] = {}
        if part is not None:
            out = {part: 1.0}
        elif func in a and depth < 20:
            calls = callers(func)
            # Each caller's share: the time spent in ``func`` on its calls (by call count where none was timed).
            index = 1 if sum(c[1] for c in calls.values()) else 0
            total = sum(c[index] for c in calls.values())
            for caller, c in calls.items():
                for p, share in dist(caller, depth + 1).items() if total else []:
                    out[p] = out.get(p, 0.0) + c[index] / total * share
        memo[func] = out or {"other": 1.0}
        return memo[func]

    shares: dict[str, float] = {}
    for func in a:
        for p, share in dist(func).items():
            shares[p] = shares.get(p, 0.0) + tottime(func) * share
    whole = sum(shares.values())
    return {p: v / whole for p, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def fmt(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["taxi", "pong", "both"], default="both")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (default: taxi 200k, pong 5k per env)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", action="store_true", help="also split gymlab's time per step into parts")
    args = parser.parse_args()
    engines = ["taxi", "pong"] if args.engine == "both" else [args.engine]
    print(f"load before: {os.getloadavg()[0]:.2f}; gymlab from {Path(sys.modules['gymlab'].__file__ or '').parent}")
    for engine in engines:
        budget: dict[int, int] = {n: args.steps or (200_000 if engine == "taxi" else 5_000 * n) for n in args.envs}
        loop: dict[int, list[float]] = {n: [] for n in args.envs}
        bare: dict[int, list[float]] = {n: [] for n in args.envs}
        for r in range(args.repeats):
            seed = SEEDS[r % len(SEEDS)]
            for n in args.envs:
                sides = ["gymlab", "engine"] if r % 2 == 0 else ["engine", "gymlab"]
                for side in sides:
                    if side == "gymlab":
                        loop[n].append(through_gymlab(engine, n, budget[n], seed))
                    else:
                        bare[n].append(ENGINES[engine](n, budget[n], seed))
            print(f"  {engine}: round {r + 1}/{args.repeats} done (load {os.getloadavg()[0]:.2f})", flush=True)
        runs = ", ".join(f"N={n}: {budget[n]:,}" for n in args.envs)
        print(f"\n{engine}: env steps per run {runs}; medians (min–max) over {args.repeats} rounds")
        print("| N | engine steps/s | gymlab steps/s | gymlab / engine | loop cost µs per env step |")
        print("|---|---|---|---|---|")
        for n in args.envs:
            ratio = [g / e for g, e in zip(loop[n], bare[n], strict=True)]
            cost = [1e6 / g - 1e6 / e for g, e in zip(loop[n], bare[n], strict=True)]
            print(f"| {n} | {fmt(bare[n])} | {fmt(loop[n])} | {fmt(ratio, 2)} | {fmt(cost, 2)} |")
        if args.parts:
            print(f"\n{engine}: gymlab's time per env step by part (cProfile shares × the median unprofiled µs/step)")
            table: dict[int, dict[str, float]] = {}
            for n in args.envs:
                long, short = cProfile.Profile(), cProfile.Profile()
                through_gymlab(engine, n, budget[n], SEEDS[0], long)
                through_gymlab(engine, n, budget[n] // 5, SEEDS[0], short)
                us = 1e6 / statistics.median(loop[n])
                table[n] = {p: share * us for p, share in split(pstats.Stats(long), pstats.Stats(short)).items()}
            names = sorted({p for t in table.values() for p in t}, key=lambda p: -table[args.envs[0]].get(p, 0.0))
            print("| part | " + " | ".join(f"N={n}" for n in args.envs) + " |")
            print("|---|" + "---|" * len(args.envs))
            for p in names:
                print(f"| {p} | " + " | ".join(f"{table[n].get(p, 0.0):.2f}" for n in args.envs) + " |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
