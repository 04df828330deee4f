"""``gymlab train --seeds``: one run folder per seed, ``--workers`` at a time, and one summary.

The seeds are counted before any list is made and bounded (:data:`MAX_SEEDS`); the runs and their
summary share one :func:`gymlab.signals.multi_run_stop` scope, so a Ctrl-C or SIGTERM that lands
anywhere stops the runs at checkpoints and the summary counts the runs that really started.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from gymlab import report
from gymlab.build import preflight
from gymlab.config import MAX_SEED, MAX_SEEDS, resolve
from gymlab.errors import GymlabError, Interrupted
from gymlab.parallel import run_all
from gymlab.runner import RunOutcome, RunSpec
from gymlab.runs import RunFolder, resume_command
from gymlab.signals import multi_run_stop

#: One part of ``--seeds``: a seed or a range of them, in ASCII digits.
SEEDS_PART = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists combine (``"0-2,9"``).

    Counted before any list is made: more than :data:`MAX_SEEDS` seeds, or one above :data:`MAX_SEED`,
    is refused in one line (``0-99999999999`` would otherwise build a list for minutes).
    """
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        match = SEEDS_PART.fullmatch(part.strip()) if len(part) <= 40 else None
        if match is None:  # ASCII digits only: int() would also read '٣' as 3
            raise GymlabError(f"--seeds '{spec[:60]}': expected seeds >= 0 like 0-4 or 0,3,7")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise GymlabError(f"--seeds '{spec[:60]}': the range {part.strip()} runs backwards; write {last}-{first}")
        ranges.append((first, last))
    named = sum(last - first + 1 for first, last in ranges)
    if named > MAX_SEEDS:
        raise GymlabError(
            f"--seeds '{spec[:60]}' names {named:,} seeds; one command starts at most {MAX_SEEDS:,} runs: "
            f"split it (e.g. --seeds 0-{MAX_SEEDS - 1}, then {MAX_SEEDS}-{2 * MAX_SEEDS - 1})"
        )
    top = max(last for _, last in ranges)
    if top > MAX_SEED:
        raise GymlabError(f"--seeds '{spec[:60]}': seed {top:,} is above the largest seed, {MAX_SEED:,}")
    seen: set[int] = set()
    seeds: list[int] = []
    for first, last in ranges:
        for s in range(first, last + 1):
            if s in seen:  # two runs of one seed would be one run twice, in two folders
                raise GymlabError(f"--seeds '{spec[:60]}' names seed {s} twice; name each seed once")
            seen.add(s)
            seeds.append(s)
    return seeds


def train_seeds(
    positional: list[str],
    overrides: list[str],
    config: Path | None,
    seeds: list[int],
    workers: int,
    steps: int | None,
    device: str | None,
    run_dir: Path | None,
) -> None:
    """Train one run per seed, ``workers`` at a time in separate processes; one line per ended run."""
    agent, env = [*positional, None, None][:2]
    first_cfg = resolve(agent, env, config, overrides, seed=seeds[0], steps=steps, device=device, once=True)
    cfgs = [first_cfg.with_run(seed=s) for s in seeds]
    preflight(first_cfg)
    folders = [
        run_dir / f"s{s}" if run_dir is not None else RunFolder.default_path(Path("runs"), c)
        for s, c in zip(seeds, cfgs, strict=True)
    ]
    taken = [str(f) for f in folders if f.exists()]
    if taken:
        raise GymlabError(f"run folders already exist: {', '.join(taken)}; choose a new --run-dir")
    specs = [RunSpec(config=c, run_dir=f, tag=s) for s, c, f in zip(seeds, cfgs, folders, strict=True)]
    first = cfgs[0].run
    print(f"training {first.agent} on {first.env}: seeds {seeds}, {min(workers, len(specs))} at a time", flush=True)

    def done(outcome: RunOutcome) -> None:
        if outcome.status != "cancelled":  # runs never started are counted in the summary, not listed
            print(f"seed {outcome.spec.tag}: {outcome.describe()}", flush=True)

    start = time.perf_counter()
    # One scope for the runs and their summary: a signal landing anywhere in it is heard (never lost
    # between two runs, or to a run about to finish) and the summary below still gets written.
    with multi_run_stop() as stop:
        outcomes = run_all(specs, workers, on_done=done, stop=stop)
        evals = [o.last_eval for o in outcomes if o.ok and o.last_eval is not None]
        if evals:
            print(f"final eval return: {report.mean_ci(evals).text()}")
        elapsed = time.perf_counter() - start
        ran = [o for o in outcomes if o.status != "cancelled"]
        finished = sum(o.ok for o in outcomes)
        compare = _compare_them(outcomes, run_dir)
        print(f"{len(ran)} of {len(outcomes)} runs started, {finished} finished, in {elapsed:.1f} s{compare}")
    stopped = [o for o in outcomes if o.status in ("interrupted", "cancelled")]
    if stopped or stop.is_set():
        raise Interrupted(_seeds_interrupted(stopped))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise GymlabError(
            f"{len(failed)} of {len(outcomes)} seeds failed (first: seed {failed[0].spec.tag}: {failed[0].error})"
        )


def _compare_them(outcomes: list[RunOutcome], run_dir: Path | None) -> str:
    """``; compare them: gymlab compare …`` naming these runs' folders (their --run-dir), or "" when none was kept."""
    kept = [o.run_dir for o in outcomes if o.run_dir is not None and o.run_dir.is_dir()]
    if not kept:
        return ""
    named = [run_dir] if run_dir is not None else kept  # not all of runs/: other envs' and agents' runs too
    return f"; compare them: gymlab compare {' '.join(shlex.quote(str(p)) for p in named)}"


def _seeds_interrupted(stopped: list[RunOutcome]) -> str:
    """The line for an interrupted ``--seeds``: how many runs saved a checkpoint, which seeds saved nothing."""
    if not stopped:
        return "interrupted after every run had finished: nothing is left to continue"
    saved = [resume_command(o.run_dir) for o in stopped if o.checkpoint is not None and o.run_dir is not None]
    unstarted = [str(o.spec.tag) for o in stopped if o.checkpoint is None and o.run_dir is None]
    kept = [o.run_dir for o in stopped if o.checkpoint is None and o.run_dir is not None]  # stopped at once
    parts = [f"{len(saved)} runs saved a checkpoint" + (f"; continue each: {'; '.join(saved)}" if saved else "")]
    if unstarted:
        parts.append(f"seeds {_seed_ranges(unstarted)} saved nothing (start them again with --seeds)")
    if kept:
        folders = " ".join(shlex.quote(str(f)) for f in kept)
        parts.append(f"{folders} kept curves but no checkpoint (stopped at once): remove them to run those seeds again")
    return "interrupted: " + "; ".join(parts)


def _seed_ranges(seeds: list[str]) -> str:
    """Seeds as --seeds writes them: runs of consecutive seeds as ranges (``0-4,7``)."""
    numbers = sorted(int(s) for s in seeds)
    parts: list[str] = []
    first = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(first) if first == prev else f"{first}-{prev}")
        if n is not None:
            first = prev = n
    return ",".join(parts)
