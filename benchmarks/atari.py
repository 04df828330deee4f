"""Atari throughput: env steps/s through gymlab's loop, and DQN training steps/s against Stable-Baselines3.

Two tables, each alternating its contenders round by round so that load on the machine hits
them alike; figures are medians (min-max) over ``--repeats`` rounds.

(a) Env steps/s (agent steps, 4 emulator frames each), random actions, at 1/4/8 envs:

* ``gymlab native``: ``gymlab train random <game>`` with ``wrappers: [atari]`` on ALE's C++ vector
  env (``vectorization: native``, the default), through the whole loop (TensorBoard, episode
  statistics, the life-loss and clipping layer); the final evaluation's time is left out;
* ``gymlab wrappers``: the same run on the Python wrapper stack (``vectorization: sync``);
* ``ALE vector env``: ``ale_py.vector_env.AtariVectorEnv`` stepped alone, same preprocessing: the
  native engine without gymlab's loop;
* ``raw ALE``: ``ale_py.ALEInterface`` per env, stepped in turn in this process, 4 ``act`` calls per
  step and no screen read: the emulator alone, the ceiling of one process.

(b) DQN on PongNoFrameskip-v4 with RL Zoo's Atari settings (``dqn_vs_sb3.ATARI``) but a small
``learning_starts`` for both, so the budget measures training: gymlab (native env, ``--num-envs``
copies; ``train_freq`` counts env steps summed over the envs, so the gradient steps per frame are
the same) against SB3's DQN on its ``AtariWrapper`` (one env, RL Zoo's setting), on the same
device, over ``--dqn-steps`` env steps. Both times are of training alone: gymlab's final
evaluation is left out (and its final checkpoint leaves the replay memory out), SB3 is timed over
``model.learn``. gymlab's time includes its start-up (envs, agent, TensorBoard writer, about a
second): use budgets of 10k steps or more.

    python benchmarks/atari.py                                  # both tables, this CPU
    python benchmarks/atari.py --table env --steps 20000 --repeats 5
    python benchmarks/atari.py --table dqn --device cuda --dqn-steps 100000 --num-envs 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dqn_vs_sb3 import ATARI, fmt, run_sb3

from gymlab import registry
from gymlab.agent import load_agent_class
from gymlab.config import validate
from gymlab.evaluation import evaluate
from gymlab.loop import train

GAME = "PongNoFrameskip-v4"


def loop_steps_per_second(
    agent: str,
    env_id: str,
    num_envs: int,
    vectorization: str,
    steps: int,
    seed: int,
    device: str = "cpu",
    hparams: dict[str, Any] | None = None,
) -> float:
    """Env steps/s of one ``gymlab train`` run, its final evaluation's time left out."""
    cls = load_agent_class(agent)
    cfg = validate(
        {
            "agent": agent,
            "env": env_id,
            "wrappers": ["atari"],
            "vectorization": vectorization,
            "num_envs": num_envs,
            "seed": seed,
            "steps": steps,
            "device": device,
            "eval_every": 0,
            "eval_episodes": 1,
            "checkpoint_every": 0,
            "log_every": max(1_000, steps // 10),
            "hparams": hparams or {},
        },
        cls,
    )
    evaluating = [0.0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating[0] += time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(cfg, Path(tmp), evaluator=timed)
        wall = time.perf_counter() - start - evaluating[0]
    return result.step / wall


def ale_vector_env(env_id: str, num_envs: int, steps: int, seed: int) -> float:
    """Steps/s of ALE's vector env alone (same settings as gymlab's native path), random actions."""
    from ale_py.vector_env import AtariVectorEnv

    game = gym.spec(env_id).kwargs["game"]
    env = AtariVectorEnv(
        game,
        num_envs,
        num_threads=min(num_envs, os.cpu_count() or 1),
        autoreset_mode="SameStep",
        reward_clipping=False,
        episodic_life=False,
    )
    rng = np.random.default_rng(seed)
    n_actions = int(env.single_action_space.n)  # type: ignore[attr-defined]
    actions = rng.integers(0, n_actions, (steps // num_envs + 1, num_envs))
    env.reset(seed=seed)
    start = time.perf_counter()
    for t in range(steps // num_envs):
        env.step(actions[t])
    rate = steps // num_envs * num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def raw_ale(env_id: str, num_envs: int, steps: int, seed: int) -> float:
    """Steps/s of bare emulators (``ALEInterface``), 4 frames per step, stepped in turn: no screen, no wrappers."""
    import ale_py
    from ale_py import roms

    game = gym.spec(env_id).kwargs["game"]
    ales = []
    for i in range(num_envs):
        ale = ale_py.ALEInterface()
        ale.setLoggerMode(ale_py.LoggerMode.Error)
        ale.setInt("random_seed", seed + i)
        ale.setFloat("repeat_action_probability", 0.0)
        rom = roms.get_rom_path(game)
        assert rom is not None, game
        ale.loadROM(rom)
        ales.append(ale)
    action_set = ales[0].getMinimalActionSet()
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, len(action_set), (steps // num_envs + 1, num_envs))
    start = time.perf_counter()
    for t in range(steps // num_envs):
        for i, ale in enumerate(ales):
            a = action_set[actions[t, i]]
            for _ in range(4):
                ale.act(a)
            if ale.game_over():
                ale.reset_game()
    return steps // num_envs * num_envs / (time.perf_counter() - start)


def env_table(env_id: str, steps: int, repeats: int, envs: list[int]) -> None:
    """Table (a): the four ways of stepping Atari, at each env count."""
    contenders: dict[str, Callable[[int, int], float]] = {
        "gymlab native": lambda n, seed: loop_steps_per_second("random", env_id, n, "native", steps, seed),
        "gymlab wrappers": lambda n, seed: loop_steps_per_second("random", env_id, n, "sync", steps, seed),
        "ALE vector env": lambda n, seed: ale_vector_env(env_id, n, steps, seed),
        "raw ALE": lambda n, seed: raw_ale(env_id, n, steps, seed),
    }
    names = list(contenders)
    rates: dict[tuple[str, int], list[float]] = {(name, n): [] for name in names for n in envs}
    for r in range(repeats):
        for n in envs:
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                rates[name, n].append(contenders[name](n, r))
        print(f"  round {r + 1}/{repeats} done", flush=True)
    print(f"\n(a) {env_id}: env steps/s (agent steps of 4 frames), random actions, {steps} steps per run")
    print("| envs | " + " | ".join(names) + " | native / wrappers |")
    print("|---|" + "---|" * (len(names) + 1))
    for n in envs:
        ratio = [a / b for a, b in zip(rates["gymlab native", n], rates["gymlab wrappers", n], strict=True)]
        cells = [fmt(rates[name, n], 0) for name in names]
        print(f"| {n} | " + " | ".join(cells) + f" | {fmt(ratio, 2)} |")


def dqn_table(env_id: str, steps: int, repeats: int, num_envs: int, device: str, learning_starts: int) -> None:
    """Table (b): DQN training steps/s, gymlab (native env) against SB3, alternated round by round."""
    hp = {**ATARI, "learning_starts": learning_starts}
    gymlab_rates: list[float] = []
    sb3_rates: list[float] = []
    for r in range(repeats):
        order = ["gymlab", "sb3"] if r % 2 == 0 else ["sb3", "gymlab"]
        for side in order:
            if side == "gymlab":
                # The final checkpoint would write the replay memory (71 MB): not training, so left out.
                gym_hp = {**hp, "save_replay": "never"}
                rate = loop_steps_per_second("dqn", env_id, num_envs, "native", steps, r, device, gym_hp)
                gymlab_rates.append(rate)
            else:
                wall, _ = run_sb3(env_id, hp, steps, r, device, 1, True)
                rate = steps / wall
                sb3_rates.append(rate)
            print(f"  round {r + 1} {side:6s}: {rate:8.0f} env steps/s", flush=True)
    ratios = [g / s for g, s in zip(gymlab_rates, sb3_rates, strict=True)]
    print(
        f"\n(b) DQN on {env_id}, RL Zoo's Atari settings with learning_starts {learning_starts}, {steps} env steps, "
        f"device {device}"
    )
    print("| | env steps/s | gradient steps/s |\n|---|---|---|")
    grad = steps - learning_starts
    print(
        f"| gymlab, {num_envs} native env(s) | {fmt(gymlab_rates, 0)} | "
        f"{fmt([g * grad / steps / ATARI['train_freq'] for g in gymlab_rates], 0)} |"
    )
    print(
        f"| SB3 DQN, AtariWrapper, 1 env | {fmt(sb3_rates, 0)} | "
        f"{fmt([s * grad / steps / ATARI['train_freq'] for s in sb3_rates], 0)} |"
    )
    print(f"ratio gymlab / SB3 per round: median {fmt(ratios, 2)}  [{', '.join(f'{x:.2f}' for x in ratios)}]")


def main() -> None:
    """Parse the arguments, say where this runs, print the tables asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=["env", "dqn", "both"], default="both")
    parser.add_argument("--env", default=GAME, help="a *NoFrameskip-v4 game")
    parser.add_argument("--steps", type=int, default=20_000, help="(a): env steps per run")
    parser.add_argument("--envs", default="1,4,8", help="(a): env counts")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each contender once per round)")
    parser.add_argument("--dqn-steps", type=int, default=50_000, help="(b): env steps per run")
    parser.add_argument("--learning-starts", type=int, default=1_000, help="(b): for both sides")
    parser.add_argument("--num-envs", type=int, default=1, help="(b): gymlab's native env copies")
    parser.add_argument("--device", default="cpu", help="(b): cpu | cuda, the same for both")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    registry.resolve_env(args.env)  # registers the ALE ids
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.2f} at start; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), gymnasium {gym.__version__}, "
        f"ale-py {__import__('ale_py').__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        flush=True,
    )
    if args.table in ("env", "both"):
        env_table(args.env, args.steps, args.repeats, [int(n) for n in args.envs.split(",")])
    if args.table in ("dqn", "both"):
        dqn_table(args.env, args.dqn_steps, args.repeats, args.num_envs, args.device, args.learning_starts)


if __name__ == "__main__":
    main()
