import os

# Windows and renderers must never need a screen in tests; MuJoCo renders through EGL here.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

import io
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
import pytest
import torch

from gymlab.agent import load_agent_class
from gymlab.cli import main

# Tests run two at a time on two cores (pytest -n 2): one torch thread each avoids oversubscription.
torch.set_num_threads(1)

# A background job of a non-interactive shell (how some CI runners start the suite) inherits SIGINT
# ignored, and so would every gymlab process the tests start: their Ctrl-C tests would send a signal
# nobody hears. Handled here instead of ignored, it reaches those children at its default, as from a
# terminal (exec resets handled signals, never ignored ones).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m gymlab ARGS` in a subprocess, capturing output."""
    full_env = {**os.environ, **(env or {})}
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
    """Under ``pytest -n N`` keep each ``xdist_group`` on one worker (``--dist loadgroup``).

    The contract suite trains each case once in a module-scoped fixture shared by that case's
    tests; xdist's default ``load`` distribution would send them to both workers and train twice.
    Tests without a group are distributed exactly as under ``load``.
    """
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"


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
