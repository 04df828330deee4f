"""A CNN that scores token sequences, SeqGAN's discriminator (after Kim 2014, with a highway layer).

Also a probe of what such a classifier has learned: realism, or membership of its training data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

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
        """D(Y): probability that each sequence is real, (M, T) -> (M,), without dropout.

        Scoring the rollouts, ``(T − 1)·R·B`` sequences a g-step, is most of what SeqGAN spends on D
        besides training it, so a width goes through a table where that is cheaper (:func:`tap_tables`):
        the same values as ``sigmoid(forward)`` in eval mode, in another order of float operations.
        """
        convs = cast("list[nn.Conv1d]", list(self.convs))
        tables = tap_tables(self.embedding, convs, tokens.shape)
        probs = []
        for i in range(0, len(tokens), chunk):
            x = tokens[i : i + chunk]
            embedded: torch.Tensor | None = None
            pooled = []
            for conv, table in zip(convs, tables, strict=True):
                if table is not None:
                    pooled.append(convolve_from_table(x, table, conv.kernel_size[0]).amax(dim=1))
                else:
                    if embedded is None:
                        embedded = self.embedding(x).transpose(1, 2)
                    pooled.append(conv(embedded).amax(dim=2))
            h = self.highway(torch.relu(torch.cat(pooled, dim=1)))
            probs.append(torch.sigmoid(self.out(h).squeeze(1)))
        return torch.cat(probs)


#: A width's table pays when its sequences' windows outnumber the vocabulary this many times over.
TABLE_WINDOWS_PER_TOKEN = 2


def tap_tables(embedding: nn.Embedding, convs: Sequence[nn.Conv1d], shape: torch.Size) -> list[torch.Tensor | None]:
    """Per convolution, the table that scores M sequences of length T (``shape``) faster, or None.

    A convolution of width k over embeddings is, at position t, ``b + Σ_j W_j e(x_{t+j})``, and
    ``W_j e(v)`` depends on the token v alone: the table holds it for every tap j and token v,
    (k·V, F) with row ``j·V + v`` (the bias b added to tap 0's rows), so that each window is a sum
    of k rows (:func:`convolve_from_table`).
    The table costs V·k·F·E multiply-adds once, the convolution M·(T − k + 1)·k·F·E: the table is
    taken where the windows, M·(T − k + 1), number at least ``TABLE_WINDOWS_PER_TOKEN`` times V.
    Measured (one thread; benchmarks/README.md, SeqGAN, "Scoring through tables"): 11.6× faster at the
    learning test's shapes, 3.0× at the small preset's, 1.9× at the paper's.
    """
    count, length = shape
    vocab = embedding.num_embeddings
    tables: list[torch.Tensor | None] = []
    for conv in convs:
        width = conv.kernel_size[0]
        if count * (length - width + 1) < TABLE_WINDOWS_PER_TOKEN * vocab:
            tables.append(None)
        else:
            table = torch.einsum("ve,fej->jvf", embedding.weight, conv.weight)  # (k, V, F)
            if conv.bias is not None:
                table[0] += conv.bias
            tables.append(table.reshape(width * vocab, -1))
    return tables


def convolve_from_table(tokens: torch.Tensor, table: torch.Tensor, width: int) -> torch.Tensor:
    """A width-``width`` convolution over the embeddings, from its table: (M, T) -> (M, T − width + 1, F)."""
    vocab = len(table) // width
    offsets = torch.arange(width, device=tokens.device) * vocab  # tap j's rows start at j·V
    windows = tokens.unfold(1, width, 1) + offsets  # (M, T − width + 1, width): row of each tap
    sums = nn.functional.embedding_bag(windows.reshape(-1, width), table, mode="sum")
    return sums.view(len(tokens), -1, table.shape[1])


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
