"""Run-folder ownership and the one runner/pool: a lock per folder, one history, trust before import,
failed starts that leave nothing, checkpoint writes that fail cleanly, and interrupts that exit 130."""

import contextlib
import errno
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from clihelp import (
    Child,
    assert_nothing_lost,
    assert_ok,
    assert_one_line,
    copy_run,
    gymlab,
    resave,
    snapshot,
    step_of,
)
from conftest import config_of

from gymlab import checkpoint, runs
from gymlab.cli import main
from gymlab.errors import GymlabError
from gymlab.folderlock import LOCK_FILE, lock_folder
from gymlab.parallel import run_all
from gymlab.runner import RunSpec

TINY = ["eval_every=1000", "eval_episodes=2", "log_every=500", "checkpoint_every=1000"]

#: A user env (a module beside the runs): writes a marker when imported, and can send itself SIGINT
#: when built for the ``interrupt_at_build``-th time or at step ``interrupt_at_step``.
HELPER = """
import os, signal
from pathlib import Path
import gymnasium as gym

Path(os.environ.get("HELPER_MARKER", "imported.txt")).write_text("imported")
BUILT = [0]


class Walk(gym.Env):
    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, interrupt_at_build=0, interrupt_at_step=0, raise_at_reset=False):
        BUILT[0] += 1
        self.raise_at_reset = raise_at_reset
        if BUILT[0] == interrupt_at_build:
            os.kill(os.getpid(), signal.SIGINT)
        self.interrupt_at_step, self.steps, self.pos = interrupt_at_step, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.raise_at_reset:
            raise RuntimeError("the env broke at reset")
        self.pos = 0
        return self.pos, {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.interrupt_at_step:
            os.kill(os.getpid(), signal.SIGINT)
        self.pos = min(3, max(0, self.pos + (1 if action else -1)))
        return self.pos, float(self.pos == 3), self.pos == 3, self.steps % 50 == 0, {}
"""


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    """Write helper.py into the working folder; returns the marker its import writes."""
    (tmp_path / "helper.py").write_text(HELPER)
    return tmp_path / "imported.txt"


def one_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- one writer -------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from gymlab.folderlock import lock_folder
lock = lock_folder(Path(sys.argv[1]))
Path(sys.argv[2]).write_text("locked")
time.sleep(120)
"""


def test_a_second_writer_is_refused_while_the_first_lives(cli, tmp_path):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "2000", *TINY).returncode == 0
    before = snapshot(tmp_path / "r")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "r"), str(tmp_path / "held")])
    try:
        deadline = time.time() + 60
        while not (tmp_path / "held").exists() and time.time() < deadline:
            time.sleep(0.05)
        line = one_line(cli("train", "--resume", "r", "--steps", "4000"), 2, "being written by another gymlab process")
        assert f"pid {holder.pid}" in line
        assert snapshot(tmp_path / "r") == before  # nothing rewound, nothing written
    finally:
        holder.kill()
        holder.wait()
    # The holder died: the kernel dropped its lock, and the resume goes ahead.
    assert cli("train", "--resume", "r", "--steps", "4000").returncode == 0
    assert step_of(tmp_path / "r" / "checkpoints" / "last.pt") == 4000


@pytest.mark.parametrize("kind", ["link", "fifo", "folder"])
def test_a_lock_that_is_no_plain_file_is_refused_and_what_it_points_to_kept(tmp_path, kind):
    """A .lock linked to another file was followed, emptied and given the pid (a run folder from a tarball
    could wipe any file the user may write); a FIFO there ended in a traceback."""
    folder, notes = tmp_path / "r", tmp_path / "notes.txt"
    folder.mkdir()
    notes.write_text("precious")
    lock = folder / LOCK_FILE
    {"link": lambda: lock.symlink_to(notes), "fifo": lambda: os.mkfifo(lock), "folder": lock.mkdir}[kind]()
    with pytest.raises(GymlabError, match=r"its \.lock is not a plain file .* remove .*\.lock, then try again"):
        lock_folder(folder)
    assert notes.read_text() == "precious"
    lock.rmdir() if kind == "folder" else lock.unlink()
    with lock_folder(folder):  # once removed, the folder locks again
        assert lock.read_text() == f"{os.getpid()}\n"


# --- one history ------------------------------------------------------------------------------


def test_an_older_checkpoint_never_rewrites_its_folder_but_may_start_a_new_one(cli, tmp_path):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "2000", *TINY).returncode == 0
    older = (tmp_path / "r" / "checkpoints" / "last.pt").read_bytes()  # step 2000
    assert cli("train", "--resume", "r", "--steps", "4000").returncode == 0
    best = tmp_path / "r" / "checkpoints" / "best.pt"
    best.write_bytes(older)  # best.pt older than last.pt (step 4000)
    os.utime(best, (time.time() - 100, time.time() - 100))
    before = snapshot(tmp_path / "r")

    one_line(cli("train", "--resume", str(best), "--steps", "6000"), 2, "older than", "--run-dir NEW")
    assert snapshot(tmp_path / "r") == before

    branched = cli("train", "--resume", str(best), "--steps", "6000", "--run-dir", "branch")
    assert branched.returncode == 0, branched.stderr
    assert snapshot(tmp_path / "r") == before  # the source folder is only read
    assert step_of(tmp_path / "branch" / "checkpoints" / "last.pt") == 6000
    assert list((tmp_path / "branch").glob("events.out.tfevents.*"))  # the curve so far came along
    # helper-26: the line said "(best X)" from the source run, and the branch had no best.pt to evaluate
    best_said = float(re.search(r"\(best ([-0-9.e]+)\)", branched.stdout)[1])  # type: ignore[index]
    branch_best = checkpoint.Checkpoint.read(tmp_path / "branch" / "checkpoints" / "best.pt")
    assert branch_best.loop.best_eval == pytest.approx(best_said)


@pytest.mark.parametrize("damage", ["garbage", "negative", "null", "folder", "fifo", "dev-zero"])
def test_a_damaged_history_record_is_refused_not_read_as_none(cli, tmp_path, damage):
    """head.json damaged was read as "no record": --resume from best.pt at step 1,000 rewrote history that ran to
    2,000; a FIFO there hung the resume (SIGTERM too), and a link to /dev/zero read until memory ran out."""
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "2000", *TINY).returncode == 0
    head = tmp_path / "r" / "checkpoints" / "head.json"
    (tmp_path / "r" / "checkpoints" / "last.pt").unlink()  # best.pt (step 1,000) is left
    head.unlink()
    if damage == "folder":
        head.mkdir()
    elif damage == "fifo":
        os.mkfifo(head)
    elif damage == "dev-zero":
        head.symlink_to("/dev/zero")
    else:
        head.write_text({"garbage": "garbage{", "negative": '{"step": -5}', "null": "null"}[damage])
    before = snapshot(tmp_path / "r")
    one_line(cli("train", "--resume", "r", "--steps", "3000", timeout=60), 2, "head.json")
    assert snapshot(tmp_path / "r") == before


def test_a_plain_copy_of_a_run_folder_resumes_from_its_newest_step(cli, tmp_path):
    # cp -r (no -p) rewrites file times in copy order; the newest checkpoint is the later step, not the later time.
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "2000", *TINY).returncode == 0
    assert cli("train", "--resume", "r", "--steps", "4000").returncode == 0
    best = tmp_path / "r" / "checkpoints" / "best.pt"
    best.write_bytes((tmp_path / "r" / "checkpoints" / "last.pt").read_bytes())
    assert cli("train", "--resume", "r", "--steps", "6000").returncode == 0  # last.pt at 6000, best.pt at 4000
    shutil.copytree(tmp_path / "r", tmp_path / "copy", copy_function=shutil.copy)  # times not kept
    (tmp_path / "copy" / ".lock").unlink(missing_ok=True)
    later = time.time() + 100
    os.utime(tmp_path / "copy" / "checkpoints" / "best.pt", (later, later))  # best.pt copied last
    assert step_of(tmp_path / "copy" / "checkpoints" / "best.pt") < step_of(
        tmp_path / "copy" / "checkpoints" / "last.pt"
    )

    resumed = cli("train", "--resume", "copy", "--steps", "8000")
    assert resumed.returncode == 0, resumed.stderr
    assert step_of(tmp_path / "copy" / "checkpoints" / "last.pt") == 8000


def test_a_best_checkpoint_ahead_of_last_resumes_whatever_the_file_times(cli, tmp_path):
    """Stopped after an evaluation that improved, a run holds best.pt ahead of last.pt; once a backup restored
    by glob (or a touch) made last.pt the later file, resume said "a newer one was deleted" and sent the
    user to start over from last.pt."""
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "2000", *TINY).returncode == 0
    shutil.copytree(tmp_path / "r", tmp_path / "b")
    (tmp_path / "b" / ".lock").unlink(missing_ok=True)
    assert cli("train", "--resume", "b", "--steps", "4000").returncode == 0
    ckpts, ahead = tmp_path / "r" / "checkpoints", tmp_path / "b" / "checkpoints"
    shutil.copy(ahead / "last.pt", ckpts / "best.pt")  # r: best.pt at 4000, last.pt at 2000, history to 4000
    shutil.copy(ahead / "head.json", ckpts / "head.json")
    later = time.time() + 100
    os.utime(ckpts / "last.pt", (later, later))  # last.pt the later file
    resumed = cli("train", "--resume", "r", "--steps", "6000")
    assert resumed.returncode == 0, resumed.stderr
    first = re.search(r"step ([\d,]+)/6,000", resumed.stdout)
    assert first and int(first[1].replace(",", "")) > 4000, resumed.stdout  # it went on from best.pt's step
    assert step_of(ckpts / "last.pt") == 6000


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        (["tabular_q", "FrozenLake-v1"], "is from env 'FrozenLake-v1'"),  # another env
        (["dqn", "CartPole-v1", "hparams.learning_starts=0", "hparams.buffer_size=1000"], "is from agent 'dqn'"),
        (["tabular_q", "Taxi-v4", "gamma=0.5"], "differs in hparams.gamma"),  # same agent and env, other config
    ],
    ids=["env", "agent", "config"],
)
def test_a_checkpoint_from_another_run_is_refused(cli, tmp_path, other, fragment):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "1000", *TINY).returncode == 0
    made = cli("train", *other, "--run-dir", "o", "--steps", "1000", *TINY)
    assert made.returncode == 0, made.stderr
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes((tmp_path / "o" / "checkpoints" / "last.pt").read_bytes())
    os.utime(tmp_path / "r" / "checkpoints" / "last.pt")  # the newest checkpoint of r
    before = snapshot(tmp_path / "r")
    one_line(cli("eval", "r"), 2, fragment, "does not belong")
    one_line(cli("train", "--resume", "r", "--steps", "3000"), 2, fragment, "does not belong")
    assert snapshot(tmp_path / "r") == before  # best.pt and the events untouched


# --- failed starts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["tabular_q", "Taxi-v4", "--device", "cuda"], "no CUDA device"),
        (["tabular_q", "helper:Walk", "env_kwargs.raise_at_reset=true"], "the env broke at reset"),
    ],
    ids=["cuda", "env-crash"],
)
@pytest.mark.parametrize(
    "run_dir", [["--run-dir", "r"], ["--run-dir", "a/b/r"], []], ids=["named", "nested", "default"]
)
def test_a_failed_start_leaves_nothing_that_blocks_the_retry(cli, tmp_path, helper, args, fragment, run_dir):
    def left() -> list[Path]:  # but the helper env's own traces (its bytecode, the file it writes when imported)
        return sorted(p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts and p.name != "imported.txt")

    before = left()
    for _ in range(2):  # the retry fails for the same reason, not because of the first attempt
        one_line(cli("train", *args, *run_dir, "--steps", "1000"), 2, fragment)
        # nothing at all: not the run folder, nor the empty runs/<env>/<agent> folders made for it (stop 41)
        assert left() == before


def test_a_run_that_dies_at_start_is_removed_so_the_same_command_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from gymlab import loop

    real = loop.Trainer.run

    def crash(self, *a, **k):  # dies at the first step, after start-up built envs, agent and logger
        raise RuntimeError("crash at start")

    monkeypatch.setattr(loop.Trainer, "run", crash)
    spec = RunSpec(config_of({"agent": "tabular_q", "env": "Taxi-v4", "steps": 1000}), tmp_path / "r")
    from gymlab import runner

    with pytest.raises(RuntimeError, match="crash at start"):
        runner.run(spec)
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(loop.Trainer, "run", real)
    assert runner.run(spec).status == "finished"


# --- trust ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "r", "--episodes", "1"],
        ["train", "--resume", "r", "--steps", "2000"],
        ["watch", "r", "--record", "w.mp4"],
    ],
    ids=["eval", "resume", "watch"],
)
def test_code_named_in_a_run_folder_is_imported_only_when_trusted(cli, tmp_path, helper, command):
    made = cli("train", "tabular_q", "helper:Walk", "--run-dir", "r", "--steps", "1000", *TINY)
    assert made.returncode == 0, made.stderr  # named on the command line: trusted
    helper.unlink()
    one_line(cli(*command), 2, "helper:Walk", "--trust helper")
    assert not helper.exists()  # refused before the import
    trusted = cli(*command, "--trust", "helper")
    assert trusted.returncode == 0, trusted.stderr
    assert helper.exists()


# --- checkpoint writes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "code"), [("write", errno.ENOSPC), ("open", errno.EROFS)], ids=["disk-full", "read-only"]
)
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch, capsys, where, code):
    monkeypatch.chdir(tmp_path)
    calls = []
    real_save, real_open = checkpoint.torch.save, open

    def failing_save(obj, fh):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(code, os.strerror(code))
        real_save(obj, fh)

    def failing_open(path, *a, **k):
        if ".tmp-" in str(path):
            calls.append(1)
            if len(calls) >= 2:
                raise OSError(code, os.strerror(code))
        return real_open(path, *a, **k)

    if where == "write":
        monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    else:
        monkeypatch.setattr("builtins.open", failing_open)
    args = [
        "train",
        "tabular_q",
        "Taxi-v4",
        "--run-dir",
        "r",
        "--steps",
        "3000",
        "eval_every=0",
        "checkpoint_every=1000",
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write checkpoint" in err[0] and os.strerror(code) in err[0], err
    assert "previous checkpoint is kept" in err[0]
    folder = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "last.pt"]  # no temp file
    monkeypatch.undo()
    assert step_of(folder / "last.pt") == 1000


# --- interrupts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "fragments", "saved"),
    [
        (["train", "tabular_q", "helper:Walk", "env_kwargs.interrupt_at_build=1"], ["nothing was saved"], False),
        (["train", "tabular_q", "helper:Walk", "env_kwargs.interrupt_at_build=2"], ["nothing was saved"], False),
        (["train", "tabular_q", "helper:Walk", "env_kwargs.interrupt_at_step=1500"], ["interrupted at step"], True),
        (["eval", "done", "--trust", "helper"], ["interrupted during evaluation"], None),
    ],
    ids=["preflight", "start-up", "training", "eval"],
)
def test_an_interrupt_exits_130_with_one_line(cli, tmp_path, helper, command, fragments, saved):
    if command[0] == "eval":  # a finished run whose env interrupts its evaluation
        args = ["--run-dir", "done", "--steps", "1000", *TINY, "env_kwargs.interrupt_at_step=5000"]
        assert cli("train", "tabular_q", "helper:Walk", *args).returncode == 0
        config = (
            (tmp_path / "done" / "config.yaml").read_text().replace("interrupt_at_step: 5000", "interrupt_at_step: 3")
        )
        for name in ("last.pt", "best.pt"):  # the eval env interrupts on its third step
            path = tmp_path / "done" / "checkpoints" / name
            ckpt = checkpoint.load(path)
            ckpt["config"]["env_kwargs"]["interrupt_at_step"] = 3
            checkpoint.save(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
        (tmp_path / "done" / "config.yaml").write_text(config)
        one_line(cli(*command), 130, *fragments)
        return
    proc = cli(*command, "--run-dir", "r", "--steps", "100000", *TINY)
    line = one_line(proc, 130, *fragments)
    if saved:
        assert "gymlab train --resume r" in line
        assert 0 < step_of(tmp_path / "r" / "checkpoints" / "last.pt") < 100_000
    else:
        assert not (tmp_path / "r").exists()  # the same command can run again


# --- the pool ---------------------------------------------------------------------------------


def die(marker: Path, times: int, step: int, mean_return: float) -> bool:
    """An on_eval that kills its own worker process the first ``times`` times it is called (over retries)."""
    count = int(marker.read_text()) if marker.exists() else 0
    if count < times:
        marker.write_text(str(count + 1))
        os.kill(os.getpid(), signal.SIGKILL)
    return False


_DEATHS_AT_START: dict[Path, int] = {}  # in a worker process: the deaths counted when its first evaluation came


def outlive(marker: Path, times: int, step: int, mean_return: float) -> bool:
    """An on_eval that goes on until the other run's worker has died ``times`` times and this process began after.

    A process of the pool that started after the last death is one the broken pools did not take:
    the run then stops itself (status ``stopped``), so it was running across every death.
    """
    deaths = int(marker.read_text()) if marker.exists() else 0
    return _DEATHS_AT_START.setdefault(marker, deaths) >= times


@pytest.mark.parametrize(("times", "status"), [(1, "finished"), (2, "failed")], ids=["dies-once", "dies-twice"])
def test_a_dead_worker_is_retried_once_and_the_others_go_on(tmp_path, times, status):
    config = {"agent": "tabular_q", "env": "Taxi-v4", "steps": 3000, "eval_every": 1000, "eval_episodes": 2}
    deaths = tmp_path / "deaths"
    dying = RunSpec(config_of(config), tmp_path / "dying", on_eval=functools.partial(die, deaths, times))
    # The other run goes on until the last death has broken the pool under it (10**7 steps would take minutes):
    # each break stopped it beside the dying one, and a break is counted only against the run whose worker died.
    calm_config = config_of({**config, "seed": 1, "steps": 10**7})
    calm = RunSpec(calm_config, tmp_path / "calm", on_eval=functools.partial(outlive, deaths, times))
    outcomes = run_all([dying, calm], workers=2)
    assert outcomes[0].status == status, outcomes[0]
    if status == "failed":
        assert "died twice" in (outcomes[0].error or "")
    else:
        assert outcomes[0].step == 3000 and step_of(tmp_path / "dying" / "checkpoints" / "last.pt") == 3000
    assert int(deaths.read_text()) == times
    assert outcomes[1].status == "stopped", outcomes[1]  # its own on_eval stopped it, in a pool after the last break
    assert 0 < outcomes[1].step < 10**7 and step_of(tmp_path / "calm" / "checkpoints" / "last.pt") == outcomes[1].step


def test_ctrl_c_stops_every_worker_with_a_checkpoint(tmp_path):
    args = ["train", "tabular_q", "Taxi-v4", "--seeds", "0-2", "--workers", "2", "--run-dir", "many"]
    args += ["--steps", "50000000", "eval_every=0", "checkpoint_every=0"]
    # A session of its own, so that a failed test can stop the workers too (50M steps each).
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymlab", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(
            list((tmp_path / "many" / s).glob("events.out.tfevents.*")) for s in ("s0", "s1")
        ):
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # to the parent only, as a terminal's Ctrl-C reaches it first
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the parent's session
    line = one_line(
        subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), 130, "2 runs saved a checkpoint"
    )
    assert "gymlab train --resume many/s0" in line and "seeds 2 saved nothing" in line
    for seed in ("s0", "s1"):
        assert 0 < step_of(tmp_path / "many" / seed / "checkpoints" / "last.pt") < 50_000_000
    assert not (tmp_path / "many" / "s2").exists()


# --- damaged checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda c: c["loop"].pop("step"), "'loop.step' is missing"),
        (lambda c: c["loop"].update(step="many"), "'loop.step' is a str"),
        (lambda c: c.update(agent_state=[1, 2]), "'agent_state' is a list"),
        (lambda c: c.pop("rng"), "'rng' is missing"),
    ],
    ids=["missing", "wrong-type", "agent-state", "rng"],
)
def test_damaged_checkpoint_internals_are_one_line(cli, tmp_path, damage, fragment):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "1000", *TINY).returncode == 0
    for name in ("last.pt", "best.pt"):
        path = tmp_path / "r" / "checkpoints" / name
        ckpt = {k: v for k, v in checkpoint.load(path).items() if k not in ("format", "version")}
        damage(ckpt)
        checkpoint.save(path, ckpt)
    with pytest.raises(GymlabError, match="is damaged"):
        runs.load_run(tmp_path / "r")
    one_line(cli("eval", "r"), 2, fragment)
    one_line(cli("train", "--resume", "r", "--steps", "2000"), 2, fragment)


def test_trust_is_checked_before_any_import(tmp_path):
    config = {"agent": "evil:Agent", "env": "evil.envs:Env", "wrappers": ["atari", "evil.wrap:fn"]}
    assert runs.foreign_code(config) == [("agent", "evil:Agent"), ("env", "evil.envs:Env"), ("wrapper", "evil.wrap:fn")]
    assert runs.foreign_code(config, trust=["evil"]) == []
    builtin = {"agent": "dqn", "env": "CartPole-v1", "wrappers": ["atari"]}
    assert runs.foreign_code(builtin) == [] and runs.foreign_code({**builtin, "agent": "gymlab.agents.dqn:DQN"}) == []
    with pytest.raises(GymlabError, match=r"--trust evil\b"):
        runs.check_trust(config, "somewhere")


# --- a copy of a trained run: reads and resumes that must not write ------------------------------------


def _as_is(run: Path, tmp: Path, cartpole: Path) -> None:
    pass


def _foreign(run: Path, tmp: Path, cartpole: Path) -> None:
    shutil.copy(cartpole / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


def _sibling(run: Path, tmp: Path, cartpole: Path) -> None:
    """A run of the same agent and env whose checkpoint was copied in: another run's, not the folder's."""
    config = run / "config.yaml"
    config.write_text(re.sub(r"(?m)^steps: (\d+)$", lambda m: f"steps: {int(m[1]) + 1000}", config.read_text()))


def _foreign_best(run: Path, tmp: Path, cartpole: Path) -> None:
    shutil.copy(cartpole / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")


RESUMES = {
    # case: (prepare the run folder, argv, fragments)
    "resume-from-best": (_as_is, ["train", "--resume", "RUN/checkpoints/best.pt", "--steps", "4000"], ["best.pt"]),
    "foreign-eval": (_foreign, ["eval", "RUN"], ["last.pt"]),
    "foreign-watch": (_foreign, ["watch", "RUN", "--record", "w.mp4", "--episodes", "1"], ["last.pt"]),
    "foreign-resume": (_foreign, ["train", "--resume", "RUN", "--steps", "4000"], ["last.pt"]),
    # helper-26: "...differs in steps); it does not belong to this run" read as if --steps could mend it
    "sibling-eval": (_sibling, ["eval", "RUN"], ["differs in steps", "it is another run's and does not belong there"]),
    # resuming from last.pt would in time overwrite another run's best.pt
    "foreign-best-resume": (_foreign_best, ["train", "--resume", "RUN", "--steps", "4000"], ["best.pt", "agent 'dqn'"]),
}


@pytest.mark.parametrize("case", RESUMES)
def test_reads_and_resumes_refuse_a_foreign_or_older_checkpoint_without_writing(
    taxi_run: Path, cartpole_dqn_run: Path, tmp_path: Path, case: str
):
    prepare, argv, fragments = RESUMES[case]
    run = copy_run(taxi_run, tmp_path / "run")
    prepare(run, tmp_path, cartpole_dqn_run)
    before = snapshot(run)
    proc = gymlab(*[a.replace("RUN", str(run)) for a in argv], cwd=tmp_path)
    assert_one_line(proc, 2, *fragments)
    assert_nothing_lost(run, before)


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(["train", "--resume", "RUN", "--steps", "2500"], id="resume"),
        pytest.param(["train", "--resume", "RUN/checkpoints/last.pt", "--steps", "2500"], id="resume-checkpoint"),
    ],
)
def test_a_second_writer_is_refused_while_the_first_trains_and_its_checkpoints_only_advance(
    taxi_run: Path, tmp_path: Path, second: list[str]
):
    run = copy_run(taxi_run, tmp_path / "run")
    events = len(list(run.glob("events.out.tfevents.*")))
    first = Child(["train", "--resume", run, "--steps", "50000000"], tmp_path)  # a checkpoint every 500 steps
    try:
        deadline = time.time() + 120
        while len(list(run.glob("events.out.tfevents.*"))) <= events and first.popen.poll() is None:
            assert time.time() < deadline, "the first writer never started"
            time.sleep(0.05)
        seen = step_of(run / "checkpoints" / "last.pt")
        proc = gymlab(*[a.replace("RUN", str(run)) for a in second], cwd=tmp_path)
        assert_one_line(proc, 2, str(run.name))
        assert first.popen.poll() is None, "the first writer died"
        assert step_of(run / "checkpoints" / "last.pt") >= seen
    finally:
        first.popen.send_signal(signal.SIGINT)
        first_proc = first.wait(timeout=60)
    assert first_proc.code == 130, first_proc.show()
    assert step_of(run / "checkpoints" / "last.pt") > 2000


# --- a run folder names no code gymlab imports (it may come from anyone) ------------------------------

PLANTED_HELPER = """
from pathlib import Path
Path({marker!r}).write_text("imported")
import gymnasium as gym
from gymlab.agents.tabular_q import TabularQ as Agent
Env = gym.make("Taxi-v4").unwrapped.__class__
def wrap(env, *, train):
    return env
"""


def _plant(run: Path, marker: Path, key: str, value: Any) -> None:
    """Name ``value`` under ``key`` in the run's config.yaml and in both its checkpoints; put helper.py beside."""
    import yaml

    (run / "helper.py").write_text(PLANTED_HELPER.format(marker=str(marker)))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("last.pt", "best.pt"):
        payload = checkpoint.load(run / "checkpoints" / name)
        payload["config"][key] = value
        if key in payload:
            payload[key] = value
        resave(run / "checkpoints" / name, payload)


PLANTED = {"agent": "helper:Agent", "env": "helper:Env", "wrappers": ["helper:wrap"]}
READERS = {
    "eval": ["eval", "."],
    "watch": ["watch", ".", "--record", "w.mp4", "--episodes", "1"],
    "resume": ["train", "--resume", ".", "--steps", "4000"],
}


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("key", PLANTED)
def test_a_run_folder_naming_its_own_code_is_refused_without_importing_it(
    taxi_run: Path, tmp_path: Path, key: str, command: str
):
    run = copy_run(taxi_run, tmp_path / "run")
    marker = tmp_path / "IMPORTED"
    _plant(run, marker, key, PLANTED[key])
    before = snapshot(run)
    proc = gymlab(*READERS[command], cwd=run)  # `python -m` puts the run folder first on sys.path
    assert_one_line(proc, 2, "helper")
    assert not marker.exists(), "gymlab imported helper.py from the run folder"
    assert_nothing_lost(run, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_refused_in_one_line_and_loses_nothing(taxi_run: Path, tmp_path: Path):
    run = copy_run(taxi_run, tmp_path / "run")
    before = snapshot(run)
    for path in [run, *run.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        proc = gymlab("train", "--resume", run, "--steps", "4000", cwd=tmp_path)
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert_one_line(proc, 2, str(run.name))
    assert_nothing_lost(run, before)


# --- a failed start, then the same command succeeds ----------------------------------------------------

FAILED_STARTS = {
    # case: (what makes the first try fail, fragment)
    "no-cuda": (["--device", "cuda"], "cuda"),
    "env-kwargs": (["env_kwargs.map_name=9x9"], "map_name"),
    "full-disk": (["--fsize"], "last.pt"),  # the first checkpoint cannot be written
}


@pytest.mark.parametrize("case", FAILED_STARTS)
def test_a_failed_first_try_leaves_nothing_in_the_way_of_the_retry(tmp_path: Path, case: str):
    extra, fragment = FAILED_STARTS[case]
    args = ["train", "tabular_q", "Taxi-v4", "--steps", "2000", "checkpoint_every=500", "--run-dir", "r"]
    if case == "env-kwargs":
        args[2] = "FrozenLake-v1"
    fsize = 20_000 if extra == ["--fsize"] else None  # Taxi's Q-table alone is 24 kB
    first = gymlab(*args, *[e for e in extra if e != "--fsize"], cwd=tmp_path, fsize=fsize)
    assert_one_line(first, 2, fragment)
    retry = gymlab(*args, cwd=tmp_path)
    assert_ok(retry)
    assert step_of(tmp_path / "r" / "checkpoints" / "last.pt") == 2000


def test_the_resume_hint_names_the_trust_the_runs_own_code_needs(tmp_path):
    # A new process trusts no user module: "continue with" must be a command that works as printed.
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "agent: agentmod:Agent\nenv: envmod:Env-v0\nwrappers: [wrapmod:W, agentmod:W]\n"
    )
    hint = runs.resume_command(folder)
    assert hint == f"gymlab train --resume {folder} --trust agentmod --trust envmod --trust wrapmod"
    (folder / "config.yaml").write_text("agent: dqn\nenv: CartPole-v1\n")
    assert runs.resume_command(folder) == f"gymlab train --resume {folder}"
    (folder / "config.yaml").write_text("[not, a, config]\n")
    assert runs.resume_command(folder) == f"gymlab train --resume {folder}"


@pytest.mark.parametrize("name", ["sp ace", "it's", "$HOME"])
def test_the_commands_gymlab_suggests_paste_back_to_the_same_paths(cli, tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.yaml").write_text("agent: agentmod:Agent\nenv: CartPole-v1\n")
    assert shlex.split(runs.resume_command(folder)) == [
        "gymlab", "train", "--resume", str(folder), "--trust", "agentmod"
    ]  # fmt: skip
    # The same through the CLI: a run folder that exists already, and a finished --seeds run.
    args = ["random", "CartPole-v1", "--steps", "50", "eval_every=0", "eval_episodes=1"]
    assert cli("train", *args, "--run-dir", f"./{name}-run").returncode == 0
    line = one_line(cli("train", *args, "--run-dir", f"./{name}-run"), 2, "already exists")
    assert shlex.split(line.split("continue it with: ")[1])[3] == f"{name}-run"
    done = cli("train", *args, "--seeds", "0-1", "--run-dir", f"./{name}-seeds")
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout.split("compare them: ")[1])[2] == f"{name}-seeds"


@pytest.mark.parametrize("inside", ["sub", "checkpoints/new", "videos/deep/er"])
def test_a_run_folder_is_never_created_inside_another(cli, tmp_path, inside):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "1000", *TINY).returncode == 0
    before = snapshot(tmp_path / "r")
    one_line(
        cli("train", "tabular_q", "Taxi-v4", "--run-dir", f"r/{inside}", "--steps", "1000"), 2, "inside run folder"
    )
    assert snapshot(tmp_path / "r") == before


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(cli, tmp_path):
    """It trained the whole resume, then failed to save it, advising 'free disk space'."""
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "1000", *TINY).returncode == 0
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    last.unlink()
    last.mkdir()
    before = snapshot(tmp_path / "r")
    one_line(cli("train", "--resume", "r", "--steps", "200000"), 2, "last.pt is a folder", "move it away")
    assert snapshot(tmp_path / "r") == before
