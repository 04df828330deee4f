"""``gymlab`` and ``python -m gymlab``: an interrupt is one line from the first moment gymlab runs.

Importing the command line (typer, then torch and Gymnasium) takes a few hundred milliseconds; a
Ctrl-C or SIGTERM in that time used to end in a ``KeyboardInterrupt`` traceback or a silent death.
This module is the entry point, and the first thing it does is install a start-up handler for both:
it prints the line a command interrupted before it changed anything prints, and exits 130, until
:func:`gymlab.cli.main` takes over. A signal the caller set to be ignored stays ignored. (What is
left is the interpreter's own start, the first ≈20 ms.)
"""

import signal
import sys
from types import FrameType

from gymlab.errors import EXIT_INTERRUPTED, NOTHING_SAVED


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(f"gymlab: {NOTHING_SAVED}\n")
    raise SystemExit(EXIT_INTERRUPTED)


for _sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_sig) in (signal.default_int_handler, signal.SIG_DFL):
        signal.signal(_sig, _interrupted_while_starting)

from gymlab.cli import main  # noqa: E402 - after the handlers: this import is the slow part


def run() -> None:
    """The ``gymlab`` command."""
    main()


if __name__ == "__main__":
    run()
