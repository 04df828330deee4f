"""The one exception type the command line turns into a one-line message and exit code 2."""


class GymlabError(Exception):
    """A problem with the user's input or files, stated in one line with how to fix it.

    Library code raises it for anything the user can act on (unknown names, bad configs,
    unsupported spaces, corrupt checkpoints, existing run folders); the CLI prints
    ``gymlab: error: <message>`` and exits with code 2, never a traceback.
    """


class Interrupted(Exception):
    """A Ctrl-C or SIGTERM honoured at a safe point; its message is one line saying what was saved.

    Raised once whatever was running (start-up, a standalone evaluation, ``watch``) stopped at its
    next step and saved what it could. The CLI prints the message and exits with code 130. It is
    an ``Exception``, not a ``KeyboardInterrupt``, so that it reaches the CLI's ``main`` through
    typer (which turns a ``KeyboardInterrupt`` inside a command into a bare exit code 130). A
    plain :class:`KeyboardInterrupt` (a second Ctrl-C) means "stopped at once, nothing more saved".
    """
