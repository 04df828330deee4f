"""Ctrl-C reaches ``python -m gymlab`` in every phase (start-up, training, eval, watch): exit 130, one
line on stderr (naming ``--resume`` while training), no traceback, and nothing already written lost;
an interrupted training run keeps a checkpoint between its start and its budget.

The children start with SIGINT at its default (see ``clihelp``): a child of a non-interactive shell
would otherwise inherit it ignored and never hear the signal sent here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clihelp import Child, assert_nothing_lost, assert_one_line, copy_run, snapshot, step_of


def _started(child: Child, _: Path) -> bool:
    return True


def _training(child: Child, cwd: Path) -> bool:
    return bool(list((cwd / "r").glob("events.out.tfevents.*")))


def _busy(cpu: float) -> Callable[[Child, Path], bool]:
    """Ready once the child has used ``cpu`` seconds of CPU (imports and loading take less)."""
    return lambda child, _: child.cpu_seconds() >= cpu


INTERRUPTS = {
    # phase: (argv, when to send SIGINT, fragments of the one line)
    "start-up": (["train", "tabular_q", "Taxi-v4", "--run-dir", "r"], _started, []),
    # No periodic checkpoint or evaluation: the checkpoint it leaves is the one the interrupt wrote.
    "training": (
        [
            "train",
            "tabular_q",
            "Taxi-v4",
            "--steps",
            "50000000",
            "eval_every=0",
            "checkpoint_every=0",
            "--run-dir",
            "r",
        ],
        _training,
        ["interrupted at step", "gymlab train --resume r"],
    ),
    "eval": (["eval", "RUN", "--episodes", "100000000"], _busy(5.0), []),
    "watch": (["watch", "RUN", "--episodes", "100000", "--record", "w.mp4"], _busy(5.0), []),
}


@pytest.mark.parametrize(
    "phase", [pytest.param(p, marks=[pytest.mark.needs("ffmpeg")] if p == "watch" else []) for p in INTERRUPTS]
)
def test_sigint_in_any_phase_exits_130_with_one_line_and_loses_nothing(taxi_run: Path, tmp_path: Path, phase: str):
    argv, ready, fragments = INTERRUPTS[phase]
    run = copy_run(taxi_run, tmp_path / "run")
    before = snapshot(run)
    child = Child([str(run) if a == "RUN" else a for a in argv], tmp_path)
    time.sleep(0.5)  # past the interpreter's own start, into gymlab's imports
    deadline = time.time() + 120
    while not ready(child, tmp_path) and child.popen.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.popen.send_signal(signal.SIGINT)
    proc = child.wait(timeout=60)
    line = assert_one_line(proc, 130, *fragments)
    assert_nothing_lost(run, before)
    if phase == "training":
        assert line.startswith("gymlab: "), line
        assert 0 < step_of(tmp_path / "r" / "checkpoints" / "last.pt") < 50_000_000


SLOW_ENV = """
import time

import gymnasium as gym
import numpy as np


class Slow(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        time.sleep(0.05)
        return np.zeros(3, np.float32), 1.0, False, False, {}
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_a_run_of_worker_processes_gracefully(tmp_path: Path, sig):
    # A terminal's Ctrl-C reaches the env's worker processes too. They had kept the start-up handler they
    # were forked with and sent its interrupt back as the env's error: the run said "interrupted during
    # start-up" and removed its folder, with the steps it had trained.
    (tmp_path / "slowenv.py").write_text(SLOW_ENV)
    argv = ["train", "random", "slowenv:Slow", "num_envs=2", "vectorization=async", "--steps", "100000"]
    child = Child([*argv, "eval_every=0", "checkpoint_every=0", "--run-dir", "r"], tmp_path, group=True)
    deadline = time.time() + 120
    while not _training(child, tmp_path) and child.popen.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few steps in
    os.killpg(child.popen.pid, sig)
    proc = child.wait(timeout=60)
    assert_one_line(proc, 130, "interrupted at step", "gymlab train --resume r")
    assert 0 < step_of(tmp_path / "r" / "checkpoints" / "last.pt") < 100_000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_line_is_imported_is_one_line(tmp_path: Path, sig: signal.Signals):
    """A signal in the first few hundred milliseconds, while typer, torch and Gymnasium are imported, was a
    KeyboardInterrupt traceback (SIGINT) or a silent death (SIGTERM). Made certain here by a ``typer`` first
    on the path that signals its own process as it is imported."""
    (tmp_path / "typer").mkdir()
    (tmp_path / "typer" / "__init__.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), {int(sig)})\ntime.sleep(5)\nraise SystemExit(99)\n"
    )
    proc = Child(["list"], tmp_path, env={"PYTHONPATH": str(tmp_path)}).wait(timeout=60)
    assert_one_line(proc, 130, "interrupted: nothing was saved or changed")


ESCAPED = """
import gymlab.__main__ as entry
from gymlab import cli
from gymlab.errors import NOTHING_SAVED


def main():  # a Ctrl-C that lands inside eval()'d source (typer evaluates annotations so), handled as gymlab does
    try:
        eval("(_ for _ in ()).throw(KeyboardInterrupt())")
    except KeyboardInterrupt:
        cli.interrupted(NOTHING_SAVED)


entry.main = main
entry.run()
"""


def test_an_interrupt_that_escaped_an_eval_still_exits_130_under_python_m(tmp_path: Path) -> None:
    """CPython ended such a ``-m`` process by SIGINT after it exited (-2): a sweep interrupted 2-3 s in did."""
    import subprocess
    import sys

    (tmp_path / "escaped_entry.py").write_text(ESCAPED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "escaped_entry"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr == "gymlab: interrupted: nothing was saved or changed; run the same command again\n"
