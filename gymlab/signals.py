"""Graceful stop: the first Ctrl-C or SIGTERM becomes a flag that whatever runs checks at its next step.

Stopping between steps (never inside an update) is what makes a saved checkpoint exact. While a
run starts up (building envs and agent) there is nothing to finish, so the first signal stops at
once. A second Ctrl-C always interrupts at once.

A parent that runs several runs (``train --seeds``, a local sweep) holds :func:`multi_run_stop` around
them: its flag is set by a signal whenever it lands, between runs, in a run's start-up or inside a
run's own :func:`graceful_stop` (which passes it on), so no signal is lost to a run that was about
to finish, and a run that starts after it stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The flags of the :func:`multi_run_stop` scopes this process is inside, innermost last.
_ENCLOSING: list[threading.Event] = []


class StartUpInterrupt(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM while starting up (see :func:`starting`), raised by the signal handler itself.

    A ``KeyboardInterrupt``, as a Ctrl-C there always was: no ``except Exception`` in the code it
    interrupts swallows it, and the runner and the CLI treat it as "stopped, nothing saved".
    """


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM once a run has begun training: it stopped at once, in the middle of a step.

    What the run folder holds stays (its curves, and any checkpoint written before), even when no
    checkpoint was written yet: it is a run, not a failed start.
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at once at step {step:,}")
        self.step = step


class StopFlag(threading.Event):
    """Set by the first Ctrl-C or SIGTERM; the loop, evaluations, videos and ``watch`` check it at each step."""

    def __init__(self) -> None:
        super().__init__()
        #: While True (start-up: building envs and agent), the first signal interrupts at once (see ``starting``).
        self.at_once = False


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a flag checked at each step of whatever runs.

    Inside :func:`starting` (start-up) the first signal interrupts right away, as
    :class:`StartUpInterrupt`. A second Ctrl-C interrupts at once (plain ``KeyboardInterrupt``).
    Outside the main thread no handler can be installed, and the flag is never set.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        for outer in _ENCLOSING:  # the parent of several runs hears it too, whatever this run does with it
            outer.set()
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        if flag.at_once:
            raise StartUpInterrupt(
                f"{signal.Signals(signum).name} while starting up: stopped before anything was saved"
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    if any(outer.is_set() for outer in _ENCLOSING):  # the parent was stopped before this run began
        flag.set()
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def multi_run_stop() -> Iterator[StopFlag]:
    """For a parent of several runs: the first Ctrl-C/SIGTERM sets the flag, wherever it lands (see the module doc).

    The parent checks the flag before each run and after each; a run inside sees it as its own
    first signal. A second signal raises ``KeyboardInterrupt``. Outside the main thread nothing is
    installed and the flag is never set.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        for outer in _ENCLOSING:
            outer.set()

    _ENCLOSING.append(flag)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _ENCLOSING.remove(flag)


@contextmanager
def starting(flag: StopFlag) -> Iterator[None]:
    """Start-up under ``flag``'s handler: a signal stops it at once, raising :class:`StartUpInterrupt`.

    A flag already set (the parent of several runs was stopped) stops it before it begins.
    """
    if flag.is_set():
        raise StartUpInterrupt("stopped before this run started: nothing was saved")
    flag.at_once = True
    try:
        yield
    finally:
        flag.at_once = False


@contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the duration (in the main thread); one that came is raised right after.

    Python runs a signal's handler in the main thread, whichever thread the kernel handed the signal to,
    so blocking it in the main thread (``pthread_sigmask``) holds nothing back in a process with other
    threads (torch's, in a pool worker that ran a run before): the handlers are swapped for one that
    notes the signal, and the noted signal is raised again once the previous handlers are back. A
    second signal interrupts at once. Outside the main thread no handler can be set, and nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []  # the signal held back; a second one appended interrupts at once

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)
        if len(noted) > 1:  # as everywhere: a second signal interrupts at once (a load that hangs stays stoppable)
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if len(noted) == 1:  # raised again for its own handler, even over an error of the body's
            signal.raise_signal(noted[0])


def sigterm_interrupts() -> Any:
    """In the main thread, make SIGTERM raise KeyboardInterrupt (the loop swaps in its graceful handler).

    Returns the previous handler to put back (None outside the main thread, where nothing changes).
    """
    if threading.current_thread() is not threading.main_thread() or _ENCLOSING:
        return None  # inside multi_run_stop, whose handler hears SIGTERM without raising at a random place
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def commands_interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` while a command runs (each handled where it lands).

    The CLI holds it around every command, ending ``gymlab.__main__``'s start-up handler. A SIGINT the
    caller set to be ignored stays ignored.
    """
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
