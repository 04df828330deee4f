"""A CNN that scores token sequences, SeqGAN's discriminator (after Kim 2014, with a highway layer).

Also a probe of what such a classifier has learned: realism, or membership of its training data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Highway(nn.Module):
    """y = τ·relu(W_h x) + (1 − τ)·x with gate τ = σ(W_τ x): carries or transforms each feature."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.transform = nn.Linear(size, size)
        self.gate = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, F)."""
        tau = torch.sigmoid(self.gate(x))
        return tau * torch.relu(self.transform(x)) + (1.0 - tau) * x


class Discriminator(nn.Module):
    """The paper's CNN discriminator, giving one logit of "real" per sequence.

    Convolutions of several widths over the token embeddings, max-over-time pooling, a highway
    layer and dropout.
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, filter_sizes: list[int], num_filters: list[int], dropout: float
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(embedding_dim, n, width) for width, n in zip(filter_sizes, num_filters, strict=True)
        )
        features = sum(num_filters)
        self.highway = Highway(features)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(features, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logit of "real" per sequence, (B, T) -> (B,)."""
        x = self.embedding(tokens).transpose(1, 2)  # (B, E, T): channels first for Conv1d
        # Max over time makes each filter a detector of its n-gram anywhere in the sequence. relu after
        # the max, not before: the same values, on a tensor T − k + 1 times smaller.
        pooled = [torch.relu(conv(x).amax(dim=2)) for conv in self.convs]  # each (B, n_i)
        h = self.highway(torch.cat(pooled, dim=1))  # (B, F)
        return self.out(self.dropout(h)).squeeze(1)

    @torch.no_grad()
    def prob_real(self, tokens: torch.Tensor, chunk: int = 4_096) -> torch.Tensor:
        """D(Y): probability that each sequence is real, (M, T) -> (M,), without dropout."""
        was_training = self.training
        self.eval()
        probs = torch.cat([torch.sigmoid(self(tokens[i : i + chunk])) for i in range(0, len(tokens), chunk)])
        self.train(was_training)
        return probs


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken by position; 0 if either is constant)."""
    rx, ry = (v.argsort().argsort().double() for v in (x, y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    if x.unique().numel() < 2 or y.unique().numel() < 2:
        return 0.0
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


@torch.no_grad()
def membership_or_realism(
    prob_real: Callable[[torch.Tensor], torch.Tensor],
    train: torch.Tensor,
    held_out: torch.Tensor,
    fake: torch.Tensor,
    fake_quality: torch.Tensor,
) -> dict[str, float]:
    """Whether a classifier of real vs generated sequences judges realism or membership of its training data.

    Its accuracy on real sequences it trains on, on held-out real ones (never shown to it) and on
    generated ones; and the rank correlation, over the generated ones, of its verdict with their
    true quality (e.g. the oracle's log-likelihood). One that knows its training sequences by heart
    calls held-out real ones fake and ranks the generated ones at random.
    """
    p_train, p_held, p_fake = (prob_real(x) for x in (train, held_out, fake))
    return {
        "d_accuracy_real_train": (p_train > 0.5).float().mean().item(),
        "d_accuracy_real_heldout": (p_held > 0.5).float().mean().item(),
        "d_accuracy_fake": (p_fake <= 0.5).float().mean().item(),
        "d_oracle_rank_corr": rank_correlation(p_fake, fake_quality.to(p_fake.device)),
    }
