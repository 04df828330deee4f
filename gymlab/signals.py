"""Graceful stop: the first Ctrl-C or SIGTERM becomes a flag that whatever runs checks at its next step.

Stopping between steps (never inside an update) is what makes a saved checkpoint exact. While a
run starts up (building envs and agent) there is nothing to finish, so the first signal stops at
once. A second Ctrl-C always interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StartUpInterrupt(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM while starting up (see :func:`starting`), raised by the signal handler itself.

    A ``KeyboardInterrupt``, as a Ctrl-C there always was: no ``except Exception`` in the code it
    interrupts swallows it, and the runner and the CLI treat it as "stopped, nothing saved".
    """


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
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        if flag.at_once:
            raise StartUpInterrupt(
                f"{signal.Signals(signum).name} while starting up: stopped before anything was saved"
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def starting(flag: StopFlag) -> Iterator[None]:
    """Start-up under ``flag``'s handler: a signal stops it at once, raising :class:`StartUpInterrupt`."""
    flag.at_once = True
    try:
        yield
    finally:
        flag.at_once = False


def sigterm_interrupts() -> Any:
    """In the main thread, make SIGTERM raise KeyboardInterrupt (the loop swaps in its graceful handler).

    Returns the previous handler to put back (None outside the main thread, where nothing changes).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)
