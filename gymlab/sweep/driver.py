"""The driver: one process owns the study, asks for trials, runs their seeds on a backend, and tells the results.

It writes the summary when the sweep ends or is interrupted.

A trial's seeds are normal run folders (``<sweep>/trial-0003-s1/``), each trained to the end of its budget by a
worker; pruning happens inside the runs (see :class:`~gymlab.sweep.study.PruneCheck`). The study's journal and
each trial's user attributes (``run_dirs``, finished ``seed_results``) make a sweep resumable: finished trials
are kept, trials left running continue from their runs' checkpoints, and new trials are asked until the budget.
"""

from __future__ import annotations

import contextlib
import math
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gymlab.errors import GymlabError
from gymlab.errors import describe as error_text
from gymlab.folderlock import LOCK_FILE, lock_folder
from gymlab.parallel import POLL_S
from gymlab.report import mean_ci
from gymlab.runner import RunOutcome, RunSpec
from gymlab.signals import multi_run_stop
from gymlab.sweep.backends import Backend, check_backend, make_backend
from gymlab.sweep.spec import Sweep, check_pruning
from gymlab.sweep.study import (
    JOURNAL_FILE,
    PRUNED_AT,
    STUDY_NAME,
    Ledger,
    PruneCheck,
    make_pruner,
    make_sampler,
    open_storage,
)
from gymlab.sweep.summary import TrialRow, describe, summarize, write_best, write_summary
from gymlab.yamlfile import file_kind, load_yaml

if TYPE_CHECKING:
    import optuna

SPEC_FILE = "sweep.yaml"


@dataclass(frozen=True)
class SweepResult:
    """How a sweep ended, and where its summary and best config are."""

    sweep_dir: Path
    rows: list[TrialRow]
    summary_csv: Path
    summary_md: Path
    best_yaml: Path | None
    interrupted: bool
    resumed: int


@dataclass
class _Active:
    """A trial in progress: its seeds' configs and run folders, and the seeds still running."""

    number: int
    params: dict[str, Any]
    pending: set[int] = field(default_factory=set)
    results: dict[int, Mapping[str, Any]] = field(default_factory=dict)  # seed -> run_dir, step, last/best_eval
    started: float = field(default_factory=time.perf_counter)


def open_study(sweep: Sweep, sweep_dir: Path) -> tuple[optuna.Study, Ledger, bool]:
    """Create the sweep folder's study, or load it to resume (refused if the folder holds another sweep)."""
    import optuna

    spec_path = sweep_dir / SPEC_FILE
    identity = sweep.identity()
    existed = spec_path.is_file()
    if existed:
        if load_yaml(spec_path, "sweep folder file") != identity:
            raise GymlabError(
                f"sweep folder {sweep_dir} holds a different sweep (its {SPEC_FILE} differs from "
                f"{sweep.source}); give a new --run-dir, or restore the sweep file to resume it"
            )
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump(identity, sort_keys=False))
    journal = sweep_dir / JOURNAL_FILE
    damaged = (
        f"sweep folder {sweep_dir}: its {JOURNAL_FILE} (every trial so far) is damaged"
        " ({}); restore it, or start the sweep in a new --run-dir"
    )
    with contextlib.suppress(FileNotFoundError):
        mode = journal.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block, a device (a link to /dev/zero) read without end
            raise GymlabError(damaged.format(f"it is {file_kind(mode)}, not a file"))
    pruner = make_pruner(sweep.spec.pruning, check_pruning(sweep.base_config(), sweep.spec.pruning))
    try:
        storage = open_storage(journal)
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            load_if_exists=True,
            direction=sweep.spec.direction,
            sampler=make_sampler(sweep),
            pruner=pruner,
        )
    except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:  # what Optuna's reader trips on
        raise GymlabError(damaged.format(error_text(exc))) from None
    asked = len(study.get_trials(deepcopy=False))
    if asked:  # resumed: the sampler goes on from where the sweep stopped, never from its first point again
        study.sampler = make_sampler(sweep, asked)
    return study, Ledger(study, storage), existed


class _Driver:
    """Asks Optuna for trials, feeds their seeds to the backend, and tells Optuna the results."""

    def __init__(
        self,
        sweep: Sweep,
        sweep_dir: Path,
        ledger: Ledger,
        backend: Backend,
        on_event: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        self.sweep, self.sweep_dir, self.ledger, self.backend = sweep, sweep_dir, ledger, backend
        self.stop = stop  # the sweep's multi_run_stop flag: a Ctrl-C or SIGTERM to this process, wherever it landed
        self.study = ledger.study
        self.on_event = on_event
        self.seeds = sweep.spec.seed_list()
        self.active: dict[int, _Active] = {}
        self.queue: list[RunSpec] = []
        self.in_flight = 0
        self.stopping = False  # a run was stopped by a signal: finish what runs, start nothing

    def run(self) -> bool:
        """Run trials until the budget is spent; True if stopped early by a signal.

        The signal is seen here, between two of the driver's own steps (never inside a journal write), or by a
        run, which then comes back interrupted. The caller stops the runs still going.
        """
        if self.stop.is_set():
            return True
        self._resume_running()
        while True:
            if self.stop.is_set():
                return True
            if not self.stopping:
                self._fill()
            if self.in_flight == 0:
                return self.stopping
            for result in self.backend.wait(POLL_S):
                self.in_flight -= 1
                self._on_result(result)

    # -- starting trials ------------------------------------------------------------------
    def _resume_running(self) -> None:
        """Continue trials a previous, interrupted driver left running, from their checkpoints."""
        import optuna

        for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if PRUNED_AT in frozen.user_attrs:  # pruned just before the interrupt: say so now
                self._prune(frozen.number, dict(frozen.params))
                continue
            done = {int(s): r for s, r in frozen.user_attrs.get("seed_results", {}).items()}
            active = self._start(frozen.number, dict(frozen.params), frozen.user_attrs.get("run_dirs"), skip=done)
            if active is None:
                continue
            active.results.update(done)
            self.on_event(f"trial {frozen.number} resumed ({describe(frozen.params)})")
            if not active.pending:
                self._finish(active)

    def _fill(self) -> None:
        """Keep the backend's slots busy: seeds of trials in progress first, then new trials."""
        import optuna

        while self.in_flight < self.backend.slots:
            if not self.queue:
                counted = self.study.get_trials(
                    deepcopy=False, states=[s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.WAITING]
                )
                if len(counted) >= self.sweep.trials:
                    return
                trial = self.study.ask()
                try:
                    params = {key: dim.suggest(trial, key) for key, dim in self.sweep.space.items()}
                except ValueError as exc:  # a value outside the space (an edited sweep)
                    self._fail(trial.number, f"cannot sample: {exc}")
                    continue
                self._start(trial.number, params, None)
                continue
            self.backend.submit(self.queue.pop(0))
            self.in_flight += 1

    def _start(
        self,
        number: int,
        params: dict[str, Any],
        run_dirs: Mapping[str, str] | None,
        skip: Mapping[int, Any] | None = None,
    ) -> _Active | None:
        try:
            configs = {seed: self.sweep.resolve(params, seed) for seed in self.seeds}
            every = check_pruning(configs[self.seeds[0]].to_dict(), self.sweep.spec.pruning)
        except GymlabError as exc:
            self._fail(number, str(exc))
            return None
        dirs = dict(run_dirs or {str(s): str(self.sweep_dir / f"trial-{number:04d}-s{s}") for s in self.seeds})
        self.ledger.set_attr(number, "run_dirs", dirs)
        self.ledger.set_attr(number, "seeds", self.seeds)
        runs = {}
        for seed in self.seeds:
            check = None
            if every is not None:
                journal = str(self.sweep_dir / JOURNAL_FILE)
                steps = configs[seed].run.steps
                check = PruneCheck(journal, number, seed, tuple(self.seeds), every, steps, self.sweep.spec.pruning)
            runs[seed] = RunSpec(configs[seed], Path(dirs[str(seed)]), mode="auto", on_eval=check, tag=(number, seed))
        active = _Active(number, params, pending={s for s in self.seeds if s not in (skip or {})})
        self.active[number] = active
        self.queue += [runs[s] for s in sorted(active.pending)]
        return active

    # -- results ----------------------------------------------------------------------------
    def _on_result(self, outcome: RunOutcome) -> None:
        number, seed = outcome.spec.tag
        active = self.active.get(number)
        if active is None or seed not in active.pending:
            return  # a sibling seed already failed this trial
        if outcome.status in ("interrupted", "cancelled"):
            # Ctrl-C or SIGTERM reached the workers: the run stopped at a checkpoint, which a
            # resumed sweep continues. Stop the sweep too (the driver may not have seen the signal).
            self.stopping = True
            return
        active.pending.discard(seed)
        if outcome.status == "failed":
            self._fail(number, f"seed {seed}: {outcome.error}")
            return
        result = {
            "run_dir": str(outcome.run_dir),
            "step": outcome.step,
            "last_eval": outcome.last_eval,
            "best_eval": outcome.best_eval,
        }
        active.results[seed] = result
        if outcome.status == "finished":  # this seed's run is complete: remember it for a resume
            done = dict(self.ledger.trial(number).user_attrs.get("seed_results", {}))
            done[str(seed)] = result
            self.ledger.set_attr(number, "seed_results", done)
        if not active.pending:
            self._finish(active)

    def _finish(self, active: _Active) -> None:
        number = active.number
        if PRUNED_AT in self.ledger.trial(number).user_attrs:
            self._prune(number, active.params)
            return
        returns = [r[self.sweep.spec.metric] for r in active.results.values()]
        if any(x is None for x in returns):
            self._fail(number, "the runs ended without an evaluation")
            return
        values = [float(x) for x in returns]
        if not all(math.isfinite(x) for x in values):
            self._fail(number, f"non-finite evaluation return over seeds: {values}")
            return
        ci = mean_ci(values)
        self.ledger.set_attr(number, "returns", values)
        self.ledger.set_attr(number, "seconds", round(time.perf_counter() - active.started, 2))
        self.study.tell(number, ci.mean)
        del self.active[number]
        self.on_event(
            f"trial {number} done: return {ci.text()} in {time.perf_counter() - active.started:.1f} s "
            f"({describe(active.params)})"
        )

    def _prune(self, number: int, params: dict[str, Any]) -> None:
        import optuna

        frozen = self.ledger.trial(number)
        step = frozen.user_attrs[PRUNED_AT]
        self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        self.active.pop(number, None)
        value = frozen.intermediate_values.get(step)
        shown = "" if value is None else f"return {value:.4g}; "
        self.on_event(f"trial {number} pruned at step {step:,} ({shown}{describe(params)})")

    def _fail(self, number: int, error: str) -> None:
        import optuna

        self.ledger.set_attr(number, "error", error)
        params = self.ledger.trial(number).params  # what it tried, as its done and pruned lines say
        self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        self.active.pop(number, None)
        self.queue = [r for r in self.queue if r.tag[0] != number]
        self.on_event(f"trial {number} failed{f' ({describe(params)})' if params else ''}: {error}")


def run_sweep(
    sweep: Sweep,
    sweep_dir: Path,
    *,
    backend: str | Backend = "local",
    address: str | None = None,
    on_event: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep in ``sweep_dir``; write its summary and best config there.

    Trials already finished in the folder's journal are kept, trials an interrupted run left
    half-done continue from their checkpoints, and new trials are asked until ``sweep.trials``.
    A trial that fails is recorded with its error; the others go on. Ctrl-C stops every run at
    a checkpoint and returns with ``interrupted=True`` (a second Ctrl-C while the summary is
    written propagates as KeyboardInterrupt). ``backend`` is ``local``, ``ray``, or any object
    following :class:`~gymlab.sweep.backends.Backend`.
    """
    emit = on_event or (lambda _: None)
    if isinstance(backend, str):
        check_backend(backend, address)  # before the folder is made or opened
    sweep_dir = sweep_dir.absolute()  # workers (Ray tasks on other nodes too) get paths that do not depend on a cwd
    _check_sweep_folder(sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GymlabError(
            f"cannot create sweep folder {sweep_dir}: {exc.strerror or exc}; choose another --run-dir"
        ) from None
    with lock_folder(sweep_dir, "sweep folder", "before resuming it"):  # one writer, as for a run folder
        return _run_locked(sweep, sweep_dir, backend, address, emit)


def _check_sweep_folder(sweep_dir: Path) -> None:
    """Refuse a folder that exists and holds anything but a sweep (a run, the user's files): nothing is written there.

    A sweep folder is recognised as a resume recognises it, by its ``sweep.yaml``; an empty folder (or
    one holding only the lock of an attempt stopped before ``sweep.yaml`` was written) may start a sweep.
    """
    if not sweep_dir.is_dir() or (sweep_dir / SPEC_FILE).is_file():
        return
    try:
        held = [p.name for p in sweep_dir.iterdir() if p.name != LOCK_FILE]
    except OSError as exc:
        raise GymlabError(f"cannot read {sweep_dir}: {exc.strerror or exc}; choose another --run-dir") from None
    if held:
        more = f" and {len(held) - 1} more" if len(held) > 1 else ""
        raise GymlabError(
            f"{sweep_dir} exists and is not a sweep folder; choose a new --run-dir "
            f"(it holds {held[0]!r}{more} but no {SPEC_FILE})"
        )


def _run_locked(
    sweep: Sweep, sweep_dir: Path, backend: str | Backend, address: str | None, emit: Callable[[str], None]
) -> SweepResult:
    # One scope for the study, the trials and the summary, as for `train --seeds`: a signal that lands anywhere
    # in it sets the flag, which the driver reads between its own steps (a second one raises KeyboardInterrupt).
    with multi_run_stop() as stop:
        study, ledger, existed = open_study(sweep, sweep_dir)
        resumed = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
        if isinstance(backend, str):
            workers = make_backend(backend, address, sweep.max_concurrent, sweep.spec.gpus_per_run)
        else:
            workers = backend
        # Said once the folder, the study and the workers are known to be usable: a refusal is a command's only line.
        capped = f" (the whole grid; {sweep.asked_trials} asked)" if sweep.asked_trials is not None else ""
        what = f"{sweep.spec.agent} on {sweep.spec.env}, {sweep.spec.method} search, {sweep.trials} trials{capped}"
        emit(f"sweep {sweep.name}: {what}; folder {sweep_dir}")
        if existed:
            emit(f"resuming sweep in {sweep_dir}: {resumed} finished trial(s) kept")
        driver = _Driver(sweep, sweep_dir, ledger, workers, emit, stop)
        interrupted = False
        try:
            interrupted = driver.run()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            workers.close(cancel=interrupted or stop.is_set())
        rows = summarize(study, sweep)
        csv_path, md_path = write_summary(rows, sweep_dir, sweep)
        best = write_best(rows, sweep, sweep_dir)
        interrupted = interrupted or stop.is_set()  # also a signal after the last trial ended
    return SweepResult(sweep_dir, rows, csv_path, md_path, best, interrupted, resumed)
