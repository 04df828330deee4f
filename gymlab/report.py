"""Reporting: which runs are seeds of one experiment, the one "mean and 95% CI over seeds", the one table renderer.

Every command that reports a spread over seeds (``compare``, ``train --seeds``, sweep summaries)
computes it here, every table they print or write is rendered here, and ``compare --by config``
and TensorBoard's HParams tab pool runs by the same :func:`config_id`.

Why a percentile bootstrap over seeds, and not Student-t:

- It is what ``compare`` draws: a band of whole learning curves (the same resample of runs at
  every step), and the final value's CI uses the same resamples, so the table and the plot agree.
  One method everywhere means ``--seeds``, sweeps and ``compare`` print the same interval for the
  same numbers.
- Returns over seeds are rarely normal: a few seeds solve the task and a few never do (bimodal,
  bounded at the env's maximum). Student-t assumes normality and can put the interval beyond
  what any run reached (above CartPole's 500); a bootstrap interval lies inside the range of the
  runs' values. This is the choice of Agarwal et al., "Deep RL at the Edge of the Statistical
  Precipice" (NeurIPS 2021), whose ``rliable`` reports bootstrap CIs over runs.
- Its known weakness is few seeds: with ``n`` runs it cannot be wider than their range, and with
  two it is exactly ``[min, max]``. So it reports the spread that was seen, not a guarantee of
  95% coverage; with fewer than five seeds read it as such. With one seed there is no spread:
  :class:`MeanCI` says so instead of printing a zero-width interval.

The resampling is seeded (``seed=0`` unless given), so the same runs always print the same
figures.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from typing import Any, Literal

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table as RichTable

#: Resamples per bootstrap: the percentiles move by well under 1% of the spread between reruns.
BOOTSTRAP_SAMPLES = 2000
#: The confidence level every reported interval uses.
LEVEL = 0.95

Align = Literal["left", "right"]

#: Run-level keys that do not change what is learned: runs differing only in these pool together.
BOOKKEEPING_KEYS = frozenset(
    {
        "seed",
        "device",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "log_every",
        "video_every",
        "vectorization",
        "threads",
        "deterministic",
    }
)


# ---------------------------------------------------------------- which runs pool as seeds


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without seed and bookkeeping keys: what makes two runs the same experiment."""
    return {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}


def config_id(config: Mapping[str, Any]) -> str:
    """An 8-character hash of :func:`config_identity`, stable across processes and machines."""
    text = json.dumps(config_identity(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ---------------------------------------------------------------- mean and 95% CI over seeds


def bootstrap_counts(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` runs is drawn in each resample: (B, n) ints, each row summing to ``n``.

    Drawing the counts once and reusing them for several statistics (every step of a curve, and
    its final value) makes them one bootstrap of whole runs rather than independent ones.
    """
    draws = rng.integers(0, n, size=(samples, n))  # (B, n) run indices
    return np.stack([np.bincount(row, minlength=n) for row in draws])


def bootstrap_band(values: np.ndarray, counts: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over axis 0 of ``values`` (n, ...), given counts (B, n).

    Returns ``(low, high)``, each shaped like ``values[0]``: the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the B resampled means.
    """
    n = values.shape[0]
    means = np.tensordot(counts / n, values, axes=1)  # (B, ...) the mean of each resample
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return np.asarray(low), np.asarray(high)


@dataclass(frozen=True)
class MeanCI:
    """The mean of one number over ``n`` seeds and its 95% bootstrap CI (``low == high`` when ``n == 1``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_spread(self) -> bool:
        """Whether there are two or more seeds, so that the interval means something."""
        return self.n > 1

    def text(self, fmt: str = ".4g") -> str:
        """``7.5, 95% CI [3.2, 11] over 4 seeds``; ``7.5 (1 seed, no CI)`` for a single seed."""
        if not self.has_spread:
            return f"{self.mean:{fmt}} (1 seed, no CI)"
        return f"{self.mean:{fmt}}, {LEVEL:.0%} CI [{self.low:{fmt}}, {self.high:{fmt}}] over {self.n} seeds"

    def interval(self, fmt: str = ".4g") -> str:
        """``[3.2, 11]`` for a table cell; empty for a single seed."""
        return f"[{self.low:{fmt}}, {self.high:{fmt}}]" if self.has_spread else ""


def mean_ci(
    values: Iterable[float],
    *,
    seed: int | np.random.Generator = 0,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = LEVEL,
) -> MeanCI:
    """Mean over seeds and its percentile-bootstrap CI (see the module docstring for why bootstrap).

    ``values``: one finite number per seed (e.g. each run's final evaluation return). ``seed``
    makes the resampling reproducible (or pass a Generator to share one stream).
    Raises ValueError for no values or a non-finite one: a caller drops failed runs first.
    """
    x = np.asarray(list(values), dtype=np.float64)  # (n,)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"mean_ci needs finite values, got {x.tolist()}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    low, high = bootstrap_band(x, bootstrap_counts(len(x), samples, rng), level)
    return MeanCI(float(x.mean()), float(low), float(high), len(x))


def iqm(values: np.ndarray | Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (``int(n / 4)`` values trimmed from each end)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


# ---------------------------------------------------------------- number formatting


def human_steps(x: float) -> str:
    """Step counts for people: 1500 -> 1.5k, 2000000 -> 2M, 950 -> 950."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.4g}{unit}"
    return f"{x:.4g}"


def number(x: float | None, fmt: str = ".4g") -> str:
    """A table cell for a number: ``fmt``-formatted, empty for None, ``nan``/``inf`` spelled out."""
    if x is None:
        return ""
    return f"{x:{fmt}}" if math.isfinite(x) else str(x)


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    """A table of text cells, rendered by rich for a terminal, as plain text for logs, or as Markdown.

    Build it with a header, add rows of cells (None becomes an empty cell, anything else ``str``),
    then call :meth:`text`, :meth:`markdown` or :meth:`print`.
    """

    header: Sequence[str]
    title: str | None = None
    #: Per-column alignment; columns not listed are left-aligned.
    align: Sequence[Align] = ()
    rows: list[list[str]] = field(default_factory=list)

    def add_row(self, *cells: Any) -> None:
        """Append one row; it must have one cell per header column."""
        if len(cells) != len(self.header):
            raise ValueError(f"row has {len(cells)} cells for {len(self.header)} columns: {cells}")
        self.rows.append(["" if c is None else str(c) for c in cells])

    def to_rich(self, *, wrap: bool = True) -> RichTable:
        """The rich Table: header underlined by a rule, columns separated by spaces, no outer box."""
        table = RichTable(
            title=self.title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            header_style="bold",
        )
        for i, name in enumerate(self.header):
            justify = self.align[i] if i < len(self.align) else "left"
            table.add_column(name, justify=justify, no_wrap=not wrap)
        for row in self.rows:
            table.add_row(*row)
        return table

    def text(self) -> str:
        """Plain text, no colour and no wrapping (every row on one line), trailing spaces stripped.

        What goes to a log file, a pipe or a test: each row starts with its first cell.
        """
        buffer = StringIO()
        console = Console(file=buffer, width=100_000, no_color=True, force_terminal=False, highlight=False)
        console.print(self.to_rich(wrap=False), markup=False, emoji=False)
        return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table (pipes in cells escaped), title as a bold line above it."""
        header = [h.replace("|", "\\|") for h in self.header]
        rule = ["---:" if i < len(self.align) and self.align[i] == "right" else "---" for i in range(len(header))]
        lines = [f"**{self.title}**", ""] if self.title else []
        lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def print(self, console: Console | None = None) -> None:
        """Print to ``console`` (default: stdout): rich on a terminal, the plain :meth:`text` otherwise."""
        console = console or Console()
        if console.is_terminal:
            console.print(self.to_rich(), markup=False, emoji=False)
        else:
            console.file.write(self.text() + "\n")
            console.file.flush()
