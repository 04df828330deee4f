"""D's scoring (``Discriminator.prob_real``): every width through its convolution, against the tables where they pay.

Scoring the Monte-Carlo rollouts, ``(T − 1)·R·B`` sequences every g-step, is D's forward pass alone on a
large batch. ``prob_real`` takes a width through a table of its taps (``agents/sequence_cnn.py: tap_tables``)
when the sequences' windows number at least ``TABLE_WINDOWS_PER_TOKEN`` times the vocabulary. This times
it both ways in one process, alternated call by call (the order reversed every other repeat), on the same
D and tokens, and checks they agree:

    python benchmarks/seqgan_scoring.py     # the learning test's, the small preset's and the paper's shapes
    python benchmarks/seqgan_scoring.py --shapes small --counts 64 256 1024 4096    # where the table starts to pay

``--counts`` scores that many sequences instead of one g-step's rollouts. One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from gymlab.agents import sequence_cnn
from gymlab.agents.sequence_cnn import Discriminator

# name: (vocab, length, embedding, filter widths, filters per width, one g-step's rollouts (T − 1)·R·B)
SHAPES = {
    "test": (50, 10, 64, [1, 2, 3, 4, 5], [32] * 5, 9 * 16 * 256),  # tests/test_seqgan.py's learning tests
    "small": (5000, 20, 64, [1, 2, 3, 4, 5, 8, 10, 15, 20], [50] * 9, 19 * 16 * 64),  # SeqGen-v0-small.yaml
    "paper": (
        5000,
        20,
        64,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20],
        [100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160],
        19 * 16 * 64,
    ),  # SeqGen-v0.yaml
}


def by_convolution(d: Discriminator, tokens: torch.Tensor) -> torch.Tensor:
    """prob_real with every width through its convolution (no width's windows reach an infinite threshold)."""
    kept = sequence_cnn.TABLE_WINDOWS_PER_TOKEN
    sequence_cnn.TABLE_WINDOWS_PER_TOKEN = float("inf")
    try:
        return d.prob_real(tokens)
    finally:
        sequence_cnn.TABLE_WINDOWS_PER_TOKEN = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--counts", nargs="+", type=int, help="sequences per call (default: one g-step's rollouts)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {device}, {args.repeats} repeats")
    print("| shapes | sequences | tables for widths | convolutions s | tables s | ratio (min–max) | max |Δp| |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        vocab, length, emb, widths, filters, rollouts = SHAPES[name]
        torch.manual_seed(0)
        d = Discriminator(vocab, emb, widths, filters, dropout=0.25).to(device)
        for count in args.counts or [rollouts]:
            tokens = torch.randint(0, vocab, (count, length), device=device)
            tables = sequence_cnn.tap_tables(d.embedding, list(d.convs), tokens.shape)
            chosen = [w for w, t in zip(widths, tables, strict=True) if t is not None]
            diff = (d.prob_real(tokens) - by_convolution(d, tokens)).abs().max().item()
            times: dict[str, list[float]] = {"conv": [], "table": []}
            for r in range(args.repeats):
                order = [("conv", by_convolution), ("table", Discriminator.prob_real)]
                for key, fn in order if r % 2 == 0 else order[::-1]:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn(d, tokens)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[key].append(time.perf_counter() - t0)
            ratios = [c / t for c, t in zip(times["conv"], times["table"], strict=True)]
            print(
                f"| {name} | {count:,} | {chosen or 'none'} | {statistics.median(times['conv']):.3f} "
                f"| {statistics.median(times['table']):.3f} | {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}–{max(ratios):.2f}) | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
