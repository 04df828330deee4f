"""Exact resume: a run stopped and resumed ends where an uninterrupted one does, with the same curve;
a kill -9 while a checkpoint is being written leaves a resumable run; DQN's resume is exact by default
(its replay memory travels in the checkpoint) and says so when the memory is over its save budget."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import scalars, tensors
from conftest import ctrl_c_after_update, gymlab_inprocess

from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve
from gymlab.loop import train

OVERRIDES = [
    "steps=12000",
    "num_envs=2",
    "eval_every=4000",
    "eval_episodes=5",
    "checkpoint_every=3000",
    "log_every=500",
]


def q_table(run_dir):
    return Checkpoint.read(run_dir / "checkpoints" / "last.pt").agent_state["policy"]["q"]


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    cfg = resolve("tabular_q", "Taxi-v4", None, OVERRIDES, seed=5)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(cfg, whole)

    # Stop at 6000 (a checkpoint), keep it aside, go on to 9000 logging more, then "crash":
    # resuming from the 6000 checkpoint must purge what was logged after it.
    first = train(cfg, parts, stop_at=6000)
    assert first.interrupted and first.step == 6000
    shutil.copy(parts / "checkpoints" / "last.pt", tmp_path / "at6000.pt")
    train(cfg, parts, resume=Checkpoint.read(parts / "checkpoints" / "last.pt"), stop_at=9000)
    train(cfg, parts, resume=Checkpoint.read(tmp_path / "at6000.pt"))

    np.testing.assert_array_equal(q_table(whole), q_table(parts))
    curves_whole, curves_parts = scalars(whole), scalars(parts)
    assert curves_whole.keys() == curves_parts.keys()
    assert "rollout/ep_return" in curves_whole and "eval/return_mean" in curves_whole
    for tag, points in curves_whole.items():
        assert curves_parts[tag] == points, tag  # same steps, same values: nothing missing or doubled


KILLED_WRITER = """
import sys, time
from pathlib import Path
import gymlab.checkpoint as ck
real_save, calls = ck.torch.save, []
def save_then_hang(obj, fh):
    calls.append(1)
    if len(calls) == 3:  # the third checkpoint: write part of it, then wait to be killed
        fh.write(b"PK\\x03\\x04 part of a checkpoint")
        fh.flush()
        Path(sys.argv[2]).write_text("writing")
        time.sleep(120)
    real_save(obj, fh)
ck.torch.save = save_then_hang
from gymlab.cli import main
main(["train", "tabular_q", "Taxi-v4", "--run-dir", sys.argv[1], "--seed", "2", *sys.argv[3:]])
"""


@pytest.mark.slow
def test_kill_during_checkpoint_write_then_resume(tmp_path, cli):
    args = ["steps=20000", "checkpoint_every=2000", "eval_every=5000", "eval_episodes=5"]
    run, marker = tmp_path / "killed", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run), str(marker), *args], cwd=tmp_path)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached its third checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run / "checkpoints").glob(".*.tmp-*")), "the kill should have left a partial temp file"
    assert Checkpoint.read(run / "checkpoints" / "last.pt").step == 4000

    resumed = cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    whole = cli("train", "tabular_q", "Taxi-v4", "--run-dir", "whole", "--seed", "2", *args)
    assert whole.returncode == 0, whole.stderr
    np.testing.assert_array_equal(q_table(run), q_table(tmp_path / "whole"))


# --- DQN through the command line: stopped by Ctrl-C after an update, then resumed ------------------

DQN_RESUMES = {
    # case: (overrides, exact)
    "default": ([], True),
    "two-envs": (["num_envs=2"], True),
    "ring-wraps": (["buffer_size=64"], True),
    "over-budget": (["replay_save_budget_mb=0.0001"], False),
}


@pytest.mark.parametrize("case", DQN_RESUMES)
def test_dqn_resume_is_exact_by_default_and_says_so_when_its_memory_is_not_saved(tmp_path: Path, case: str):
    overrides, exact = DQN_RESUMES[case]
    args = ["train", "dqn", "CartPole-v1", "--steps", "320", "eval_every=160", "eval_episodes=1", "checkpoint_every=64"]
    args += ["net_arch=[8]", "learning_starts=16", "train_freq=4", "gradient_steps=8", "batch_size=8", *overrides]
    whole = gymlab_inprocess(*args, "--run-dir", tmp_path / "whole")
    assert whole.code == 0, whole.ok()
    with ctrl_c_after_update("dqn", 200):
        stopped = gymlab_inprocess(*args, "--run-dir", tmp_path / "parts")
    assert stopped.code == 130, stopped.ok()
    resumed = gymlab_inprocess("train", "--resume", tmp_path / "parts")
    assert resumed.code == 0, resumed.ok()
    a = Checkpoint.read(tmp_path / "whole" / "checkpoints" / "last.pt").agent_state
    b = Checkpoint.read(tmp_path / "parts" / "checkpoints" / "last.pt").agent_state
    same = all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b), strict=True))
    assert same == exact
    if not exact:  # said plainly, at save and at resume
        assert "replay" in stopped.out + stopped.err and "replay" in resumed.out + resumed.err, resumed.ok()
