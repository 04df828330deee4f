"""``python -m gymlab`` children without the interpreter's start-up: forked from one that already imported torch.

Most command-line tests run a short gymlab command in a child process, and a fresh interpreter spends
most of such a command importing torch, Gymnasium and TensorBoard (``gymlab list``, a 1,000-step Taxi
run or its eval: 4.0-5.3 s fresh, 0.35-0.7 s forked, on the 2-core machine this was written on). This
module keeps one warm interpreter per test process, a :mod:`multiprocessing` forkserver that imported
them once, and forks each child from it. The child is then set up as ``python -m gymlab ARGS`` started
from ``cwd`` would be: the environment, the working folder, ``sys.argv``, ``sys.path`` (``cwd`` first,
then what a fresh interpreter with this environment has), the main process to multiprocessing (no
parent, its own resource tracker), NumPy's global generator seeded from the OS, stdout and stderr as
fresh unbuffered streams on the files given (``PYTHONUNBUFFERED=1``), the resource limits asked for. It
runs gymlab/__main__.py as ``__main__`` and ends as the interpreter does: ``SystemExit``'s code, an
uncaught exception's traceback and exit 1, atexit handlers run, streams flushed.

Where that could differ from a fresh interpreter, the child is one: an environment that differs from the
server's in a variable read while Python or an imported module starts (only the variables of
:data:`RUNTIME_ONLY` and ``PYTHONPATH`` may differ; the server restarts when this process's own
environment changed), a module the server imported that the child's working folder or ``PYTHONPATH``
shadows (:data:`SHADOWED`), and every child when ``GYMLAB_TEST_FRESH=1``. What still differs: stdin is
/dev/null (a fresh child inherits the test process's), the hash seed is the server's for every fork, and
a warning printed while the server imported goes to the test's stderr, not the child's, and torch._dynamo
is loaded in a child that never builds an optimizer (``gymlab list``, tabular Q). Running the
suite both ways is the check that the two start alike::

    GYMLAB_TEST_FRESH=1 .venv/bin/python -m pytest -n 2
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import multiprocessing
import os
import resource
import runpy
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing import forkserver, resource_tracker
from multiprocessing import process as mp_process
from typing import Any

import numpy as np

# Imported by the server once, before any child forks: what every gymlab command imports, and torch._dynamo,
# which torch imports at a process's first optimizer (Optimizer.__init__ and step import it: 2.4 s of a
# DQN, REINFORCE or SeqGAN child's start-up on the 2-core machine, as long as importing torch itself).
# Last, this module: imported by the server as its main process (see _MainProcess).
PRELOAD = [
    *("torch", "gymnasium", "numpy", "typer", "yaml", "pydantic", "torch.utils.tensorboard", "gymlab.cli"),
    "torch._dynamo",
    "forkrun",
]

# Read when a command runs, never while modules import: a child may set them differently from the server.
RUNTIME_ONLY = frozenset(
    {
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "SDL_VIDEODRIVER",
        "SDL_AUDIODRIVER",
        "XDG_RUNTIME_DIR",
        "PYTHONUNBUFFERED",
        "PYTEST_CURRENT_TEST",  # pytest sets it for each test
        "COLUMNS",  # the terminal width, read when a table is printed
        "CUBLAS_WORKSPACE_CONFIG",  # read by cuBLAS when it starts, at a CUDA run's first matrix product
    }
)

# The class of a fresh interpreter's process object (multiprocessing deletes its name): read in the server, which
# imports this module (PRELOAD) as its main process, and in the test process.
# The exit code of a child that ran nothing: a module the server imported is shadowed where it starts.
SHADOWED = 213

_MainProcess = type(mp_process.current_process())
_context = multiprocessing.get_context("forkserver")
_server: dict[str, Any] = {}  # "env": the server's environment, "path": a fresh interpreter's sys.path[1:]


def forkable(env: Mapping[str, str]) -> bool:
    """Whether a child with environment ``env`` may fork from the server (started now if it is not yet).

    The server has this process's environment. When that changed since the server started (a library
    imported in a test set ``LD_LIBRARY_PATH``, say), the server starts again with it. A child's own
    variables (``env`` over this process's) fork where they are runtime ones, or ``PYTHONPATH``: the
    child checks that the folders it adds shadow no module the server imported (:data:`SHADOWED`).
    """
    if os.environ.get("GYMLAB_TEST_FRESH") == "1":
        return False
    here = dict(os.environ)
    if not _server or _differ(here, _server["env"]) - RUNTIME_ONLY:
        _start(here)
    return _differ(env, _server["env"]) - RUNTIME_ONLY <= {"PYTHONPATH"}


def _differ(a: Mapping[str, str], b: Mapping[str, str]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _fresh_path(env: Mapping[str, str], cwd: str | None = None) -> list[str]:
    """``sys.path[1:]`` of a fresh interpreter started with ``env`` in ``cwd``."""
    probe = "import json, sys; print(json.dumps(sys.path[1:]))"
    done = subprocess.run([sys.executable, "-c", probe], env=dict(env), cwd=cwd, capture_output=True, check=True)
    return list(json.loads(done.stdout))


def _start(env: dict[str, str]) -> None:
    """(Re)start the server with environment ``env``; note the sys.path a fresh interpreter has with it."""
    if _server:
        forkserver._forkserver._stop()  # type: ignore[attr-defined]  # the next child starts it again
    _context.set_forkserver_preload(PRELOAD)
    _server.update(env=env, path=_fresh_path(env))


def start(
    args: Sequence[str],
    cwd: str,
    env: Mapping[str, str],
    stdout: str,
    stderr: str,
    limits: Mapping[int, int] | None = None,
) -> multiprocessing.process.BaseProcess:
    """Fork ``python -m gymlab ARGS`` in ``cwd`` (``forkable(env)`` said yes); output goes to the files named.

    ``limits``: :mod:`resource` limits (``RLIMIT_AS`` → bytes) set in the child before gymlab runs.
    Returns the running process (``pid``, ``join``, ``kill``, ``exitcode``, negative for a signal); an
    exit code of :data:`SHADOWED` means the child ran nothing: start a fresh interpreter instead.
    """
    same = env.get("PYTHONPATH") == _server["env"].get("PYTHONPATH")
    path = _server["path"] if same else _fresh_path(env, cwd)
    process = _context.Process(
        target=_gymlab,
        args=(list(args), cwd, dict(env), stdout, stderr, dict(limits or {}), path, _server["path"]),
        daemon=False,
    )
    process.start()
    return process


def _shadows(folders: Sequence[str]) -> list[str]:
    """Modules this process imported that a fresh interpreter would find in one of ``folders`` instead.

    A fresh ``python -m gymlab`` looks in its working folder (and PYTHONPATH's folders) before the
    standard library and site-packages: a ``yaml.py`` or a ``typer/`` package there is what it imports,
    where this fork already holds the server's.
    """
    holders: dict[str, str] = {}  # top-level module -> the sys.path folder it came from
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or not file:
            continue
        folder = os.path.dirname(os.path.abspath(file))
        holders[name] = os.path.dirname(folder) if os.path.basename(file).startswith("__init__.") else folder
    found = []
    for folder in map(os.path.abspath, folders):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            name, _, suffix = entry.partition(".")
            if name not in holders or holders[name] == folder:
                continue
            if suffix.endswith(("py", "pyc", "so")) or os.path.isfile(os.path.join(folder, entry, "__init__.py")):
                found.append(name)  # a module, or a regular package (a plain folder does not shadow)
    return found


def _gymlab(
    args: list[str],
    cwd: str,
    env: dict[str, str],
    stdout: str,
    stderr: str,
    limits: dict[int, int],
    path: list[str],
    server_path: list[str],
) -> None:
    """In the forked child: become ``python -m gymlab ARGS`` started in ``cwd``, run it, and exit."""
    os.chdir(cwd)
    if _shadows([os.getcwd(), *(p for p in path if p not in server_path)]):
        os._exit(SHADOWED)
    # What multiprocessing made of this process goes: a fresh interpreter is the main process, with no parent
    # and its own resource tracker (started if gymlab's worker pool needs one).
    mp_process._current_process = _MainProcess()  # type: ignore[attr-defined]
    mp_process._parent_process = None  # type: ignore[attr-defined]
    mp_process._children = set()  # type: ignore[attr-defined]
    tracker: Any = resource_tracker._resource_tracker
    if tracker._fd is not None:
        os.close(tracker._fd)
    tracker._fd = tracker._pid = None
    np.random.seed()  # noqa: NPY002 - NumPy's global generator: a fresh interpreter seeds it from the OS, not the server's state
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = [os.getcwd(), *path]
    sys.argv = ["-m", *args]  # run_module puts __main__.py's path first, as `python -m` does
    for fd, name in ((1, stdout), (2, stderr)):
        target = os.open(name, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    encoding = sys.__stdout__.encoding if sys.__stdout__ else "utf-8"
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding, write_through=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding=encoding, errors="backslashreplace", write_through=True
    )
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr  # type: ignore[misc]  # as the interpreter starts them
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    code: Any = 0
    try:
        runpy.run_module("gymlab", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if isinstance(code, str):  # SystemExit("message"): the interpreter prints it and exits 1
        sys.stderr.write(code + "\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0 if code is None else code if isinstance(code, int) else 1)
