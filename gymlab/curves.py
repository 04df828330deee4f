"""Learning curves of run folders: found by paths or globs, read from their TensorBoard events and configs.

Runs are read with TensorBoard's own ``EventAccumulator``, which also drops what a killed run logged after
its last checkpoint (the ``purge_step`` a resumed run writes), so a resumed curve has no doubled steps. A
run's config is its ``config.yaml``; a folder without one, the config its events' HParams summary holds (the
same view, :func:`gymlab.tblog.hparams_values`); only events without HParams leave the agent and env to the
folder names (``runs/<env>/<agent>/<run>``). :mod:`gymlab.compare` groups and summarises what this reads.
"""

from __future__ import annotations

import glob
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.metadata import PLUGIN_NAME as HPARAMS_PLUGIN  # whose summaries hold HParams
from tensorboard.util import tb_logging

from gymlab import tblog as tb
from gymlab.errors import GymlabError, describe
from gymlab.runs import EVENTS_GLOB, RunFolder, iter_runs, read_config
from gymlab.yamlfile import file_kind


@dataclass
class RunCurve:
    """One run's logged values of one metric, and its config as its HParams show it."""

    path: Path
    config: dict[str, Any]  # tblog.hparams_values: agent, env, identity keys as "a.b", config_id
    steps: np.ndarray  # (T,) int, increasing
    values: np.ndarray  # (T,) float
    seed: int | None = None  # from its config.yaml (None: a folder without one)


def find_runs(patterns: Sequence[str]) -> list[Path]:
    """Run folders named by paths or globs (:func:`gymlab.runs.iter_runs` of each match)."""
    found: list[Path] = []
    seen: set[Path] = set()  # each run once, however it is named (a, ./a, $PWD/a, a glob and a path)
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        runs = [run for m in matches if Path(m).exists() for run in iter_runs(Path(m))]
        if not runs:
            path = Path(pattern)
            what = (
                "matches nothing"
                if glob.has_magic(pattern) or not path.exists()
                else "is a file of no run folder"
                if path.is_file()
                else "is not a folder"
                if not path.is_dir()
                else "holds no runs"
            )
            raise GymlabError(f"'{pattern}' {what}: give run folders, a folder of runs, or a glob like 'runs/*/dqn/*'")
        for run in runs:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append(run)
    return found


def read_scalars(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a run as ``(steps, values)``, read with TensorBoard's EventAccumulator."""
    return read_events(run)[0]


def read_events(run: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any] | None]:
    """A run's scalars (as :func:`read_scalars`) and the HParams values it logged (None: none).

    Only regular events files are read: a FIFO would block the reader, a folder would crash it.
    """
    for events in run.glob(EVENTS_GLOB):
        try:
            mode = events.stat().st_mode
        except OSError as exc:
            raise GymlabError(f"cannot read {events}: {exc.strerror or describe(exc)}") from None
        if not stat.S_ISREG(mode):
            raise GymlabError(
                f"{events} is {file_kind(mode)}, not a TensorBoard events file: remove it, or leave {run} out"
            )
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every point
    # A run started from an older checkpoint logs its steps again from there: the reader drops the points past
    # the restart (the history the new run replaced), as TensorBoard shows it, and says so on stderr. That is
    # the design, not news for the user: its warning is kept off the console.
    logger = tb_logging.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        logger.setLevel(level)
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = np.array([e.step for e in events], dtype=np.int64)
        values = np.array([e.value for e in events], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], values[order])
    try:
        contents = acc.PluginTagToContent(HPARAMS_PLUGIN).values()  # each tag's first summary, as the tab shows
    except KeyError:  # no HParams logged
        contents = []
    found = (tb.read_hparams(content) for content in contents)
    return out, next((values for values in found if values is not None), None)


def run_config(run: Path, hparams: dict[str, Any] | None) -> tuple[dict[str, Any], int | None]:
    """How ``compare`` sees a run's config (:func:`gymlab.tblog.hparams_values`), and its seed, from ``config.yaml``.

    A folder without one: the ``hparams`` its events hold; without those, the agent and env its
    folder names give (:func:`gymlab.runs.read_config`); its seed is then unknown (None).
    """
    data = RunFolder(run).data()
    if data is None:
        return (hparams if hparams is not None else tb.hparams_values(read_config(run))), None
    seed = data.get("seed")
    return tb.hparams_values(data), seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def load_curves(runs: Sequence[Path], metric: str) -> tuple[list[RunCurve], list[str]]:
    """The metric's curve of every run that logged it, and a note for each run that did not."""
    curves: list[RunCurve] = []
    skipped: list[str] = []
    available: set[str] = set()
    for run in runs:
        scalars, hparams = read_events(run)
        available.update(scalars)
        if metric in scalars and len(scalars[metric][0]):
            steps, values = scalars[metric]
            config, seed = run_config(run, hparams)
            curves.append(RunCurve(run, config, steps, values, seed))
        elif scalars:
            skipped.append(f"{run}: no '{metric}' logged")
        elif any(run.glob(EVENTS_GLOB)):  # TensorBoard's reader skips what it cannot parse without a word
            skipped.append(f"{run}: no scalars could be read from its events file (damaged, or nothing logged yet)")
        else:
            skipped.append(f"{run}: no TensorBoard events file")
    if not curves:
        if not available:
            others = len(skipped) - 1
            more = f" (and {others} more run{'s' if others > 1 else ''} alike)" if others else ""
            raise GymlabError(f"no curve to compare: {skipped[0]}{more}")
        names = ", ".join(sorted(available))
        raise GymlabError(f"no run logged metric '{metric}'; available: {names}")
    return curves, skipped
