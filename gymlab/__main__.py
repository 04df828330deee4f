"""``gymlab`` and ``python -m gymlab``: the process around the command line.

An interrupt is one line from the first moment gymlab runs; a terminal that is not UTF-8 gets '?'
for characters it cannot show; a deleted working folder is one line; threads that user code left
running do not keep the process alive after the command, and a reader of stdout that goes away
(``| head``) ends nothing but the output (:func:`run`).

Importing the command line (typer, then torch and Gymnasium) takes a few hundred milliseconds; a
Ctrl-C or SIGTERM in that time used to end in a ``KeyboardInterrupt`` traceback or a silent death.
This module is the entry point, and the first thing it does is install a start-up handler for both:
it prints the line a command interrupted before it changed anything prints, and exits 130, until
:func:`gymlab.cli.main` takes over. A signal the caller set to be ignored stays ignored. (What is
left is the interpreter's own start, the first ≈20 ms.)
"""

import io
import os
import signal
import sys
import threading
import time
from types import FrameType

from gymlab.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, NOTHING_SAVED


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(f"gymlab: {NOTHING_SAVED}\n")
    raise SystemExit(EXIT_INTERRUPTED)


for _sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_sig) in (signal.default_int_handler, signal.SIG_DFL):
        signal.signal(_sig, _interrupted_while_starting)

from gymlab.cli import main  # noqa: E402 - after the handlers: this import is the slow part
from gymlab.console import discard_stdout  # noqa: E402


def run() -> None:
    """The ``gymlab`` command; it ends when the command does, whatever threads user code left running."""
    code: int | str | None = 0
    _tolerant_streams()
    try:
        _check_working_folder()
        main()
    except SystemExit as exc:
        code = exc.code
    except BrokenPipeError:  # the reader of stdout went away (| head): the command did its work, say nothing more
        discard_stdout()
    _stop_leftover_threads(code)
    _forget_escaped_interrupt()
    raise SystemExit(code)


def _forget_escaped_interrupt() -> None:
    """Keep ``python -m gymlab``'s exit code when a Ctrl-C was handled after escaping an ``eval`` of a string.

    CPython notes a KeyboardInterrupt that leaves any ``eval()`` or ``exec()`` of source text, handled
    later or not, and after a ``-m`` module exits it then kills itself with SIGINT, whatever the exit
    code (a caller saw -2, not 130). typer evaluates the commands' annotations that way while it builds
    them: a Ctrl-C there, a fraction of a second into every command, was one such case. The interrupt
    was handled here (one line, 130); the note is reset by the next such evaluation that ends normally.
    """
    eval("None")  # a constant, evaluated from source text: resets the note


def _tolerant_streams() -> None:
    """A terminal that is not UTF-8 shows '?' for the tables' ─ ± ·, never a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.encoding.lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="replace")


def _check_working_folder() -> None:
    """A working folder deleted under the shell is one line (torch's math library would abort on it)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        sys.stderr.write(
            "gymlab: error: the current folder no longer exists (it was deleted); cd to a folder that exists and "
            "run the command again\n"
        )
        raise SystemExit(EXIT_USER_ERROR) from None


def _stop_leftover_threads(code: int | str | None, grace_s: float = 2.0) -> None:
    """Exit now if threads that are not daemons outlive the command (an env's, an agent's).

    Python would wait for them at exit, forever for one that never ends, with the work done and saved.
    They get ``grace_s`` to finish; then one line names them and the process exits with ``code``.
    """
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not left:
        return
    names = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    sys.stderr.write(
        f"gymlab: note: {len(left)} thread{'s' if len(left) > 1 else ''} that gymlab did not start (from the env or "
        f"the agent: {names}) still ran when the command ended; stopped {'them' if len(left) > 1 else 'it'}\n"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    run()
