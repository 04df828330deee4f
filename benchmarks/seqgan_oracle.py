"""SeqGAN's synthetic-oracle experiment, measured on the quality–diversity plane.

Trains the SeqGAN preset and its controls on several seeds (real ``gymlab train`` runs, one after
another, each with its own TensorBoard curves), then reads their TensorBoard data and prints:

- NLL-oracle (quality: the oracle's per-token NLL of generated samples) and NLL-test (diversity:
  the generator's per-token NLL of held-out oracle samples) of the untrained generator, after MLE
  pre-training and after the adversarial epochs, beside the paper's NLL-oracle (Yu et al. 2017);
- the temperature baseline (Caccia et al. 2018): the MLE generator sampled at T = 1.0 … 0.5;
- for each adversarial run, the NLL-oracle the tempered MLE generator reaches at the same NLL-test
  (interpolated on its seed's temperature curve): a run beats "MLE with a tuned temperature" only if
  its NLL-oracle is lower than that.

and draws the figure (x = NLL-test, y = NLL-oracle; both lower is better)::

    python benchmarks/seqgan_oracle.py                     # small preset + its control, seeds 0 1 2, CPU
    python benchmarks/seqgan_oracle.py --controls shuffled constant --seeds 10 11
    python benchmarks/seqgan_oracle.py --reuse             # only read runs already in --runs-dir, redraw
    python benchmarks/seqgan_oracle.py --paper --seeds 0   # the paper's setting: needs a GPU (days on CPU)

Run folders: ``<runs-dir>/<preset>/<variant>/s<seed>`` (default runs-dir ``runs/seqgan_oracle``);
``seqgan`` is the preset as shipped, a control is the preset with ``hparams.reward=<control>``.
TensorBoard tags read: ``mle/nll_oracle_untrained``, ``mle/nll_oracle``, ``mle/nll_test``,
``temperature/{temperature,nll_oracle,nll_test}``, ``train/nll_oracle``, ``train/nll_test``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gymlab.config import configs_root
from gymlab.curves import read_scalars
from gymlab.yamlfile import load_yaml

PAPER = {"random": 10.310, "MLE": 9.038, "SeqGAN": 8.736}
#: What each control replaces the discriminator's Monte-Carlo action values by (agent hparam ``reward``).
CONTROLS = {
    "constant": "every action value 0.5 (with baseline: true this is exactly no update)",
    "shuffled": "the discriminator's MC values, rows permuted across the batch (same size, no information)",
}
MARKERS = {"seqgan": ("o", "tab:red"), "constant": ("s", "tab:gray"), "shuffled": ("^", "tab:green")}


def train_runs(preset: Path, variant: str, seeds: list[int], run_root: Path, device: str, threads: int) -> None:
    """``gymlab train`` the preset (``seqgan``) or a control on each seed missing from ``run_root/variant``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    for seed in seeds:
        run = run_root / variant / f"s{seed}"
        if (run / "checkpoints" / "last.pt").exists():
            print(f"  {variant} seed {seed}: reusing {run}")
            continue
        if run.exists():
            raise SystemExit(f"{run} exists but holds no finished run; remove it or pick another --runs-dir")
        cmd = [sys.executable, "-m", "gymlab", "train", "seqgan", "SeqGen-v0", "-c", str(preset)]
        cmd += ["--seed", str(seed), "--device", device, "--run-dir", str(run)]
        if variant != "seqgan":
            cmd.append(f"hparams.reward={variant}")
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"  {variant} seed {seed}: {time.perf_counter() - start:.0f} s -> {run}")


def last(scalars: dict[str, tuple[np.ndarray, np.ndarray]], tag: str) -> float:
    """The last logged value of ``tag``, NaN if it was never logged."""
    if tag not in scalars:
        return float("nan")
    return float(scalars[tag][1][-1])


@dataclass
class RunFigures:
    """One finished run's figures, read from its TensorBoard events."""

    random: float  # NLL-oracle of the untrained generator
    mle_oracle: float  # NLL-oracle and NLL-test right after MLE pre-training
    mle_test: float
    final_oracle: float  # ... and at the last adversarial measurement
    final_test: float
    curve: list[tuple[float, float, float]]  # (T, NLL-oracle, NLL-test) of the MLE generator at temperature T


def read_run(run: Path) -> RunFigures:
    """The figures of one finished run, from its TensorBoard events."""
    s = read_scalars(run)
    empty = (np.array([]), np.array([]))
    temps, oracle, test = (s.get(f"temperature/{k}", empty)[1] for k in ("temperature", "nll_oracle", "nll_test"))
    return RunFigures(
        random=last(s, "mle/nll_oracle_untrained"),
        mle_oracle=last(s, "mle/nll_oracle"),
        mle_test=last(s, "mle/nll_test"),
        final_oracle=last(s, "train/nll_oracle"),
        final_test=last(s, "train/nll_test"),
        curve=[(float(t), float(o), float(n)) for t, o, n in zip(temps, oracle, test, strict=True)],
    )


def tempered_oracle_at(curve: list[tuple[float, float, float]], nll_test: float) -> float | None:
    """NLL-oracle of the tempered MLE generator at the same NLL-test, interpolated on its curve.

    None where ``nll_test`` lies outside the curve's NLL-test range (no temperature of the sweep
    gives that diversity).
    """
    pts = sorted((n, o) for _, o, n in curve)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs or not xs[0] <= nll_test <= xs[-1]:
        return None
    return float(np.interp(nll_test, xs, ys))


def fmt(values: list[float]) -> str:
    """Median (min–max), or the one value."""
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def plot(results: dict[str, dict[int, RunFigures]], out: Path, title: str) -> None:
    """x = NLL-test, y = NLL-oracle: each seed's MLE temperature curve and the runs' final points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    first = next(iter(results.values()))
    for i, (seed, run) in enumerate(sorted(first.items())):
        curve = run.curve
        if not curve:
            continue
        ax.plot(
            [n for _, _, n in curve],
            [o for _, o, _ in curve],
            "-",
            color="tab:blue",
            alpha=0.6,
            lw=1.2,
            label="MLE, temperature 1.0 → 0.5" if i == 0 else None,
        )
        for t, o, n in curve:
            if seed == min(first):
                ax.annotate(f"T={t:g}", (n, o), textcoords="offset points", xytext=(4, 2), fontsize=7, color="tab:blue")
        ax.plot([curve[0][2]], [curve[0][1]], "D", color="tab:blue", ms=5, label="MLE (T = 1)" if i == 0 else None)
    for variant, runs in results.items():
        marker, color = MARKERS.get(variant, ("x", "black"))
        label = "SeqGAN (shipped preset)" if variant == "seqgan" else f"control: {variant} reward"
        xs = [r.final_test for r in runs.values()]
        ys = [r.final_oracle for r in runs.values()]
        ax.scatter(xs, ys, marker=marker, color=color, s=45, label=label, zorder=3)
    ax.set_xlabel("NLL-test (generator's NLL of held-out oracle data; lower = more diverse)")
    ax.set_ylabel("NLL-oracle (oracle's NLL of samples; lower = higher quality)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


def main() -> None:
    """Train (or reuse) the runs, print the tables, draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="the paper's setting (configs/seqgan/SeqGen-v0.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--controls",
        nargs="*",
        default=None,
        choices=sorted(CONTROLS),
        help="controls to run beside the preset (default: shuffled if the preset has a baseline, else constant)",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/seqgan_oracle"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per run (0: torch's default)")
    parser.add_argument("--reuse", action="store_true", help="train nothing: read the runs already there")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="figure path (default: none; the README's figure is benchmarks/seqgan_quality_diversity.png)",
    )
    args = parser.parse_args()
    name = "SeqGen-v0.yaml" if args.paper else "SeqGen-v0-small.yaml"
    preset = configs_root() / "seqgan" / name
    baseline = bool(load_yaml(preset).get("hparams", {}).get("baseline", False))
    controls = args.controls if args.controls is not None else (["shuffled"] if baseline else ["constant"])
    run_root = args.runs_dir / preset.stem
    variants = ["seqgan", *controls]
    print(f"setting: {preset.name} (baseline: {baseline}); variants: {variants}; seeds: {args.seeds}")
    for control in controls:
        print(f"  control {control}: {CONTROLS[control]}")
    if not args.reuse:  # seed by seed, so that a cut-short session still has matched pairs
        for seed in args.seeds:
            for variant in variants:
                train_runs(preset, variant, [seed], run_root, args.device, args.threads)
    results = {v: {seed: read_run(run_root / v / f"s{seed}") for seed in args.seeds} for v in variants}

    sg = results["seqgan"]
    print(f"\n| NLL-oracle (NLL-test) | paper | gymlab {preset.stem}, median (min–max) of {len(args.seeds)} seeds |")
    print("|---|---|---|")
    print(f"| random | {PAPER['random']:.3f} | {fmt([r.random for r in sg.values()])} |")
    print(
        f"| MLE | {PAPER['MLE']:.3f} | {fmt([r.mle_oracle for r in sg.values()])} "
        f"({fmt([r.mle_test for r in sg.values()])}) |"
    )
    for v, runs in results.items():
        label = "SeqGAN" if v == "seqgan" else f"control: {v}"
        paper = f"{PAPER['SeqGAN']:.3f}" if v == "seqgan" else "—"
        print(
            f"| {label} | {paper} | {fmt([r.final_oracle for r in runs.values()])} "
            f"({fmt([r.final_test for r in runs.values()])}) |"
        )

    temps = [t for t, _, _ in next(iter(sg.values())).curve]
    if temps:
        print("\n| MLE at temperature T | NLL-oracle | NLL-test |\n|---|---|---|")
        for i, t in enumerate(temps):
            o = [r.curve[i][1] for r in sg.values()]
            n = [r.curve[i][2] for r in sg.values()]
            print(f"| {t:g} | {fmt(o)} | {fmt(n)} |")

    print("\n| seed | variant | NLL-test | NLL-oracle | tempered MLE at that NLL-test | vs MLE (T=1) |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        for v, runs in results.items():
            r = runs[seed]
            at = tempered_oracle_at(r.curve, r.final_test)
            mle = results["seqgan"][seed]
            at_s = "outside the curve" if at is None else f"{at:.3f}"
            print(
                f"| {seed} | {v} | {r.final_test:.3f} | {r.final_oracle:.3f} | {at_s} | "
                f"{r.final_oracle - mle.mle_oracle:+.3f} |"
            )
    if args.plot:
        title = f"SeqGAN quality–diversity, {preset.stem}, seeds {', '.join(map(str, args.seeds))}"
        plot(results, args.plot, title)


if __name__ == "__main__":
    main()
