"""The one process pool for several runs at once (``train --seeds`` and local sweeps).

Each run is a :class:`~gymlab.runner.RunSpec` executed by :func:`gymlab.runner.execute` in a
fresh ``spawn``-ed worker process (no state shared with the parent, so the same result as running
it alone), with torch's threads divided among the workers. A run that fails is reported as its
outcome and does not stop the others. For many machines, use the Ray backend of ``gymlab sweep``.

Interrupts. Workers run in their own process group and ignore SIGINT, so a Ctrl-C in the
terminal reaches only the parent. The parent then stops them itself (:meth:`RunPool.stop`): runs
not started yet are cancelled, and each running worker gets SIGTERM, which the rollout loop turns
into a stop between two steps with a checkpoint. A second Ctrl-C sends a second SIGTERM (the loop
then stops at once, keeping its last periodic checkpoint). Every run's outcome says what was
saved; the parent should run no other child processes while a pool is open, since the stop
signals every child it has.

A worker that dies (killed, out of memory, a crash in native code) breaks the whole pool: the
executor stops the other workers with SIGTERM, which their runs take as a graceful stop with a
checkpoint. Each worker tells the parent when it starts and when it ends a run (a pipe beside the
executor's), so the parent knows whose worker died: the run that started and never ended. That
run is retried once in a new pool, continuing from its newest checkpoint (``mode="auto"``), and
reported as failed if its worker dies again; the others, stopped by the executor or never
started, continue in the new pool without it counting against them. (If no run can be blamed,
a worker died between runs, every run the break took counts, so a pool whose workers cannot
start ends its runs as failed instead of retrying forever.)

CPython's executor can miss a worker's death: it waits on the workers it had when woken, and a
submit wakes it before it spawns the new worker. The parent therefore looks at its children
itself, and when a worker running a run is gone it wakes the executor (a no-op submit), which
then sees the death and breaks the pool at once instead of at the next result.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from gymlab.runner import RunOutcome, RunSpec, execute, saved_step
from gymlab.runs import RunFolder
from gymlab.signals import multi_run_stop

_STOP: Any = None  # in a worker: the pool's stop event (a multiprocessing.Event)
_EVENTS: Any = None  # in a worker: where it says ("start" | "end", token, pid) (a multiprocessing.SimpleQueue)
_ENDING = False  # in a worker: a SIGTERM came while it was idle or starting up: its pool is ending


def _note_ending(signum: int, frame: Any) -> None:
    global _ENDING
    _ENDING = True


def _worker_init(stop: Any, events: Any) -> None:
    """Leave the terminal's process group, ignore SIGINT, and note (not die of) a SIGTERM while idle.

    SIGTERM reaches an idle or starting worker when its pool is ending: stopped by the parent, or
    broken by another worker's death (the executor terminates the rest). The worker then runs no
    run it is handed after, whichever it was: a run begun in a broken pool would go on to its end
    with nobody to take its result, and the parent waiting for the pool to close.
    """
    global _STOP, _EVENTS
    _STOP, _EVENTS = stop, events
    with contextlib.suppress(OSError):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _note_ending)
    # Spawned with both blocked (RunPool.submit): a stop signal during this process's start-up (imports,
    # seconds) would have killed it and broken the pool, taking the other workers' runs mid-cleanup.
    # One that came meanwhile is delivered here, to the handler just set.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _work(spec: RunSpec, token: int) -> RunOutcome:
    """Run one spec in a worker unless the pool is stopping (SIGTERM interrupts it only while it runs).

    Says "start" before and "end" after (SimpleQueue writes at once, no feeder thread that a kill
    could lose), so that a run whose worker died is the one that started and never ended.
    """
    _EVENTS.put(("start", token, os.getpid()))
    try:  # the handler is set and put back inside the try: a SIGTERM at any instant never kills the worker
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            if _ENDING or (_STOP is not None and _STOP.is_set()):
                return RunOutcome(spec, "cancelled")
            return execute(spec)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:  # SIGTERM between execute's own handling and here
        return RunOutcome(spec, "cancelled")
    finally:
        _EVENTS.put(("end", token, os.getpid()))


class RunPool:
    """Up to ``workers`` runs at once in spawned worker processes.

    Use it as a context manager (leaving it on an exception, Ctrl-C included, stops the workers
    gracefully). ``submit`` queues a run; ``wait`` blocks until at least one run ends and returns
    every ended one (dead workers' runs are resubmitted once, not returned); ``stop`` ends
    everything gracefully and returns the outcomes of the runs that were still open.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = max(1, workers)
        self.threads = threads if threads is not None else torch_threads(self.workers)
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._events = self._context.SimpleQueue()
        self._pool = self._new_pool()
        self._running: dict[Future[RunOutcome], tuple[RunSpec, int]] = {}
        self._tokens = itertools.count()
        self._started: dict[int, int] = {}  # token -> worker pid, of runs that started and have not ended

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_worker_init,
            initargs=(self._stop, self._events),
        )

    def __len__(self) -> int:
        """Runs submitted whose outcome has not been returned yet."""
        return len(self._running)

    def submit(self, spec: RunSpec) -> None:
        """Queue a run (with this pool's torch threads unless the spec sets its own)."""
        if spec.threads is None:
            spec = replace(spec, threads=self.threads)
        # A worker spawned here inherits the blocked signals until its initializer ignores them (_worker_init).
        held = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            token = next(self._tokens)
            try:
                future = self._pool.submit(_work, spec, token)
            except BrokenProcessPool:
                self._renew()
                future = self._pool.submit(_work, spec, token)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self._running[future] = (spec, token)

    def _read_events(self) -> None:
        """Take in what the workers said (often: a full pipe would block them)."""
        while not self._events.empty():
            event, token, pid = self._events.get()
            if event == "start":
                self._started[token] = pid
            else:
                self._started.pop(token, None)

    def _wake_if_a_worker_died(self) -> None:
        """Wake the executor when a worker running a run is gone (see the module doc)."""
        alive = {child.pid for child in multiprocessing.active_children()}
        if any(pid not in alive for pid in self._started.values()):
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # as submit
            try:
                with contextlib.suppress(BrokenProcessPool, RuntimeError):  # already broken, or shutting down
                    self._pool.submit(os.getpid)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def wait(self, timeout: float | None = None) -> list[RunOutcome]:
        """Block until a run ends (or ``timeout`` seconds pass); return every ended run's outcome."""
        if not self._running:
            return []
        done, _ = wait(list(self._running), timeout=timeout, return_when=FIRST_COMPLETED)
        self._read_events()
        if not done:
            self._wake_if_a_worker_died()
        outcomes: list[RunOutcome] = []
        lost: list[tuple[RunSpec, int]] = []
        for future in done:
            spec, token = self._running.pop(future)
            try:
                outcomes.append(future.result())
            except BrokenProcessPool:
                lost.append((spec, token))
            except Exception as exc:  # e.g. the spec could not be pickled
                outcomes.append(RunOutcome(spec, "failed", spec.run_dir, error=f"worker failed: {exc!r}"))
        if lost:
            lost += self._running.values()  # the broken pool took every running worker with it
            self._running.clear()
            self._renew()  # returns once the executor has stopped the old workers: all they said is in the pipe
            self._read_events()
            blamed = {token for _, token in lost if token in self._started}  # started, never ended: their worker died
            for spec, token in lost:
                died = token in blamed or not blamed
                self._started.pop(token, None)
                if died and spec.attempt >= 2:
                    error = "its worker process died twice (killed, out of memory, or a crash in native code)"
                    outcomes.append(RunOutcome(spec, "failed", spec.run_dir, error=error))
                else:
                    self.submit(retry_spec(spec, died))
        return outcomes

    def stop(self) -> list[RunOutcome]:
        """Stop every run gracefully (each saves a checkpoint) and return their outcomes.

        Runs not started are ``cancelled``. A Ctrl-C while waiting signals the workers again (the
        loop then stops at once, keeping its last periodic checkpoint); a third kills them.
        """
        # Runs not started yet see the stop event and return "cancelled" at once (see _work). Their futures
        # are not cancelled here: a future cancelled while the executor hands it to a worker made its
        # management thread fail (InvalidStateError) and print a traceback.
        self._stop.set()
        outcomes: list[RunOutcome] = []
        for attempt in range(3):
            self._signal(signal.SIGTERM if attempt < 2 else signal.SIGKILL)
            try:
                while self._running:
                    done, _ = wait(list(self._running))
                    for future in done:
                        spec, _ = self._running.pop(future)
                        try:
                            outcomes.append(future.result())
                        except BrokenProcessPool:
                            outcomes.append(_lost(spec))
                break
            except KeyboardInterrupt:
                continue
        outcomes += [_lost(spec) for spec, _ in self._running.values()]
        self._running.clear()
        self.close()
        return outcomes

    def _signal(self, signum: int) -> None:
        for child in multiprocessing.active_children():
            if child.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signum)

    def _renew(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()

    def close(self) -> None:
        """Release the workers (after their current runs end)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.stop()


def _lost(spec: RunSpec) -> RunOutcome:
    """A run whose worker was killed before it reported: what its folder holds now.

    No folder at all: it left nothing, so it counts as not started (``cancelled``), not as a run.
    """
    if spec.run_dir is not None and not spec.run_dir.is_dir():
        return RunOutcome(spec, "cancelled")
    newest = RunFolder(spec.run_dir).newest() if spec.run_dir is not None and spec.run_dir.is_dir() else None
    error = "its worker was stopped before it reported"
    return RunOutcome(spec, "interrupted", spec.run_dir, saved_step(newest), checkpoint=newest, error=error)


def retry_spec(spec: RunSpec, died: bool = True) -> RunSpec:
    """The spec to run again after a broken pool: continue the folder from its newest checkpoint, if any.

    ``died``: its own worker died (the retry counts as its next attempt); otherwise it was stopped
    beside the one that did, or never started, and keeps its attempt.
    """
    mode = "auto" if spec.run_dir is not None and spec.mode == "new" and spec.source is None else spec.mode
    return replace(spec, mode=mode, attempt=spec.attempt + died)


#: Seconds between two looks at the stop flag while runs go on in worker processes.
POLL_S = 0.1


def run_all(
    specs: Sequence[RunSpec],
    workers: int,
    on_done: Callable[[RunOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> list[RunOutcome]:
    """Run every spec, ``workers`` at a time; outcomes come back in the specs' order.

    With one worker the runs go one after another in this process. On Ctrl-C or SIGTERM, whenever
    it lands, the runs stop gracefully: the outcomes then say which were ``interrupted`` (and what
    each saved) and which were ``cancelled`` before they started. ``stop`` is the flag of the
    caller's :func:`gymlab.signals.multi_run_stop` (one is held here when None is given).
    """
    if stop is None:
        with multi_run_stop() as flag:
            return run_all(specs, workers, on_done, flag)
    if workers <= 1 or len(specs) <= 1:
        return _run_here(specs, on_done, stop)
    outcomes: dict[int, RunOutcome] = {}
    pool = RunPool(workers)
    try:
        for i, spec in enumerate(specs):
            pool.submit(replace(spec, tag=(i, spec.tag)))  # the index finds the spec's place again
        while len(pool) and not stop.is_set():
            for outcome in pool.wait(timeout=POLL_S):
                _collect(outcome, outcomes, on_done)
        if stop.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        for outcome in pool.stop():
            _collect(outcome, outcomes, on_done)
    finally:
        pool.close()
    return [_untag(outcomes[i]) if i in outcomes else RunOutcome(s, "cancelled") for i, s in enumerate(specs)]


def _collect(outcome: RunOutcome, into: dict[int, RunOutcome], on_done: Callable[[RunOutcome], None] | None) -> None:
    i = outcome.spec.tag[0]
    into[i] = outcome
    if on_done is not None:
        on_done(_untag(outcome))


def _untag(outcome: RunOutcome) -> RunOutcome:
    tag = outcome.spec.tag
    if isinstance(tag, tuple) and len(tag) == 2 and isinstance(tag[0], int):
        return replace(outcome, spec=replace(outcome.spec, tag=tag[1]))
    return outcome


def _run_here(
    specs: Iterable[RunSpec], on_done: Callable[[RunOutcome], None] | None, stop: threading.Event
) -> list[RunOutcome]:
    """One run after another in this process; after an interrupt (``stop`` set) the rest are cancelled."""
    outcomes: list[RunOutcome] = []
    for spec in specs:
        if stop.is_set() or (outcomes and outcomes[-1].status in ("interrupted", "cancelled")):
            outcome = RunOutcome(spec, "cancelled")
        else:
            try:
                outcome = execute(replace(spec, threads=spec.threads or 1))
            except KeyboardInterrupt:  # a second signal outside the run's own handling: what its folder holds
                outcome = _lost(spec)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


def torch_threads(workers: int) -> int:
    """Torch threads per worker so that workers × threads does not exceed the cores."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
