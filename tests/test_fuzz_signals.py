"""Ctrl-C and SIGTERM at generated instants of a multi-run ``train --seeds`` and of a sweep.

Every interrupt ends with exit 130 and one line; every run that started and did not finish left a
checkpoint or left nothing at all (never a folder without one), the summary's count of runs started is
the number of runs that really started, and each "continue with" command names a folder that holds a
checkpoint. The instants are drawn by Hypothesis (seeded), the runs are long enough that the signal
always lands while the command still runs.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
import strategies as fz
import yaml
from clihelp import Child, assert_one_line
from hypothesis import given, settings
from hypothesis import strategies as st

SEEDS = "0-999"
#: Env steps per run: short runs (most of their time in start-up and the final evaluation, where issue 23
#: lost a signal) in this process, longer ones in worker processes (whose start-up is a spawn).
STEPS = {1: "100", 2: "3000"}


def _started(out: str) -> int:
    found = re.search(r"(\d+) of (\d+) runs started, (\d+) finished", out)
    assert found, out
    return int(found.group(1))


def _signal_while_running(child: Child, after_s: float, signum: int) -> None:
    deadline = time.monotonic() + after_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        assert child.popen.poll() is None, "the command ended before the signal: make the runs longer"
    child.popen.send_signal(signum)


@pytest.mark.parametrize("workers", [1, 2])
@given(after_s=st.floats(min_value=1.0, max_value=9.0), signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]))
@settings(max_examples=fz.examples(4))
def test_an_interrupted_seeds_run_exits_130_with_a_true_count(
    tmp_path_factory: pytest.TempPathFactory, workers: int, after_s: float, signum: int
) -> None:
    work = tmp_path_factory.mktemp("seeds")
    runs = work / "runs"
    child = Child(
        ["train", "tabular_q", "FrozenLake-v1", "--steps", STEPS[workers], "eval_every=1000", "eval_episodes=1",
         "checkpoint_every=500", "--seeds", SEEDS, "--workers", workers, "--run-dir", runs],
        cwd=work,
    )  # fmt: skip
    _signal_while_running(child, after_s, signum)
    proc = child.wait(timeout=180)
    line = assert_one_line(proc, 130, "interrupted")
    folders = sorted(p for p in runs.iterdir()) if runs.exists() else []
    if "runs started" not in proc.out:  # stopped while starting up, before any run began: nothing left
        assert "nothing was saved" in line and not folders, proc.show()
        return
    seed_lines = [s for s in proc.out.splitlines() if s.startswith("seed ")]
    assert _started(proc.out) == len(seed_lines), proc.show()  # the true count: runs that started
    for folder in folders:  # a run that started and stopped kept a checkpoint, or left no folder
        assert (folder / "checkpoints" / "last.pt").is_file() or (folder / "checkpoints" / "best.pt").is_file(), folder
    for resumed in re.findall(r"gymlab train --resume (\S+?)(?:;|$)", line):
        assert (Path(work) / resumed / "checkpoints").is_dir() or Path(resumed, "checkpoints").is_dir(), resumed
    assert len(folders) <= len(seed_lines)


@pytest.mark.needs("sweep")
@given(after_s=st.floats(min_value=3.0, max_value=8.0), signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]))
@settings(max_examples=fz.examples(2))
def test_an_interrupted_sweep_exits_130_and_keeps_its_summary(
    tmp_path_factory: pytest.TempPathFactory, after_s: float, signum: int
) -> None:
    work = tmp_path_factory.mktemp("sweep")
    sweep = work / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "agent": "tabular_q",
                "env": "FrozenLake-v1",
                "base": {"steps": 60000, "eval_every": 10000, "eval_episodes": 2, "checkpoint_every": 5000},
                "method": "grid",
                "space": {"learning_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]},
                "seeds": 1,
            }
        )
    )
    child = Child(["sweep", sweep, "--max-concurrent", "1", "--run-dir", work / "runs"], cwd=work)
    _signal_while_running(child, after_s, signum)
    proc = child.wait(timeout=180)
    if not proc.out.startswith("sweep "):  # stopped while starting up, before the sweep began: nothing left
        assert_one_line(proc, 130, "interrupted")
        return
    assert_one_line(proc, 130, "interrupted", "resume with the same command")
    assert (work / "runs" / "summary.md").is_file()
