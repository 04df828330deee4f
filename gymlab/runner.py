"""The one path from a config to a run folder and on to a finished or interrupted run.

``gymlab train``, ``train --seeds`` and sweeps all describe a run as a :class:`RunSpec` (plain,
picklable data, so it crosses into worker processes and Ray tasks) and hand it to :func:`run`
(in this process, with a progress display, raising :class:`~gymlab.errors.GymlabError` for bad
input) or :func:`execute` (in a worker: never raises, every ending is a :class:`RunOutcome`).

What a run does with its folder (the ownership rules of :class:`gymlab.runs.RunFolder`):

- ``mode="new"``: create the folder (``run_dir``, or a fresh default name under ``root``), write
  ``config.yaml``, take the folder's lock, train. With ``source`` (a checkpoint of another run,
  e.g. an older ``best.pt``) the new folder starts from that checkpoint, with the source run's
  TensorBoard events copied in, so its curve continues; the source folder is never written.
- ``mode="resume"``: take the folder's lock, then continue from its newest checkpoint. A named
  checkpoint older than the folder's newest is refused (it would rewrite later history).
- ``mode="auto"`` (sweeps, and a retry after a worker died): resume the folder if it has a
  checkpoint, start it if it does not exist, and replace a failed start (a folder with no
  checkpoint that no live process holds).

A run that fails or is interrupted before its first checkpoint removes the folder it created,
so retrying the same command works. A checkpoint written meanwhile is always kept.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gymlab.build import preflight
from gymlab.checkpoint import Checkpoint, step_of
from gymlab.config import Config
from gymlab.console import Progress
from gymlab.errors import GymlabError, Interrupted
from gymlab.folderlock import FolderLock
from gymlab.loop import train
from gymlab.runs import RunFolder, config_differences, load_run, resume_command
from gymlab.signals import StoppedAtOnce, held, sigterm_interrupts

Mode = Literal["new", "resume", "auto"]
Status = Literal["finished", "stopped", "interrupted", "failed", "cancelled"]
#: ``on_eval(step, mean_return) -> stop?``; must be picklable (a module-level function or a partial of one).
OnEval = Callable[[int, float], bool]


@dataclass(frozen=True)
class RunSpec:
    """One run to bring about, as picklable data.

    Attributes:
        config: the validated config (picklable: it crosses into workers and Ray tasks); for
            ``mode="resume"`` leave it None: the folder's own config is used.
        run_dir: the run folder (``new``: to create, None for a default name under ``root``;
            ``resume``: the folder or one of its checkpoints; ``auto``: required).
        mode: ``new``, ``resume`` or ``auto`` (see the module docstring).
        source: with ``mode="new"``, a checkpoint to start the new folder from.
        until: total env steps to reach (default: the config's ``steps``).
        stop_at: stop as if interrupted once this many steps are done (a checkpoint is saved).
        device: a resume may move the run to another device (the only config key it may change).
        on_eval: ``fn(step, mean_return)`` after each evaluation; True stops the run (status ``stopped``).
        trust: modules the user trusts for code named inside the run folder (``--trust``).
        threads: torch CPU threads in this process (None: leave as configured).
        root: where default-named folders go.
        tag: anything picklable the caller wants back in the outcome (a seed, a trial number).
        attempt: 1 for the first try; the pool retries a run whose worker died once, as attempt 2.

    """

    config: Config | None = None
    run_dir: Path | None = None
    mode: Mode = "new"
    source: Path | None = None
    until: int | None = None
    stop_at: int | None = None
    device: str | None = None
    on_eval: OnEval | None = None
    trust: tuple[str, ...] = ()
    threads: int | None = None
    root: Path = Path("runs")
    tag: Any = None
    attempt: int = 1


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended.

    ``status``: ``finished`` (reached its target), ``stopped`` (``on_eval`` stopped it, checkpoint
    saved), ``interrupted`` (a signal stopped it; ``checkpoint`` is what was saved, None if it
    stopped before its first one, in which case the folder it created was removed), or ``failed``
    (``error`` says why in one line), or ``cancelled`` (a pool stopped before it started it).
    """

    spec: RunSpec
    status: Status
    run_dir: Path | None = None
    step: int = 0
    start_step: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    checkpoint: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    episodes: int | None = None  # training episodes ended over the whole run (None: not known)
    phase: str | None = None  # interrupted in the agent's offline phases: where (``mle 3 of 120``)

    @property
    def no_episode_note(self) -> str | None:
        """What to say of a run that trained but ended no episode (an env that never ends); None otherwise."""
        if self.episodes != 0 or self.step == self.start_step:
            return None
        return (
            f"no training episode ended in {self.step:,} steps, so no return was logged; give more --steps if its "
            "episodes are longer, or, if they do not end by themselves, a time limit: env_kwargs.max_episode_steps=N"
        )

    @property
    def ok(self) -> bool:
        """Whether the run ended as asked (finished, or stopped by its ``on_eval``)."""
        return self.status in ("finished", "stopped")

    def describe(self) -> str:
        """One line for people: what happened, what was saved, how to go on."""
        where = f"; run: {self.run_dir}" if self.run_dir is not None else ""
        evals = "" if self.last_eval is None else f", final eval return {self.last_eval:.4g}"
        if self.status == "finished":
            return f"done: {self.step:,} steps{evals}{where}"
        if self.status == "stopped":
            return f"stopped by its evaluation callback at step {self.step:,}{evals}{where}"
        if self.status == "failed":
            return f"failed: {self.error}"
        if self.status == "cancelled":
            return "not started (the others were interrupted)"
        return interrupted_message(self)


def interrupted_message(outcome: RunOutcome) -> str:
    """What an interrupted run saved and how to continue it, in one line."""
    if outcome.checkpoint is None:
        if outcome.run_dir is not None:
            return (
                f"interrupted at once at step {outcome.step:,}, before its first checkpoint: {outcome.run_dir} keeps "
                "its curves but nothing to continue from; to train again, remove it or choose another --run-dir"
            )
        return "interrupted during start-up: nothing was saved and no run folder was left; run the same command again"
    where = f" (pre-training, {outcome.phase} done)" if outcome.phase is not None else ""
    return (
        f"interrupted at step {outcome.step:,}{where}: checkpoint {outcome.checkpoint}; "
        f"continue with: {resume_command(outcome.run_dir or outcome.checkpoint.parent.parent)}"
    )


def run(spec: RunSpec, progress: Progress | None = None) -> RunOutcome:
    """Bring ``spec`` about in this process: create or open its folder, lock it, train.

    Raises :class:`~gymlab.errors.GymlabError` for bad input (before anything is created, or after
    removing what this call created). A Ctrl-C or SIGTERM is an outcome, not an exception: status
    ``interrupted``, with the checkpoint saved (or none, during start-up, with nothing left behind).
    ``progress`` is a :class:`gymlab.console.Progress` display (not part of the spec: it is not picklable).
    """
    start = time.perf_counter()
    opened: Opened | None = None
    try:
        with held():  # a signal while the folder is made is taken once `opened` can clean it up
            opened = open_run(spec)
        return _train(spec, opened, progress, start)
    except (KeyboardInterrupt, Interrupted) as exc:  # during start-up, or a second Ctrl-C inside the loop
        return _interrupted(spec, opened, start, exc.step if isinstance(exc, StoppedAtOnce) else None)
    except BaseException as exc:
        if opened is not None:
            opened.abandon()
        config = opened.config if opened is not None else spec.config
        blamed = None if config is None else user_agent_error(exc, config.run.agent)
        if blamed is not None:
            raise blamed from None
        raise
    finally:
        if opened is not None:
            opened.lock.release()


def user_agent_error(exc: BaseException, agent: str) -> GymlabError | None:
    """One line for an exception raised inside a user's own agent code (``module:Class``), else None.

    A built-in agent's exception is gymlab's bug and keeps its traceback; one raised in the user's
    module names the function it came from. The run's checkpoints so far are kept, as for env errors.
    """
    if not isinstance(exc, Exception) or isinstance(exc, GymlabError) or ":" not in agent:
        return None
    module = sys.modules.get(agent.partition(":")[0])
    source = getattr(module, "__file__", None)
    inside = [f for f in traceback.extract_tb(exc.__traceback__) if source is not None and f.filename == source]
    if not inside:
        return None
    said = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return GymlabError(
        f"agent '{agent}': {inside[-1].name}() raised {type(exc).__name__}{': ' + said if said else ''}; "
        "the agent is at fault: fix it (checkpoints already written are kept)"
    )


def execute(spec: RunSpec) -> RunOutcome:
    """:func:`run` for a worker process or a Ray task: never raises; a failure is a ``failed`` outcome.

    SIGTERM (how the pool stops its workers) stops the run gracefully: before the loop starts it
    aborts the start-up, inside the loop it saves a checkpoint between two steps.
    """
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    previous = sigterm_interrupts()
    try:
        return run(spec)
    except GymlabError as exc:
        return RunOutcome(spec, "failed", spec.run_dir, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # a crashing run is reported, never allowed to stop the others
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        error = f"{type(exc).__name__}: {exc} ({where})"
        return RunOutcome(spec, "failed", spec.run_dir, error=error, seconds=time.perf_counter() - start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@dataclass
class Opened:
    """A run folder ready to train: its config, the checkpoint to continue from, its lock, whether it is new."""

    config: Config
    folder: RunFolder
    ckpt: Checkpoint | None
    until: int
    lock: FolderLock
    created: bool
    done: bool = False  # already at its target (mode auto): nothing to train

    @property
    def start_step(self) -> int:
        """Env steps done before this call trains."""
        return self.ckpt.step if self.ckpt is not None else 0

    def abandon(self) -> None:
        """After a failure: remove the folder if this process created it and no checkpoint was saved."""
        self.lock.release()
        if self.created and self.folder.newest() is None:
            self.folder.remove()


def open_run(spec: RunSpec) -> Opened:
    """Create or open ``spec``'s run folder, locked, with the checkpoint it continues from (see the module doc)."""
    for path in (spec.run_dir, spec.root):
        _check_utf8(path)
    if spec.mode == "resume":
        if spec.run_dir is None:
            raise GymlabError("a resume needs the run folder (or one of its checkpoints)")
        return _open_existing(spec, spec.run_dir, explicit=spec.run_dir.is_file())
    if spec.source is not None:
        return _open_branch(spec)
    if spec.config is None:
        raise GymlabError(f"a {spec.mode} run needs its config")
    if spec.mode == "auto":
        if spec.run_dir is None:
            raise GymlabError("mode auto needs a run folder")
        folder = RunFolder(spec.run_dir)
        if folder.exists():
            if folder.newest() is not None:
                return _open_existing(spec, spec.run_dir, explicit=False)
            _clear_failed_start(folder)
    config = spec.config if spec.device is None else spec.config.with_run(device=spec.device)
    return _open_new(spec, config, spec.until if spec.until is not None else config.run.steps)


def _check_utf8(path: Path | None) -> None:
    """Refuse a folder name that is not UTF-8 (bytes a shell can pass): TensorBoard's writer cannot write there."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        shown = str(path).encode(errors="surrogateescape").decode(errors="replace")
        raise GymlabError(f"the folder name {shown} is not valid UTF-8: choose a name in UTF-8") from None


def _open_new(spec: RunSpec, config: Config, until: int, ckpt: Checkpoint | None = None) -> Opened:
    preflight(config)  # before any folder exists: a config that cannot run leaves nothing
    folder = RunFolder.create(config, spec.run_dir, spec.root)
    try:
        lock = folder.lock()
    except BaseException:
        folder.remove()
        raise
    return Opened(config, folder, ckpt, until, lock, created=True)


def _open_branch(spec: RunSpec) -> Opened:
    """A new folder continuing from ``spec.source`` (a checkpoint of another run), with its curve so far."""
    assert spec.source is not None
    source = load_run(spec.source, "last", spec.trust)
    config = source.config if spec.device is None else source.config.with_run(device=spec.device)
    if spec.run_dir is None:
        raise GymlabError("starting a new run from a checkpoint needs --run-dir NEW")
    done, until = source.checkpoint.step, spec.until or config.run.steps
    if done >= until:  # checked before the new folder exists
        raise GymlabError(f"{spec.source} is at step {done:,} already; pass --steps N with N > {done:,} to go on")
    # Its best is its own: best.pt is written at its first evaluation, not held back by a best it cannot hold.
    source.checkpoint.loop.best_eval = None
    opened = _open_new(spec, config, until, source.checkpoint)
    source_dir = RunFolder.of(source.path).path
    try:
        for events in sorted(source_dir.glob("events.out.tfevents.*")):
            shutil.copy2(events, opened.folder.path / events.name)
    except OSError as exc:
        opened.abandon()
        raise GymlabError(f"cannot copy {source_dir}'s TensorBoard events: {exc.strerror or exc}") from None
    return opened


def _open_existing(spec: RunSpec, target: Path, *, explicit: bool) -> Opened:
    """Lock an existing folder and load its newest checkpoint (a named one must be that newest)."""
    folder = RunFolder.of(target)
    if not target.exists():
        raise GymlabError(f"no run folder or checkpoint at {target}")
    if folder.data() is None:
        if target.is_file():  # a file outside any run folder: a loose checkpoint, or not a checkpoint at all
            if step_of(target) is None:  # read without its tensors; a file that is no checkpoint is refused in
                Checkpoint.read(target)  # one line by the full reader
            raise GymlabError(
                f"{target} is a checkpoint outside a run folder; to train on from it, give a new folder: "
                f"gymlab train --resume {shlex.quote(str(target))} --run-dir NEW"
            )
        raise GymlabError(
            folder.runs_below()
            or f"{folder.path} is not a run folder (no {folder.config_file.name}); give a run folder made by "
            "gymlab train, or one of its checkpoints with --run-dir NEW"
        )
    lock = folder.lock()
    try:
        folder.check_savable()  # before a resume trains, not after
        newest = folder.newest()
        if newest is None:
            raise GymlabError(
                f"run folder {folder.path} has no checkpoint to resume from; start the run again in a new --run-dir"
            )
        folder.check_others(newest)
        if explicit and target.resolve() != newest.resolve():
            named, latest = Checkpoint.read(target).step, Checkpoint.read(newest).step
            if named < latest:
                raise GymlabError(
                    f"{target.name} (step {named:,}) is older than {newest.name} (step {latest:,}) and would rewrite "
                    f"later history: start a new run from it with --run-dir NEW, or resume {folder.path} itself"
                )
            newest = target
        loaded = load_run(newest, "last", spec.trust)
        folder.check_history(loaded.checkpoint, newest)
        config = loaded.config if spec.device is None else loaded.config.with_run(device=spec.device)
        if spec.config is not None:  # auto: the folder must be the run the caller asks for
            differ = config_differences(spec.config.to_dict(), loaded.checkpoint.config)
            if differ:
                raise GymlabError(
                    f"run folder {folder.path} holds another run (its config differs in {', '.join(differ[:5])}); "
                    "choose another folder"
                )
    except BaseException:
        lock.release()
        raise
    until = spec.until if spec.until is not None else config.run.steps
    opened = Opened(config, folder, loaded.checkpoint, until, lock, created=False)
    _check_target(opened, explicit=spec.mode == "resume")
    return opened


def _check_target(opened: Opened, *, explicit: bool) -> None:
    """A resume must have steps left; in ``auto`` mode a run already at its target is simply done.

    A run interrupted during its final evaluation (``eval_due`` at the target step) has that
    evaluation left; one interrupted during an earlier evaluation has nothing left below its step.
    """
    assert opened.ckpt is not None
    done = opened.ckpt.step
    if done < opened.until or (done == opened.until and opened.ckpt.loop.eval_due):
        return
    if not explicit:
        opened.done = True
        return
    opened.lock.release()
    raise GymlabError(
        f"run {opened.folder.path} already reached step {done:,}; pass --steps N with N > {done:,} to go on"
    )


def _clear_failed_start(folder: RunFolder) -> None:
    """Remove a folder left by a start that died before its first checkpoint (no live process holds it)."""
    if folder.data() is None and any(folder.path.iterdir()):
        raise GymlabError(f"{folder.path} exists and is not a run folder; choose another folder")
    with folder.lock():  # refused if a live process is still starting it
        pass
    folder.remove()


def _train(spec: RunSpec, opened: Opened, progress: Progress | None, start: float) -> RunOutcome:
    start_step = opened.start_step
    if opened.done:
        assert opened.ckpt is not None
        loop = opened.ckpt.loop
        return RunOutcome(
            spec, "finished", opened.folder.path, start_step, start_step, loop.last_eval, loop.best_eval,
            opened.folder.last,
        )  # fmt: skip
    result = train(
        opened.config,
        opened.folder,
        resume=opened.ckpt,
        until=opened.until,
        stop_at=spec.stop_at,
        progress=progress,
        on_eval=spec.on_eval,
    )
    if result.stopped:
        status: Status = "stopped"
    elif result.interrupted and not (spec.stop_at is not None and result.step >= spec.stop_at):
        status = "interrupted"
    else:
        status = "finished"
    return RunOutcome(
        spec,
        status,
        opened.folder.path,
        result.step,
        start_step,
        result.last_eval,
        result.best_eval,
        result.checkpoint,
        seconds=time.perf_counter() - start,
        episodes=result.episodes,
        phase=result.phase,
    )


def saved_step(path: Path | None) -> int:
    """The step of the checkpoint at ``path`` for a report line; 0 when there is none or it cannot be read."""
    if path is None:
        return 0
    try:
        return Checkpoint.read(path).step
    except GymlabError:
        return 0


def _interrupted(spec: RunSpec, opened: Opened | None, start: float, trained_to: int | None) -> RunOutcome:
    """A KeyboardInterrupt outside the loop's graceful stop: keep any checkpoint, else leave nothing.

    ``trained_to``: the step a run that had begun training stopped at (a second signal, see
    :class:`~gymlab.signals.StoppedAtOnce`); its folder stays even without a checkpoint, since it
    holds the run's curves. None: stopped in start-up.
    """
    seconds = time.perf_counter() - start
    newest = opened.folder.newest() if opened is not None else None
    if opened is not None and newest is None and trained_to is not None and opened.folder.exists():
        return RunOutcome(spec, "interrupted", opened.folder.path, trained_to, opened.start_step, seconds=seconds)
    if opened is None or newest is None:
        if opened is not None:
            opened.abandon()  # created by this call and holds no checkpoint: gone, so a retry works
        return RunOutcome(spec, "interrupted", seconds=seconds)
    return RunOutcome(
        spec,
        "interrupted",
        opened.folder.path,
        saved_step(newest),
        opened.start_step,
        checkpoint=newest,
        seconds=seconds,
    )
