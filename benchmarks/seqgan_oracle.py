"""SeqGAN's synthetic-oracle experiment: NLL-oracle of random, MLE and SeqGAN generators.

Prints the paper's table (Yu et al., AAAI 2017, Table 1) beside this lab's figures: the untrained
generator ("random"), the generator right after MLE pre-training ("MLE"), and after the
adversarial epochs ("SeqGAN"), as medians (min–max) over seeds, with wall time per run.

    python benchmarks/seqgan_oracle.py                # the small setting on CPU, 3 seeds
    python benchmarks/seqgan_oracle.py --paper        # the paper's setting (needs a GPU: hours on CPU)

The small setting is configs/seqgan/SeqGen-v0-small.yaml: a smaller oracle world than the paper's,
so its absolute figures are not comparable with the paper's; the ranking is what it checks.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from gymlab.agents.seqgan import SeqGAN

from gymlab import checkpoint
from gymlab.config import configs_root, load_yaml, validate
from gymlab.loop import train

PAPER = {"random": 10.310, "MLE": 9.038, "SeqGAN": 8.736}


def constant_action_values(policy, sequences, scorer, num_rollouts, generator=None):
    """The control: every token's action value 0.5, whatever the discriminator says."""
    return torch.full(sequences.shape, 0.5, device=sequences.device)


def run_once(preset: Path, seed: int, device: str, threads: int, constant: bool) -> tuple[dict[str, float], float]:
    if threads:
        torch.set_num_threads(threads)
    if constant:
        from gymlab.agents import seqgan

        seqgan.rollout_action_values = constant_action_values
    data = {"agent": "seqgan", "env": "SeqGen-v0", **load_yaml(preset), "seed": seed, "device": device}
    cfg = validate(data, SeqGAN.Config, source=str(preset))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp))
        wall = time.perf_counter() - start
        state = checkpoint.load(Path(tmp) / "checkpoints" / "last.pt")["agent_state"]["training"]
    history = state["nll_history"]
    last = {phase: nll for phase, _, nll in history}  # each phase's last measurement
    figures = {"random": last["untrained"], "MLE": last.get("mle", float("nan")), "SeqGAN": last["adversarial"]}
    return figures, wall


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="the paper's setting (configs/seqgan/SeqGen-v0.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--constant-reward", action="store_true", help="control: replace the MC rollout rewards by 0.5")
    args = parser.parse_args()
    name = "SeqGen-v0.yaml" if args.paper else "SeqGen-v0-small.yaml"
    preset = configs_root() / "seqgan" / name
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    control = " (CONTROL: constant rollout reward 0.5)" if args.constant_reward else ""
    print(f"setting: {preset.name}{control}; device: {device}; seeds: {args.seeds}; jobs: {args.jobs}")
    results: dict[str, list[float]] = {k: [] for k in PAPER}
    walls = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [
            pool.submit(run_once, preset, seed, device, args.threads, args.constant_reward) for seed in args.seeds
        ]
        outcomes = [f.result() for f in futures]
    for seed, (figures, wall) in zip(args.seeds, outcomes, strict=True):
        walls.append(wall)
        for key, value in figures.items():
            results[key].append(value)
        print(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()) + f"; {wall:.0f} s")
    print()
    lab = f"gymlab{control}, {preset.stem}, {device}, median (min–max) of {len(walls)}"
    print(f"| NLL-oracle | paper (Yu et al. 2017) | {lab} |")
    print("|---|---|---|")
    for key, paper in PAPER.items():
        print(f"| {key} | {paper:.3f} | {fmt(results[key])} |")
    print(f"| wall time per run | — | {fmt(walls)} s |")
    ranked = all(results["random"][i] > results["MLE"][i] > results["SeqGAN"][i] for i in range(len(walls)))
    print(f"\npaper's ranking random > MLE > SeqGAN reproduced on every seed: {ranked}")


if __name__ == "__main__":
    main()
