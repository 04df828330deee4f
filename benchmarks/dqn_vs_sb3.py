"""gymlab DQN vs Stable-Baselines3 DQN: env steps per second and final greedy return.

Both train in this process with the same hyperparameters (RL Zoo's tuned CartPole-v1 settings,
or its Atari settings on PongNoFrameskip-v4 with ``--atari``), alternated seed by seed so that
load on the machine hits both alike. Per run: wall time of the whole training call, env steps
per second, and the mean greedy return over ``--eval-episodes`` episodes after training. The
summary gives the median (min, max) of the per-seed ratio gymlab / SB3 and of each side's figures.

gymlab's time includes what its loop does by default (TensorBoard logging, the final
evaluation and checkpoint), so the ratio is conservative; the evaluation's share is printed (it
dominates short Atari runs). SB3 is timed over ``model.learn``.

    pip install -e .[bench]          # stable-baselines3
    python benchmarks/dqn_vs_sb3.py [--seeds 5] [--steps 50000] [--threads 1]
    python benchmarks/dqn_vs_sb3.py --atari --device cuda --steps 200000 --seeds 1
    python benchmarks/dqn_vs_sb3.py --atari --device cuda --num-envs 16 ...       # compile=auto: the CUDA graph
    python benchmarks/dqn_vs_sb3.py --env MountainCar-v0 --only sb3 --seeds 5   # SB3 on another preset

``--env`` takes any shipped DQN preset's env (its hparams and budget, as ``gymlab train dqn ENV`` gets them):
run with ``--only sb3``, it says how Stable-Baselines3 itself spreads over seeds with RL Zoo's settings,
against which a single published run can be read.

``--compile`` and ``--batch-source`` set gymlab's hparams of those names (its defaults: auto, auto);
``--num-envs`` gymlab's envs (SB3 keeps one: its ``train_freq`` counts vector steps, so more envs
would change its replay ratio; gymlab's counts env steps, so its ratio stays).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gymlab import registry
from gymlab.agent import load_agent_class
from gymlab.config import resolve, validate
from gymlab.evaluation import evaluate
from gymlab.loop import train

# RL Zoo's Atari settings (n_timesteps 1e7 there; the budget here is --steps).
ATARI = {
    "learning_rate": 1e-4,
    "batch_size": 32,
    "buffer_size": 10_000,
    "learning_starts": 100_000,
    "target_update_interval": 1000,
    "train_freq": 4,
    "gradient_steps": 1,
    "exploration_fraction": 0.1,
    "exploration_final_eps": 0.01,
}


def run_gymlab(
    env_id: str, hp: dict[str, Any], steps: int, seed: int, device: str, episodes: int, atari: bool, num_envs: int = 1
):
    cls = load_agent_class("dqn")
    data = {
        "num_envs": num_envs,
        "agent": "dqn",
        "env": env_id,
        "seed": seed,
        "steps": steps,
        "device": device,
        "eval_every": 0,  # evaluate once, at the end, like the SB3 side
        "eval_episodes": episodes,
        "checkpoint_every": 0,
        "wrappers": ["atari"] if atari else [],
        "hparams": hp,
    }
    cfg = validate(data, cls)
    eval_seconds = [0.0]

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            eval_seconds[0] += time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(cfg, Path(tmp), evaluator=timed_evaluate)
        wall = time.perf_counter() - start
    # The wall time includes the final evaluation (SB3's does not); say how much it was.
    print(f"  (gymlab's wall time includes {eval_seconds[0]:.1f} s of final evaluation)", flush=True)
    return wall, float(result.last_eval if result.last_eval is not None else float("nan"))


SB3_KEYS = frozenset(
    {
        "learning_rate",
        "buffer_size",
        "learning_starts",
        "batch_size",
        "tau",
        "gamma",
        "train_freq",
        "gradient_steps",
        "target_update_interval",
        "exploration_fraction",
        "exploration_initial_eps",
        "exploration_final_eps",
        "max_grad_norm",
    }
)


def run_sb3(env_id: str, hp: dict[str, Any], steps: int, seed: int, device: str, episodes: int, atari: bool):
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecFrameStack

    # The keys both implementations share; gymlab's own (huber_delta 1, double_dqn off, ...) are at
    # the values that match SB3's fixed behaviour.
    kwargs = {k: v for k, v in hp.items() if k in SB3_KEYS}
    if hp.get("learning_rate_final") is not None:  # SB3's linear schedule: a function of the progress left
        start, end = hp["learning_rate"], hp["learning_rate_final"]
        kwargs["learning_rate"] = lambda progress_remaining: end + (start - end) * progress_remaining
    if hp.get("double_dqn"):
        print("  (SB3's DQN has no double DQN: its runs use plain DQN's target)", flush=True)
    if "net_arch" in hp:
        kwargs["policy_kwargs"] = {"net_arch": hp["net_arch"]}
    env: Any
    eval_env: Any
    if atari:
        env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed), n_stack=4)
        eval_env = VecFrameStack(
            make_atari_env(
                env_id,
                n_envs=1,
                seed=seed + 1000,
                wrapper_kwargs={"terminal_on_life_loss": False, "clip_reward": False},
            ),
            n_stack=4,
        )
        policy = "CnnPolicy"
    else:
        env, eval_env, policy = gym.make(env_id), gym.make(env_id), "MlpPolicy"
    model = DQN(policy, env, seed=seed, device=device, verbose=0, **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True)
    return wall, float(np.mean(mean_return))


def fmt(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="env steps (default 50k CartPole, 1M Atari)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    parser.add_argument("--device", default="cpu", help="cpu | cuda, the same for both")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--atari", action="store_true", help="PongNoFrameskip-v4 with RL Zoo's Atari settings")
    parser.add_argument("--only", choices=["gymlab", "sb3"], default=None, help="run one side only")
    parser.add_argument(
        "--compile", choices=["auto", "off", "torch", "cuda_graph"], default="auto", help="gymlab's compile"
    )
    parser.add_argument("--batch-source", default="auto", help="gymlab's batch_source: auto | host | pinned | device")
    parser.add_argument("--num-envs", type=int, default=1, help="gymlab's envs (SB3 keeps one)")
    parser.add_argument("--env", default="CartPole-v1", help="a shipped DQN preset's env (its hparams and budget)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    env_id = "PongNoFrameskip-v4" if args.atari else args.env
    preset = None if args.atari else resolve("dqn", env_id)
    hp = ATARI if preset is None else preset.hparams.model_dump()
    gymlab_hp = {**hp, "compile": args.compile, "batch_source": args.batch_source}
    steps = args.steps or (1_000_000 if preset is None else preset.run.steps)
    if args.atari:
        registry.resolve_env(env_id)  # registers the ALE ids
    print(
        f"{env_id}, {steps} steps, {args.seeds} seeds, device {args.device}, torch threads {args.threads}, "
        f"gymlab compile={args.compile} batch_source={args.batch_source} num_envs={args.num_envs}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads of "
        f"{__import__('os').cpu_count()} CPUs; torch {torch.__version__}, gymnasium {gym.__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        flush=True,
    )
    rows: dict[str, list[tuple[float, float]]] = {"gymlab": [], "sb3": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        order = ["gymlab", "sb3"] if seed % 2 == 0 else ["sb3", "gymlab"]  # alternate who goes first
        for side in order:
            if args.only and side != args.only:
                continue
            if side == "gymlab":
                wall, ret = run_gymlab(
                    env_id, gymlab_hp, steps, seed, args.device, args.eval_episodes, args.atari, args.num_envs
                )
            else:
                wall, ret = run_sb3(env_id, hp, steps, seed, args.device, args.eval_episodes, args.atari)
            rows[side].append((wall, ret))
            print(
                f"seed {seed} {side:6s}: {wall:7.1f} s, {steps / wall:8.0f} steps/s, eval return {ret:7.1f}", flush=True
            )

    for side, runs in rows.items():
        if runs:
            walls = [w for w, _ in runs]
            print(
                f"{side:6s}: wall {fmt(walls)} s, steps/s {fmt([steps / w for w in walls], 0)}, "
                f"eval return {fmt([r for _, r in runs])} [{', '.join(f'{r:.1f}' for _, r in runs)}]"
            )
    if rows["gymlab"] and rows["sb3"]:
        ratios = [s / g for (g, _), (s, _) in zip(rows["gymlab"], rows["sb3"], strict=True)]
        print(f"steps/s ratio gymlab/SB3 per seed: median {fmt(ratios, 2)}  [{', '.join(f'{r:.2f}' for r in ratios)}]")


if __name__ == "__main__":
    main()
