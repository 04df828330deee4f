"""The overlap run key, on against off: env steps/s (from the first env step) and what the runs learn.

Each preset is trained with ``overlap=false`` and ``overlap=true`` on the same seeds, alternated
seed by seed in this process. Speed is timed from the first env step to the last progress report
before the final evaluation (start-up and evaluation left out); what the run learned is its final
greedy evaluation (the preset's ``eval_episodes`` on the run's evaluation seeds).

    python benchmarks/overlap.py                                   # DQN CartPole preset, 3 seeds
    python benchmarks/overlap.py --preset dqn/PongNoFrameskip-v4 --steps 20000 --set learning_starts=2000
    python benchmarks/overlap.py --preset dqn/PongNoFrameskip-v4 --device cuda --steps 200000   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_cost import Clock

from gymlab.config import resolve
from gymlab.loop import train


def one_run(agent: str, env: str, overrides: list[str], seed: int) -> tuple[float, float | None]:
    cfg = resolve(agent, env, None, overrides, seed=seed)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp), progress=clock)
    return clock.rate(), result.last_eval


def fmt(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dqn/CartPole-v1", help="agent/env of a shipped preset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = parser.parse_args()
    agent, env = args.preset.split("/")
    base = [f"device={args.device}", *args.set] + ([f"steps={args.steps}"] if args.steps else [])
    rates: dict[str, list[float]] = {"false": [], "true": []}
    evals: dict[str, list[float]] = {"false": [], "true": []}
    print(f"load before: {os.getloadavg()[0]:.2f}")
    for seed in range(args.seeds):
        for overlap in ["false", "true"] if seed % 2 == 0 else ["true", "false"]:
            rate, last_eval = one_run(agent, env, [*base, f"overlap={overlap}"], seed)
            rates[overlap].append(rate)
            evals[overlap].append(float("nan") if last_eval is None else last_eval)
            print(f"  seed {seed} overlap={overlap}: {rate:,.0f} env steps/s, final evaluation {last_eval}", flush=True)
    ratio = [on / off for on, off in zip(rates["true"], rates["false"], strict=True)]
    print(f"\n{args.preset} ({' '.join(base)}), seeds 0..{args.seeds - 1}, medians (min–max)")
    print("| overlap | env steps/s | final evaluation |")
    print("|---|---|---|")
    for overlap in ("false", "true"):
        print(f"| {overlap} | {fmt(rates[overlap], 0)} | {fmt(evals[overlap], 1)} |")
    print(f"on / off speed: {fmt(ratio, 2)}; load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
