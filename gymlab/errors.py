"""The one exception type the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

#: The longest message a :class:`GymlabError` carries; longer ones (a huge value quoted back, an
#: exception text from a user's code) are cut, so an error is always one readable line.
MAX_MESSAGE_CHARS = 1_000


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (runs of whitespace and line breaks become one space), cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe(exc: BaseException, limit: int = 300) -> str:
    """An exception as ``Type: first line of its message`` for an error line (just ``Type`` when it says nothing)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


#: The exit code of a command refused for bad input (one ``gymlab: error:`` line).
EXIT_USER_ERROR = 2
#: The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: What a plain interrupt (no message of its own) left behind: nothing.
NOTHING_SAVED = "interrupted: nothing was saved or changed; run the same command again"

#: What a call into a user's code (an env, a wrapper) may raise that is that code's fault: any error, and
#: ``sys.exit`` (a ``SystemExit``, no ``Exception``), which would otherwise end gymlab with the env's exit code.
#: Signals (Ctrl-C, SIGTERM) are never among them.
USER_CODE_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


def raised_text(exc: BaseException) -> str:
    """What a call did, for an error line: ``raised ValueError: ...`` or ``called sys.exit(3)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)[:100]})"
    return f"raised {describe(exc)}"


class GymlabError(Exception):
    """A problem with the user's input or files, stated in one line with how to fix it.

    Library code raises it for anything the user can act on (unknown names, bad configs,
    unsupported spaces, corrupt checkpoints, existing run folders); the CLI prints
    ``gymlab: error: <message>`` and exits with code 2, never a traceback. The message is made
    one line and capped at :data:`MAX_MESSAGE_CHARS` here, whatever it quotes.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(str(message)))


class Interrupted(Exception):
    """A Ctrl-C or SIGTERM honoured at a safe point; its message is one line saying what was saved.

    Raised once whatever was running (start-up, a standalone evaluation, ``watch``) stopped at its
    next step and saved what it could. The CLI prints the message and exits with code 130. It is
    an ``Exception``, not a ``KeyboardInterrupt``, so that it reaches the CLI's ``main`` through
    typer (which turns a ``KeyboardInterrupt`` inside a command into a bare exit code 130). A
    plain :class:`KeyboardInterrupt` (a second Ctrl-C) means "stopped at once, nothing more saved".
    """


class FolderRemoved(GymlabError):
    """A run folder was deleted or moved while a run was writing it: nothing more is saved, nothing recreates it."""

    def __init__(self, folder: object) -> None:
        super().__init__(
            f"run folder {folder} was removed while the run was writing it; nothing more was saved "
            "(if it was moved, resume it where it is now with gymlab train --resume; if deleted, start the run "
            "again, in a new --run-dir or the same one)"
        )
