"""Learning curves across runs and seeds: grouped means with 95% bootstrap bands, and a summary table.

Runs and their curves are found and read by :mod:`gymlab.curves`; a run is grouped and labelled by
its config as read there (``config.yaml``, else the HParams its events hold).

How the numbers are made, for a group of ``n`` runs (seeds) of one metric:

- Alignment. Each run's curve is linearly interpolated onto the union of the steps its group
  logged (at most ``MAX_POINTS``), so runs with different logging intervals line up. Nothing is
  extrapolated: a group's curve spans only the steps *every* one of its runs reached (from the
  latest first point to the earliest last point). Where runs of a group, or different groups,
  stop at different steps, the legend and the table say how far each reaches.
- Band: a percentile bootstrap over seeds. Each of ``B`` resamples draws ``n`` runs with
  replacement (the same draw at every step, so a band is a band of whole curves) and takes their
  mean; the band is the 2.5th to 97.5th percentile of those means, step by step.
- Table: final value = each run's value at the group's last common step; its mean, its IQM
  (interquartile mean: the mean of the middle 50%, ``scipy.stats.trim_mean(x, 0.25)``) and a
  bootstrap 95% CI of the mean; AUC = the area under the mean curve divided by the span of
  steps, i.e. the mean value over training (comparable between groups of different lengths);
  steps to threshold = the first step where the mean curve reaches ``--threshold``, linearly
  interpolated between logged steps.

The bootstrap, the IQM and the table renderer are :mod:`gymlab.report`'s, shared with
``train --seeds`` and sweep summaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gymlab import report
from gymlab import tblog as tb
from gymlab.curves import RunCurve, find_runs, load_curves
from gymlab.errors import GymlabError, describe
from gymlab.outputs import refuse_existing, unwritable

GroupBy = Literal["agent", "env", "config"]
MAX_POINTS = 1000
PLOT_SUFFIXES = (".png", ".svg", ".pdf")

#: Axis labels for the tags every run writes.
METRIC_LABELS = {
    tb.EVAL_RETURN: "evaluation return (mean of greedy episodes)",
    tb.EPISODE_RETURN: "training episode return",
    tb.EPISODE_LENGTH: "training episode length",
    tb.EVAL_LENGTH: "evaluation episode length",
}


@dataclass
class GroupStats:
    """A group's aligned curves and summary, as plotted and tabulated."""

    label: str
    runs: list[Path]
    steps: np.ndarray  # (G,) the common grid
    curves: np.ndarray  # (n, G) each run interpolated onto the grid
    mean: np.ndarray  # (G,)
    low: np.ndarray  # (G,) 2.5th percentile of bootstrap means
    high: np.ndarray  # (G,) 97.5th percentile
    longest: int  # the last step of the longest run (> steps[-1] when runs differ in length)
    final: np.ndarray  # (n,) each run's value at steps[-1]
    final_mean: float
    final_iqm: float
    final_ci: tuple[float, float]
    auc: float
    to_threshold: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of runs (seeds) pooled."""
        return len(self.runs)

    @property
    def reach(self) -> int:
        """The last step every run of the group reached (where its curve ends)."""
        return int(self.steps[-1])


@dataclass
class Comparison:
    """What ``compare`` computed: the groups, the metric, and where the plot went."""

    metric: str
    groups: list[GroupStats]
    threshold: float | None
    out: Path | None
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- grouping


def group_key(config: dict[str, Any], by: GroupBy) -> str:
    """The key runs are pooled by: agent, env, or agent + env + config (all but seed and bookkeeping).

    ``config``: a run's :func:`gymlab.tblog.hparams_values`, which carry its config id.
    """
    if by == "agent":
        return str(config.get("agent"))
    if by == "env":
        return str(config.get("env"))
    return f"{config.get('agent')} · {config.get('env')} · {config.get('config_id')}"


def group_curves(curves: Sequence[RunCurve], by: GroupBy) -> dict[str, list[RunCurve]]:
    """Curves by group key, groups in order of first appearance."""
    groups: dict[str, list[RunCurve]] = {}
    for curve in curves:
        groups.setdefault(group_key(curve.config, by), []).append(curve)
    return groups


def one_run_per_seed(groups: dict[str, list[RunCurve]], by: GroupBy) -> list[str]:
    """Keep one run of each seed of a config (the one that reaches furthest); a note for each left out.

    Two runs of one config and seed are one experiment done twice (on the CPU, the same numbers): counted
    as two seeds they would narrow the band and the CI with no new evidence. Only ``config`` groups pool
    runs of one config; an ``agent`` or ``env`` group's seeds may belong to different configs.
    """
    if by != "config":
        return []
    notes = []
    for key, curves in groups.items():
        kept: dict[int, RunCurve] = {}
        for curve in curves:
            if curve.seed is None:
                continue
            other = kept.get(curve.seed)
            if other is None or curve.steps[-1] > other.steps[-1]:
                kept[curve.seed] = curve
        left = []
        for curve in curves:
            same = kept.get(curve.seed) if curve.seed is not None else None
            if same is None or same is curve:
                left.append(curve)
            else:
                notes.append(f"{curve.path}: seed {curve.seed} of its config again (as {same.path}); counted once")
        groups[key] = left
    return notes


def _shown(value: Any, peers: list[Any]) -> Any:
    """A float with the fewest significant digits (3 at least) that still tell its peers' values apart.

    A sweep draws values such as 0.0012520653814999472: in full they made the legend wider than the plot.
    """
    if not isinstance(value, float):
        return value
    floats = {v for v in peers if isinstance(v, float)}
    digits = next((d for d in range(3, 17) if len({f"{v:.{d}g}" for v in floats}) == len(floats)), 17)
    return f"{value:.{digits}g}"


def group_labels(groups: dict[str, list[RunCurve]], by: GroupBy, max_keys: int = 3) -> dict[str, str]:
    """Readable labels: for ``config`` grouping, agent · env plus the config keys that differ among its configs.

    Keys are compared only between groups of the same agent and env: the agent and env already tell
    the others apart, and one agent's keys are not another's to show as ``=None``. When more keys differ
    than ``max_keys``, a group shows first those where its value is rarest among its peers' (what sets it
    apart), then the config id.
    """
    if by != "config":
        return {key: key for key in groups}
    flats = {
        key: {k: v for k, v in runs[0].config.items() if k not in ("agent", "env", "config_id")}
        for key, runs in groups.items()
    }
    bases = {key: f"{runs[0].config.get('agent')} · {runs[0].config.get('env')}" for key, runs in groups.items()}
    labels = {}
    for key, runs in groups.items():
        peers = [flats[k] for k in groups if bases[k] == bases[key]]
        keys = sorted({k for f in peers for k in f})
        differing = [k for k in keys if len({repr(f.get(k)) for f in peers}) > 1]
        if len(differing) > max_keys:  # those that set this group apart first: where its value is rarest
            differing.sort(key=lambda k: sum(repr(f.get(k)) == repr(flats[key].get(k)) for f in peers))
        parts = [
            f"{k.rsplit('.', 1)[-1]}={_shown(flats[key].get(k), [f.get(k) for f in peers])}"
            for k in differing[:max_keys]
        ]
        if len(differing) > max_keys:
            parts.append(f"… [{runs[0].config.get('config_id')}]")
        labels[key] = " · ".join([bases[key], *parts])
    return labels


# ---------------------------------------------------------------- statistics


def common_grid(curves: Sequence[RunCurve], max_points: int = MAX_POINTS) -> np.ndarray:
    """The union of the runs' logged steps within the range all of them cover (thinned if huge)."""
    start = max(int(c.steps[0]) for c in curves)
    end = min(int(c.steps[-1]) for c in curves)
    union = np.unique(np.concatenate([c.steps for c in curves]))
    grid = union[(union >= start) & (union <= end)]
    if len(grid) > max_points:
        grid = np.unique(np.linspace(start, end, max_points).round().astype(np.int64))
    return grid


def align(curves: Sequence[RunCurve], grid: np.ndarray) -> np.ndarray:
    """Each run linearly interpolated onto ``grid`` (inside its own range): (n, G)."""
    return np.stack([np.interp(grid, c.steps, c.values) for c in curves])


def area_per_step(steps: np.ndarray, mean: np.ndarray) -> float:
    """Area under the curve divided by the span of steps: the curve's average over training."""
    if len(steps) < 2:
        return float(mean[0])
    return float(np.trapezoid(mean, steps) / (steps[-1] - steps[0]))


def steps_to_threshold(steps: np.ndarray, mean: np.ndarray, threshold: float) -> float | None:
    """First step where the curve reaches ``threshold``, interpolated between logged steps (None: never)."""
    above = np.flatnonzero(mean >= threshold)
    if not len(above):
        return None
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    s0, s1, m0, m1 = steps[i - 1], steps[i], mean[i - 1], mean[i]
    return float(s0 + (threshold - m0) / (m1 - m0) * (s1 - s0))


def summarize(
    label: str,
    curves: Sequence[RunCurve],
    threshold: float | None,
    rng: np.random.Generator,
    samples: int = report.BOOTSTRAP_SAMPLES,
) -> GroupStats:
    """Align a group's runs and compute its band and table row."""
    grid = common_grid(curves)
    if not len(grid):  # one run ends before another starts logging
        ranges = "; ".join(f"{c.path}: steps {int(c.steps[0]):,}–{int(c.steps[-1]):,}" for c in curves[:4])
        raise GymlabError(
            f"{label}: its runs share no logged steps ({ranges}), so no point of the curve is theirs together: "
            "compare them apart, or continue the shorter run (gymlab train --resume RUN)"
        )
    aligned = align(curves, grid)  # (n, G)
    counts = report.bootstrap_counts(len(curves), samples, rng)
    low, high = report.bootstrap_band(aligned, counts)
    final = aligned[:, -1]
    final_low, final_high = report.bootstrap_band(final, counts)
    mean = aligned.mean(axis=0)
    longest = max(int(c.steps[-1]) for c in curves)
    notes = []
    if longest > grid[-1]:
        short = sum(int(c.steps[-1]) < longest for c in curves)
        notes.append(
            f"{label}: curve ends at step {int(grid[-1]):,}, where its shortest run ends; "
            f"{len(curves) - short} of {len(curves)} runs go on to {longest:,} (not averaged beyond)"
        )
    return GroupStats(
        label=label,
        runs=[c.path for c in curves],
        steps=grid,
        curves=aligned,
        mean=mean,
        low=np.asarray(low),
        high=np.asarray(high),
        longest=longest,
        final=final,
        final_mean=float(final.mean()),
        final_iqm=report.iqm(final),
        final_ci=(float(final_low), float(final_high)),
        auc=area_per_step(grid, mean),
        to_threshold=None if threshold is None else steps_to_threshold(grid, mean, threshold),
        notes=notes,
    )


# ---------------------------------------------------------------- output


def summary_table(comparison: Comparison) -> report.Table:
    """The per-group table: seeds, how far the curve reaches, final mean, IQM and 95% CI, AUC, steps to threshold."""
    thr = comparison.threshold
    header = ["group", "seeds", "reaches", "final mean", "final IQM", "final 95% CI", "AUC/step"]
    if thr is not None:
        header.append(f"steps to {thr:g}")
    right: list[report.Align] = ["right"] * (len(header) - 1)
    table = report.Table(header, align=["left", *right])
    for g in comparison.groups:
        steps = report.human_steps
        reach = steps(g.reach) + (f" (longest {steps(g.longest)})" if g.longest > g.reach else "")
        row = [g.label, g.n, reach, f"{g.final_mean:.4g}", f"{g.final_iqm:.4g}"]
        ci = f"[{g.final_ci[0]:.4g}, {g.final_ci[1]:.4g}]" if g.n > 1 else ""  # one seed: no spread to show
        row += [ci, f"{g.auc:.4g}"]
        if thr is not None:
            row.append("not reached" if g.to_threshold is None else steps(g.to_threshold))
        table.add_row(*row)
    return table


def format_table(comparison: Comparison) -> str:
    """The per-group table as plain text (each row on one line, starting with the group's label)."""
    return summary_table(comparison).text()


def plot(comparison: Comparison, out: Path) -> Any:
    """Draw each group's mean curve and 95% band against env steps; save to ``out`` (png/svg/pdf).

    Ten colours, then the same ten dashed, dotted and dash-dotted: every group's line differs from every
    other's up to 40 groups. The legend sits below the axes, one row per entry, so it never covers a curve.
    """
    entries = len(comparison.groups) + (comparison.threshold is not None)
    # no pyplot: nothing global, no GUI backend; taller by a legend row per entry
    fig = Figure(figsize=(9, 5 + 0.2 * entries), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    styles = ["-", "--", ":", "-."]
    for i, g in enumerate(comparison.groups):
        color, style = colors[i % len(colors)], styles[i // len(colors) % len(styles)]
        longest = f", longest {report.human_steps(g.longest)}" if g.longest > g.reach else ""
        reach = f"to {report.human_steps(g.reach)}{longest}"
        seeds = f"{g.n} seed{'s' if g.n != 1 else ''}"
        marker = "o" if len(g.steps) <= 30 else None
        label = f"{g.label}  ({seeds}, {reach})"
        ax.plot(g.steps, g.mean, color=color, ls=style, lw=2, marker=marker, ms=4, label=label)
        if g.n > 1:
            ax.fill_between(g.steps, g.low, g.high, color=color, alpha=0.2, lw=0)
    if comparison.threshold is not None:
        _draw_threshold(ax, comparison.threshold)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: report.human_steps(x)))
    ax.set_xlabel("env steps")
    ax.set_ylabel(METRIC_LABELS.get(comparison.metric, comparison.metric))
    ax.set_title(f"{comparison.metric}: mean over seeds, shaded 95% bootstrap CI", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize=8, frameon=False, handlelength=3)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise GymlabError(_cannot_write(out, exc.strerror or describe(exc))) from None
    return fig


def _draw_threshold(ax: Any, threshold: float) -> None:
    """A dashed line at ``threshold``, the axes grown to show it, unless it lies far off the curves.

    The axes may grow to ten times the curves' scale (their span or their size, the larger), so a goal of 475
    shows above curves that reach 200. Farther off, only the legend names it: the curves are not squashed flat
    against one edge, and a threshold near the float limit cannot overflow matplotlib's tick arithmetic.
    """
    low, high = ax.get_ylim()  # what the curves span, with matplotlib's margins
    scale = max(high - low, abs(low), abs(high))
    label = f"threshold {threshold:g}"
    if max(high, threshold) - min(low, threshold) <= 10 * scale:
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=label)
    else:
        where = "above" if threshold > high else "below"
        ax.plot([], [], color="0.4", ls="--", lw=1, label=f"{label} (off the plot, far {where} the curves)")


def _cannot_write(out: Path, reason: str) -> str:
    return f"--out {out}: cannot write the plot there: {reason} (give a writable .png, .svg or .pdf path)"


def compare(
    patterns: Sequence[str],
    metric: str = tb.EVAL_RETURN,
    by: GroupBy = "config",
    out: Path | None = None,
    threshold: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Comparison:
    """Read, group, summarize and (when ``out`` is given) plot runs; see the module docstring."""
    if by not in ("agent", "env", "config"):
        raise GymlabError(f"--by must be agent, env or config, not '{by}'")
    if out is not None and out.suffix.lower() not in PLOT_SUFFIXES:
        raise GymlabError(f"--out {out}: the plot is written as .png, .svg or .pdf (by extension)")
    if out is not None:
        problem = unwritable(out)
        if problem is not None:
            raise GymlabError(_cannot_write(out, problem))
        refuse_existing(out, "--out", overwrite)  # a plot already there is replaced only when asked
    if threshold is not None and not math.isfinite(threshold):
        raise GymlabError("--threshold must be a finite number")
    runs = find_runs(patterns)
    curves, skipped = load_curves(runs, metric)
    groups = group_curves(curves, by)
    skipped += one_run_per_seed(groups, by)
    labels = group_labels(groups, by)
    rng = np.random.default_rng(seed)
    stats = [summarize(labels[key], members, threshold, rng) for key, members in groups.items()]
    result = Comparison(metric, stats, threshold, out, skipped)
    if out is not None:
        plot(result, out)
    return result
