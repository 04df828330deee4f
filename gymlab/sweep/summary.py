"""A sweep's summary: every trial best first (``summary.csv``, ``summary.md``) and the best config (``best.yaml``)."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gymlab.report import Table, mean_ci, number
from gymlab.sweep.spec import Sweep

if TYPE_CHECKING:
    import optuna

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
BEST_FILE = "best.yaml"

_STATE_ORDER = {"complete": 0, "pruned": 1, "interrupted": 2, "failed": 3}


@dataclass(frozen=True)
class TrialRow:
    """One line of the summary."""

    number: int
    state: str
    params: dict[str, Any]
    seeds: list[int]
    returns: list[float]
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    step: int | None
    run_dirs: list[str]
    error: str | None


def summarize(study: optuna.Study, sweep: Sweep) -> list[TrialRow]:
    """Every trial, best first: completed by return, then pruned, interrupted, failed."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        # written when the sweep ends: a trial still running then was stopped by Ctrl-C, and a resume continues it
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, "interrupted")
        returns = [float(x) for x in t.user_attrs.get("returns", [])]
        mean, step = t.value, None
        if state == "pruned" and t.intermediate_values:
            step = max(t.intermediate_values)
            mean = t.intermediate_values[step]
        low = high = None
        if state == "complete" and returns:
            ci = mean_ci(returns)
            low, high = (ci.low, ci.high) if ci.has_spread else (None, None)
        run_dirs = [str(d) for d in t.user_attrs.get("run_dirs", {}).values()]
        seeds = list(t.user_attrs.get("seeds", sweep.spec.seed_list()))
        error = t.user_attrs.get("error")
        rows.append(TrialRow(t.number, state, dict(t.params), seeds, returns, mean, low, high, step, run_dirs, error))
    sign = -1.0 if sweep.spec.direction == "maximize" else 1.0

    def key(row: TrialRow) -> tuple[int, float, int]:
        value = sign * row.mean if row.mean is not None and math.isfinite(row.mean) else math.inf
        return _STATE_ORDER[row.state], value, row.number

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    return number(value) if isinstance(value, float) else str(value)


def describe(params: Mapping[str, Any]) -> str:
    """``key=value, ...`` for event lines."""
    return ", ".join(f"{k.removeprefix('hparams.')}={_fmt(v)}" for k, v in params.items())


def _cells(rank: int, row: TrialRow, keys: Sequence[str]) -> list[str]:
    return [
        str(rank),
        str(row.number),
        row.state,
        *(_fmt(row.params.get(k, "")) for k in keys),
        " ".join(map(str, row.seeds)),
        number(row.mean, ".6g"),
        number(row.ci_low, ".6g"),
        number(row.ci_high, ".6g"),
        "" if row.step is None else str(row.step),
        row.error or "",
    ]


def table(rows: Sequence[TrialRow], sweep: Sweep) -> Table:
    """The summary table, best first (printed by the CLI, written as ``summary.md``)."""
    keys = list(sweep.space)
    header = ["rank", "trial", "state", *(k.removeprefix("hparams.") for k in keys)]
    header += ["seeds", "return_mean", "ci95_low", "ci95_high", "stopped_at", "error"]
    out = Table(header, align=["right", "right"])
    for rank, row in enumerate(rows, 1):
        out.add_row(*_cells(rank, row, keys))
    return out


def _write(path: Path, text: str) -> Path:
    """Write a file whole or not at all (an interrupt mid-write leaves the previous version)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_summary(rows: Sequence[TrialRow], sweep_dir: Path, sweep: Sweep) -> tuple[Path, Path]:
    """Write ``summary.csv`` (with run folders) and ``summary.md``; returns their paths."""
    summary = table(rows, sweep)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*summary.header, "returns", "run_dirs"])
    for cells, row in zip(summary.rows, rows, strict=True):
        writer.writerow([*cells, " ".join(f"{r:.6g}" for r in row.returns), " ".join(row.run_dirs)])
    title = f"# Sweep {sweep.name}: {sweep.spec.agent} on {sweep.spec.env}, {sweep.spec.method} search\n\n"
    metric = "final evaluation return" if sweep.spec.metric == "last_eval" else "best evaluation return"
    note = f"return_mean: mean {metric} over seeds; ci95: 95% bootstrap interval over seeds (gymlab.report).\n\n"
    csv_path = _write(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    md_path = _write(sweep_dir / SUMMARY_MD, title + note + summary.markdown())
    return csv_path, md_path


def write_best(rows: Sequence[TrialRow], sweep: Sweep, sweep_dir: Path) -> Path | None:
    """Write the best completed trial's resolved config as ``best.yaml`` (None: nothing completed)."""
    best = next((r for r in rows if r.state == "complete"), None)
    if best is None:
        return None
    config = sweep.trial_config(best.params, best.seeds[0] if best.seeds else 0)
    spread = ""
    if best.ci_low is not None and best.ci_high is not None:
        spread = f", 95% CI [{best.ci_low:.4g}, {best.ci_high:.4g}]"
    header = (
        f"# Best of sweep {sweep.name} ({sweep.source}): trial {best.number}, "
        f"return {best.mean:.4g} over seeds {best.seeds}{spread}.\n"
        f"# Train it with: gymlab train --config {sweep_dir / BEST_FILE}\n"
    )
    return _write(sweep_dir / BEST_FILE, header + yaml.safe_dump(config, sort_keys=False))
