"""The runner: one path from a config to a run folder, validated once, owning its folder to the end.

What is tested here is what the runner promises beyond the loop: a ``gymlab train`` validates its
config once and loads its agent class once; a folder's history cannot be rewritten by a checkpoint
older than the newest it held; a sweep folder has one writer, as a run folder does; and a run
folder deleted while it is written ends the run in one line, leaving nothing that blocks a retry.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import gymlab_inprocess

from gymlab import agent, config
from gymlab.checkpoint import Checkpoint
from gymlab.runner import RunSpec, execute, open_run, run
from gymlab.runs import RunFolder, lock_folder
from gymlab.signals import held

TINY = ("eval_every=0", "eval_episodes=1", "checkpoint_every=0", "log_every=1000")


def one_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder except its lock, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


# --- validated once ---------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count calls of ``config.validate`` and ``agent.load_agent_class``, wherever a module imported them."""
    counts = {"validate": 0, "load_agent_class": 0}

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name, original in (("validate", config.validate), ("load_agent_class", agent.load_agent_class)):
        wrapped = counting(name, original)
        for module in [m for n, m in sys.modules.items() if n.startswith("gymlab") and m is not None]:
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, wrapped)
    yield counts


def test_one_train_validates_once_and_loads_its_agent_once(counted, tmp_path):
    done = gymlab_inprocess("train", "random", "CartPole-v1", "--steps", "200", "--run-dir", tmp_path / "r", *TINY)
    assert done.code == 0, done.ok()
    assert counted == {"validate": 1, "load_agent_class": 1}


def test_one_resume_validates_once_and_loads_its_agent_once(counted, tmp_path):
    assert (
        gymlab_inprocess("train", "random", "CartPole-v1", "--steps", "200", "--run-dir", tmp_path / "r", *TINY).code
        == 0
    )
    counted.update(validate=0, load_agent_class=0)
    done = gymlab_inprocess("train", "--resume", tmp_path / "r", "--steps", "400")
    assert done.code == 0, done.ok()
    assert counted == {"validate": 1, "load_agent_class": 1}


def test_a_spec_carries_its_validated_config_through_the_runner(tmp_path):
    cfg = config.resolve("random", "CartPole-v1", None, list(TINY), steps=100)
    opened = open_run(RunSpec(config=cfg, run_dir=tmp_path / "r"))
    try:
        assert opened.config is cfg and opened.created and opened.ckpt is None
        assert opened.folder.data() == cfg.to_dict()
    finally:
        opened.abandon()
    assert not (tmp_path / "r").exists()  # abandoned before any checkpoint: nothing left
    outcome = run(RunSpec(config=cfg, run_dir=tmp_path / "r"))
    assert outcome.status == "finished" and outcome.step == 100
    assert Checkpoint.read(RunFolder(tmp_path / "r").last).step == 100


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_folder_is_made_leaves_nothing_in_a_process_with_other_threads(
    tmp_path, monkeypatch, signum
):
    """A pool worker that ran a run before has other threads (torch's); the kernel hands them a signal
    the main thread blocks, and Python still runs its handler in the main thread: the signal must wait
    until the new folder can be cleaned up, or it is left without a checkpoint (CI, 2026-12-07)."""
    cfg = config.resolve("random", "CartPole-v1", None, list(TINY), steps=100)
    create = RunFolder.create

    def create_then_signal(*args: Any, **kwargs: Any) -> RunFolder:
        folder = create(*args, **kwargs)
        os.kill(os.getpid(), signum)
        _let_handlers_run()  # a handler that is not held back runs here
        return folder

    monkeypatch.setattr(RunFolder, "create", staticmethod(create_then_signal))
    gone = threading.Event()
    other = threading.Thread(target=gone.wait, daemon=True)  # blocks nothing: the kernel may deliver to it
    other.start()
    previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = execute(RunSpec(config=cfg, run_dir=tmp_path / "r"))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        gone.set()
    assert outcome.status == "interrupted" and outcome.checkpoint is None, outcome
    assert not (tmp_path / "r").exists()  # created, then taken back: nothing blocks the retry


def _let_handlers_run() -> None:
    for _ in range(100):  # the main thread runs bytecode: a pending Python handler runs here
        time.sleep(0.001)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_is_held_back_until_the_block_ends_and_a_second_interrupts_at_once(signals):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with held():
                os.kill(os.getpid(), signal.SIGINT)
                _let_handlers_run()
                reached.append("held back")
                if signals == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                    _let_handlers_run()
                    reached.append("a second held back too")
            reached.append("after the block")
        _let_handlers_run()  # nothing left pending: no third interrupt here
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reached == ["held back"]


# --- the run folder's history ------------------------------------------------------------------


def test_a_deleted_last_checkpoint_never_lets_an_older_one_rewrite_history(cli, tmp_path):
    """Copy a run, delete its last.pt, resume: refused, naming --run-dir; nothing of the copy is lost."""
    base = ("--run-dir", "r", "eval_episodes=1", "log_every=1000", "eval_every=3000", "checkpoint_every=3000")
    assert cli("train", "tabular_q", "Taxi-v4", "--steps", "3000", *base).returncode == 0  # best.pt at 3,000
    assert cli("train", "--resume", "r", "--steps", "8000").returncode == 0  # last.pt at 8,000, best.pt older
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    last = tmp_path / "copy" / "checkpoints" / "last.pt"
    assert Checkpoint.read(last).step == 8000
    last.unlink()
    best = tmp_path / "copy" / "checkpoints" / "best.pt"
    assert Checkpoint.read(best).step < 8000
    before = snapshot(tmp_path / "copy")
    line = one_line(cli("train", "--resume", "copy", "--steps", "9000"), 2, "history up to step 8,000", "--run-dir")
    assert "best.pt" in line
    assert snapshot(tmp_path / "copy") == before  # no events purged, nothing written
    # The branch the message names works, and leaves the copy alone.
    assert cli("train", "--resume", str(best), "--run-dir", "branch", "--steps", "9000").returncode == 0
    assert Checkpoint.read(tmp_path / "branch" / "checkpoints" / "last.pt").step == 9000
    assert snapshot(tmp_path / "copy") == before


SWEEP = """\
name: lock
agent: tabular_q
env: FrozenLake-v1
method: random
trials: 1
seeds: [0]
base: {steps: 500, eval_every: 500, eval_episodes: 1, checkpoint_every: 0}
space:
  learning_rate: {uniform: [0.1, 0.9]}
"""


def test_a_sweep_folder_has_one_writer(cli, tmp_path):
    pytest.importorskip("optuna", reason="needs the sweep extra: pip install 'gymlab[sweep]'")
    (tmp_path / "s.yaml").write_text(SWEEP)
    (tmp_path / "d").mkdir()
    with lock_folder(tmp_path / "d", "sweep folder"):  # another writer holds it (a flock on its own open file)
        before = snapshot(tmp_path / "d")
        line = one_line(cli("sweep", "s.yaml", "--run-dir", "d"), 2, "sweep folder", "another gymlab process")
        assert f"pid {os.getpid()}" in line
        assert snapshot(tmp_path / "d") == before
    done = cli("sweep", "s.yaml", "--run-dir", "d")  # the writer is gone: the sweep runs
    assert done.returncode == 0, done.stderr


def _delete_while_written(folder: Path, tries: int = 50) -> None:
    """``rm -rf`` of a folder a run is writing: a file it creates between rmtree's listing and its rmdir
    fails that rmdir ("Directory not empty"), so delete again until the folder is gone."""
    for _ in range(tries):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
    raise AssertionError(f"{folder} could not be deleted in {tries} tries")


def test_a_run_folder_deleted_mid_run_ends_in_one_line_and_a_retry_works(tmp_path):
    args = [
        "tabular_q",
        "Taxi-v4",
        "--run-dir",
        "r",
        "--steps",
        "50000000",
        *TINY[:2],
        "checkpoint_every=2000",
        *TINY[3:],
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymlab", "train", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (tmp_path / "r" / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        _delete_while_written(tmp_path / "r")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert "was removed while the run was writing it" in lines[0]
    assert not (tmp_path / "r").exists()  # nothing recreated, so nothing blocks a retry
    retry = subprocess.run(
        [sys.executable, "-m", "gymlab", "train", *args[:4], "--steps", "2000", *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert retry.returncode == 0, retry.stderr
