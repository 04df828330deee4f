"""Shared fixtures, and where the tests run: on the CPU, unless a test is about CUDA.

Every test runs on the CPU unless it is marked ``cuda``: the session-wide fixture ``_cpu_only`` sets
``CUDA_VISIBLE_DEVICES=""`` (the gymlab processes the tests start see no device) and makes
``torch.cuda.is_available()`` return False in this process, which is what ``device: auto``
(``gymlab.build.resolve_device``) and ``gymlab.envstate.rng_state`` read. Exact resume is promised for
the CPU only, and a GPU machine must run the same suite as a laptop.

Marks (registered in pyproject.toml):

- ``@pytest.mark.cuda``: the test needs a real CUDA device; it is unpinned for its duration and skips,
  with the reason, where there is none.
- ``@pytest.mark.needs("mujoco")`` (or box2d, atari, ffmpeg, sweep, ray; see :data:`OPTIONAL`): the test
  skips, naming the extra and its install command, where that optional package is missing. For a test
  parametrised over env ids, ``pytest.param(env_id, marks=needs_of_env(env_id))``.

Checking the pinning without a GPU: tests/fake_cuda.py makes torch report a CUDA device, in this process
and in the gymlab processes the tests start; every non-cuda test must still pass, and cuda tests skip::

    .venv/bin/python -m pytest -p tests.fake_cuda -m "not slow" tests/test_dqn.py tests/test_resume.py

How many tests are pinned, cuda or skipped for a missing extra: tests/README.md.
"""

import os

# Windows and renderers must never need a screen in tests; MuJoCo renders through EGL here.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

import importlib.util
import io
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clihelp
import forkrun
import gymnasium as gym
import pytest
import torch
import xdist_groups

from gymlab.agent import load_agent_class
from gymlab.cli import main
from gymlab.config import Config, validate

# Tests run two at a time on two cores (pytest -n 2): one torch thread each avoids oversubscription.
torch.set_num_threads(1)

# Read before the session pins anything (under tests/fake_cuda.py these are the fake's; cuda tests skip then).
_REAL_IS_AVAILABLE = torch.cuda.is_available
_REAL_CUDA = torch.cuda.is_available()
_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")

# A background job of a non-interactive shell (how some CI runners start the suite) inherits SIGINT
# ignored, and so would every gymlab process the tests start: their Ctrl-C tests would send a signal
# nobody hears. Handled here instead of ignored, it reaches those children at its default, as from a
# terminal (exec resets handled signals, never ignored ones).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m gymlab ARGS` in a subprocess, capturing output (forked warm where that starts alike)."""
    full_env = {**os.environ, **(env or {})}
    if forkrun.forkable(full_env):
        proc = clihelp.forked(args, cwd, full_env, timeout, limits={}, read=-1)
        if proc is not None:
            if proc.code is None:
                raise subprocess.TimeoutExpired(proc.args, timeout, proc.out, proc.err)
            return subprocess.CompletedProcess([sys.executable, "-m", "gymlab", *args], proc.code, proc.out, proc.err)
    return subprocess.run(
        [sys.executable, "-m", "gymlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def cli(tmp_path: Path):
    """Run the CLI from a fresh working folder; returns (CompletedProcess)."""

    def _run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=tmp_path, timeout=timeout, env=env)

    return _run


def pytest_configure(config: pytest.Config) -> None:
    """Keep each ``xdist_group`` on one worker under ``pytest -n N`` (tests/xdist_groups.py)."""
    config.pluginmanager.register(xdist_groups, "gymlab-xdist-groups")


# --- gymlab in this process (tests/test_contract.py and the command-line tests) ---------------------


@dataclass
class Result:
    """Exit code and output of one in-process ``gymlab`` command (code None: it raised)."""

    argv: list[str]
    code: int | None
    out: str
    err: str

    def ok(self) -> str:
        """The failure message to show when a command expected to succeed did not."""
        return f"gymlab {' '.join(self.argv)} -> {self.code}\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}"


def config_of(data: dict[str, Any]) -> Config:
    """A config mapping validated against its agent, as a run spec carries it."""
    return validate(data, load_agent_class(str(data["agent"])))


def gymlab_inprocess(*argv: Any) -> Result:
    """Run ``gymlab ARGV`` through ``gymlab.cli.main`` in this process, capturing its output."""
    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    code: int | None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # a traceback: the test shows it
            code = None
            err.write(traceback.format_exc())
    return Result(args, code, out.getvalue(), err.getvalue())


@contextmanager
def ctrl_c_after_update(agent: str, stop: int) -> Iterator[None]:
    """Send SIGINT to this process once, right after the agent's update at env step ``stop`` or later."""
    cls: Any = load_agent_class(agent)  # Any: its update is swapped for the duration
    original = cls.__dict__["update"]
    fired: list[int] = []

    def update(self: Any, step: int) -> Any:
        metrics = original(self, step)
        if step >= stop and not fired:
            fired.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    cls.update = update
    try:
        yield
    finally:
        cls.update = original


@pytest.fixture
def no_default_signal_handling():
    """SIGINT/SIGTERM reaching a handler other than gymlab's fail the test (instead of killing pytest)."""

    def escaped(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} was not handled by gymlab")

    previous = {s: signal.signal(s, escaped) for s in (signal.SIGINT, signal.SIGTERM)}
    yield escaped
    for s, h in previous.items():
        signal.signal(s, h)


# --- trained runs shared by the command-line tests of one module ------------------------------------


@pytest.fixture(scope="module")
def taxi_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tabular Q run on Taxi: last.pt at 2,000 steps, best.pt older (the evaluation at 1,000)."""
    run = tmp_path_factory.mktemp("base") / "taxi"
    result = gymlab_inprocess(*clihelp.TAXI_ARGS, "eval_episodes=1", "--run-dir", run)
    assert result.code == 0, result.ok()
    assert clihelp.step_of(run / "checkpoints" / "best.pt") < clihelp.step_of(run / "checkpoints" / "last.pt") == 2000
    return run


@pytest.fixture(scope="module")
def cartpole_dqn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DQN run on CartPole (another agent and env than ``taxi_run``)."""
    run = tmp_path_factory.mktemp("base") / "dqn"
    result = gymlab_inprocess(
        "train", "dqn", "CartPole-v1", "--steps", "200", "eval_episodes=1", "net_arch=[8]", "--run-dir", run
    )
    assert result.code == 0, result.ok()
    return run


# --- where tests run: the CPU, unless a test is about CUDA ---------------------------------------

#: What ``@pytest.mark.needs(NAME)`` may name: NAME -> (modules it imports, what installs them).
OPTIONAL: dict[str, tuple[tuple[str, ...], str]] = {
    "mujoco": (("mujoco",), 'pip install "gymnasium[mujoco]"'),
    "box2d": (("Box2D",), 'pip install "gymlab[box2d]"'),
    "atari": (("ale_py", "cv2"), 'pip install "gymlab[atari]"'),
    "ffmpeg": (("imageio_ffmpeg",), "pip install imageio-ffmpeg (mp4 writing)"),
    "sweep": (("optuna",), 'pip install "gymlab[sweep]"'),
    "ray": (("ray",), 'pip install "gymlab[ray]"'),
}


def missing_optional(name: str) -> str | None:
    """Why a test that needs the optional package ``name`` cannot run here, or None when it can."""
    modules, install = OPTIONAL[name]
    absent = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                absent.append(module)
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            absent.append(module)
    return f"needs {name} ({', '.join(absent)} not installed): {install}" if absent else None


def optional_of_env(env_id: str) -> str | None:
    """The optional package an env id needs (by the module its entry point lives in), or None."""
    if re.match(r"^ALE/|.*(NoFrameskip|Deterministic)-v\d+$", env_id):
        return "atari"  # ale-py registers these ids only once it is installed
    try:
        entry = str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return None
    for prefix, name in (("gymnasium.envs.mujoco", "mujoco"), ("gymnasium.envs.box2d", "box2d")):
        if entry.startswith(prefix):
            return name
    return "atari" if entry.startswith(("ale_py", "gymlab.envs.atari")) else None


def needs_of_env(env_id: str) -> list[pytest.MarkDecorator]:
    """``marks=`` for a ``pytest.param`` whose test makes ``env_id``: the ``needs`` mark of its optional package."""
    name = optional_of_env(env_id)
    return [pytest.mark.needs(name)] if name else []


def _fake_cuda(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("tests.fake_cuda")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, cuda tests without a real CUDA device and tests whose optional package is missing.

    A skipped test whose package is missing also gets the ``missing_optional`` mark, so that
    ``pytest --collect-only -q -m missing_optional`` counts them (tests/README.md).
    """
    if _fake_cuda(config):
        no_cuda: str | None = "fake CUDA (-p tests.fake_cuda): no real device to run a cuda test on"
    else:
        no_cuda = None if _REAL_CUDA else "needs a CUDA device (torch.cuda.is_available() is False)"
    for item in items:
        if no_cuda and item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=no_cuda))
        for mark in item.iter_markers("needs"):
            for name in mark.args:
                if name not in OPTIONAL:
                    raise pytest.UsageError(f"{item.nodeid}: needs({name!r}) is none of {sorted(OPTIONAL)}")
                reason = missing_optional(name)
                if reason:
                    item.add_marker(pytest.mark.missing_optional)
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _cpu_only() -> Iterator[None]:
    """Pin the whole session to the CPU: no CUDA in this process, none in the gymlab processes it starts.

    Session-scoped so that module-scoped fixtures that train (they are set up before any function-scoped
    fixture) are pinned too; a test marked ``cuda`` is unpinned for its own duration by :func:`_cuda_unpinned`.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")  # a child sees no device at all
        mp.setattr(torch.cuda, "is_available", lambda: False)  # resolve_device and rng_state read this
        yield


@pytest.fixture(autouse=True)
def _cuda_unpinned(request: pytest.FixtureRequest, _cpu_only: None) -> Iterator[None]:
    """For a test marked ``cuda`` (it ran past the skip: a real device is there), undo the CPU pinning."""
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", _REAL_IS_AVAILABLE)
        if _VISIBLE is None:
            mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            mp.setenv("CUDA_VISIBLE_DEVICES", _VISIBLE)
        yield
