"""The one exception type the command line turns into a one-line message and exit code 2."""


class GymlabError(Exception):
    """A problem with the user's input or files, stated in one line with how to fix it.

    Library code raises it for anything the user can act on (unknown names, bad configs,
    unsupported spaces, corrupt checkpoints, existing run folders); the CLI prints
    ``gymlab: error: <message>`` and exits with code 2, never a traceback.
    """
