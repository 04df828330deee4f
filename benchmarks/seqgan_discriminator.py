"""Does SeqGAN's discriminator judge realism, or membership of the real data it trains on?

Two measurements, both with the agent's own code (``SeqGAN._nll_measure`` and
``SeqGAN._discriminator_diagnostics``, which every adversarial epoch of a run also logs as
``train/d_accuracy_real_train``, ``train/d_accuracy_real_heldout``, ``train/d_accuracy_fake`` and
``train/d_oracle_rank_corr``):

- ``runs``: load finished SeqGAN runs (their ``last.pt``) and measure their discriminator: the share
  of its training sequences it calls real, of held-out oracle sequences it calls real (never shown
  to it), of the generator's samples it calls fake, and the rank correlation over those samples of
  its verdict with the oracle's log-likelihood (what the generator's reward should carry);
- ``offline``: pre-train the MLE generator of a preset on one (tuning) seed, then train fresh
  discriminators of several shapes against it, 1,000 of the real sequences kept out of D's training
  for validation, and print the same figures for each: does *any* of them rank samples as the oracle does?

    python benchmarks/seqgan_discriminator.py runs runs/results/seqgan/SeqGen-v0-small/s{0,1,2,3,4}
    python benchmarks/seqgan_discriminator.py offline --seed 10 --variant "" --variant "filter_sizes=[1,2]"
    python benchmarks/seqgan_discriminator.py offline --seed 10 --variant "" env_kwargs.vocab_size=500

A variant is comma-separated ``key=value`` settings of the discriminator's hparams
(``filter_sizes``, ``num_filters`` as one count for every width, ``disc_learning_rate``,
``disc_pretrain_rounds``, ``disc_pretrain_epochs``, ``dropout``, ``l2_reg``, ``disc_embedding_dim``,
``disc_samples``); an empty one is the preset's own. ``arch=lstm`` (with ``hidden=H``, default 32)
swaps the CNN for a recurrent discriminator of the oracle's own shape, built here (not an agent
option): an embedding, an LSTM and a linear "real" logit on its last state, with the preset's dropout
and L2 on that layer. Trailing ``key=value`` arguments override the preset (e.g. its oracle world).

    python benchmarks/seqgan_discriminator.py offline --seed 10 --variant "arch=lstm" --variant "arch=lstm,hidden=64"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from gymlab.agents.seqgan import Discriminator, SeqGAN
from torch import nn

from gymlab.build import build
from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "configs" / "seqgan" / "SeqGen-v0-small.yaml"


class LSTMDiscriminator(nn.Module):
    """A recurrent discriminator: embedding, LSTM, dropout and one "real" logit on the last state."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)  # the layer the agent's L2 penalty reads

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logit of "real" per sequence, (B, T) -> (B,)."""
        states, _ = self.lstm(self.embedding(tokens))  # (B, T, H)
        return self.out(self.dropout(states[:, -1])).squeeze(1)

    prob_real = Discriminator.prob_real


def report(label: str, agent: SeqGAN) -> None:
    nll, nll_test, fake, per_sequence = agent._nll_measure()
    d = agent._discriminator_diagnostics(fake, per_sequence)
    print(
        f"{label}: NLL-oracle {nll:.3f} NLL-test {nll_test:.3f} | D says real to its training sequences "
        f"{d['d_accuracy_real_train']:.3f}, to held-out real {d['d_accuracy_real_heldout']:.3f}; fake to G's "
        f"samples {d['d_accuracy_fake']:.3f} | rank corr. with the oracle {d['d_oracle_rank_corr']:+.3f}",
        flush=True,
    )


def check_runs(runs: list[Path]) -> None:
    for run in runs:
        agent = build(resolve(None, None, run / "config.yaml")).agent
        assert isinstance(agent, SeqGAN)
        agent.load_state_dict(Checkpoint.read(run / "checkpoints" / "last.pt").agent_state)
        report(str(run), agent)


def parse_variant(text: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in filter(None, _split_top_level(text)):
        key, _, value = item.partition("=")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: ``filter_sizes=[1,2],dropout=0.5`` -> two items."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def offline(seed: int, variants: list[str], overrides: list[str], validation: int = 1_000) -> None:
    torch.set_num_threads(1)
    agent = build(resolve("seqgan", "SeqGen-v0", SMALL, overrides, seed=seed)).agent
    assert isinstance(agent, SeqGAN)
    start = time.perf_counter()
    for epoch in range(agent.cfg.mle_epochs):
        agent.run_phase("mle", epoch)
    print(f"seed {seed}, {' '.join(overrides) or 'the preset'}: MLE in {time.perf_counter() - start:.0f} s", flush=True)
    # D never trains on the last `validation` real sequences; the agent's held-out set stays for the report.
    everything = agent.real
    agent.real = everything[:-validation]
    base = agent.cfg.model_dump()
    for text in variants:
        settings = parse_variant(text)
        arch, hidden = settings.pop("arch", "cnn"), int(settings.pop("hidden", 32))
        if isinstance(settings.get("num_filters"), int):
            widths = settings.get("filter_sizes", base["filter_sizes"])
            settings["num_filters"] = [settings["num_filters"]] * len(widths)
        elif "filter_sizes" in settings and "num_filters" not in settings:
            settings["num_filters"] = [base["num_filters"][0]] * len(settings["filter_sizes"])
        agent.cfg = type(agent.cfg).model_validate({**base, **settings})
        cfg = agent.cfg
        torch.manual_seed(seed)
        if arch == "lstm":
            agent.discriminator = LSTMDiscriminator(agent.vocab_size, cfg.disc_embedding_dim, hidden, cfg.dropout)
        else:
            agent.discriminator = Discriminator(
                agent.vocab_size, cfg.disc_embedding_dim, cfg.filter_sizes, cfg.num_filters, cfg.dropout
            )
        agent.disc_opt = torch.optim.Adam(agent.discriminator.parameters(), lr=cfg.disc_learning_rate)
        start = time.perf_counter()
        for _ in range(cfg.disc_pretrain_rounds):
            agent._train_discriminator(cfg.disc_pretrain_epochs)
        with torch.no_grad():
            kept_out = (agent.discriminator.prob_real(everything[-validation:]) > 0.5).float().mean().item()
        took = time.perf_counter() - start
        report(f"  D {text or 'as the preset'} ({took:.0f} s; kept-out real {kept_out:.3f})", agent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="measure the discriminators of finished runs")
    runs.add_argument("runs", type=Path, nargs="+")
    off = sub.add_parser("offline", help="train discriminators of several shapes against one MLE generator")
    off.add_argument("--seed", type=int, default=10, help="a tuning seed (default 10)")
    off.add_argument("--variant", action="append", default=None, help="discriminator settings (repeatable)")
    off.add_argument("overrides", nargs="*", help="key=value overrides of the small preset")
    args = parser.parse_args()
    if args.command == "runs":
        check_runs(args.runs)
    else:
        offline(args.seed, args.variant or [""], args.overrides)


if __name__ == "__main__":
    main()
