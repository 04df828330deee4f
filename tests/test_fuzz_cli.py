"""Generated command lines: every option of every subcommand given hostile numbers and text, and every path
argument given files, folders, FIFOs, symlinks and missing paths.

Each command ends by the project's rule: exit 0 with no traceback, or exit 2 with one ``gymlab: error:``
line; never a hang (a deadline stops a command that blocks), and never a run folder half-written. The
options come from ``gymlab.cli.app`` (tests/strategies.py), so a new command or option is fuzzed too.
The named cases below are the defects issue 23 found, each a test that failed before its fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import strategies as fz
import yaml
from clihelp import assert_one_line, gymlab
from conftest import Result, gymlab_inprocess
from hypothesis import given, settings
from hypothesis import strategies as st

#: Seconds one in-process command may take before it counts as hanging.
DEADLINE_S = 60


class Hung(BaseException):
    """A command still running at its deadline (a BaseException: no ``except Exception`` or ``OSError`` in the
    code under test may swallow it, as a blocked read's ``except OSError`` would swallow a TimeoutError)."""


OPTIONS = fz.cli_options()
COMMANDS = sorted({o.command for o in OPTIONS})


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body takes longer than ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise Hung(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_here(*argv: Any, cwd: Path) -> Result:
    """``gymlab ARGV`` in this process, from ``cwd``, under the deadline."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with deadline(DEADLINE_S):
            return gymlab_inprocess(*argv)
    finally:
        os.chdir(old)


def assert_by_the_rule(result: Result) -> None:
    problems = list(fz.one_line_or_ok(result.code, result.out, result.err))
    assert not problems, f"{'; '.join(problems)}\n{result.ok()}"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, taxi_run: Path) -> dict[str, Path]:
    """What the commands act on: a finished run, a tiny sweep file, a folder of user envs."""
    root = tmp_path_factory.mktemp("fuzzcli")
    sweep = root / "tiny.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "agent": "tabular_q",
                "env": "FrozenLake-v1",
                "base": {"steps": 40, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 0},
                "method": "grid",
                "space": {"learning_rate": [0.1]},
                "seeds": 1,
            }
        )
    )
    return {"root": root, "run": taxi_run, "sweep": sweep}


def base_argv(command: str, base: dict[str, Path], work: Path) -> list[str]:
    """A valid, cheap command line for ``command`` that an option is added to."""
    run, new = str(base["run"]), str(work / "new-run")
    return {
        "train": ["train", "tabular_q", "FrozenLake-v1", "--steps", "30", "eval_episodes=1", "--run-dir", new],
        "eval": ["eval", run, "--episodes", "1"],
        "watch": ["watch", run, "--episodes", "1", "--record", str(work / "w.mp4")],
        "check": ["check", "FrozenLake-v1", "--steps", "5"],
        "compare": ["compare", run, "--out", str(work / "plot.png")],
        "sweep": ["sweep", str(base["sweep"]), "--run-dir", str(work / "sweep")],
        "list": ["list"],
    }[command]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "sweep"])
@given(data=st.data())
@settings(max_examples=fz.examples(12))
def test_every_option_takes_hostile_values_by_the_rule(command: str, base: dict[str, Path], data: Any) -> None:
    option = data.draw(st.sampled_from([o for o in OPTIONS if o.command == command]), label="option")
    argv = [option.flag] if option.kind == "flag" else [option.flag, data.draw(fz.option_values(option))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        assert_by_the_rule(run_here(*base_argv(command, base, work), *argv, cwd=work))


@pytest.mark.needs("sweep")
@given(data=st.data())
@settings(max_examples=fz.examples(6))
def test_sweep_options_take_hostile_values_by_the_rule(base: dict[str, Path], data: Any) -> None:
    # Only values that fail: a valid one starts worker processes (the sweep suite runs those).
    option = data.draw(st.sampled_from([o for o in OPTIONS if o.command == "sweep" and o.kind != "path"]))
    value = data.draw(st.sampled_from(["0", "-1", "nan", "1e308", "x", "", "99999999999999999999999"]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = run_here(*base_argv("sweep", base, work), option.flag, value, cwd=work)
        if option.flag != "--address":  # an address is only read by the ray backend
            assert result.code == 2, result.ok()
        assert_by_the_rule(result)


#: Every path a command reads or writes: (command, where the path goes in its argv).
PATH_ARGS = [
    ("train", "--config"),
    ("train", "--run-dir"),
    ("train", "--resume"),
    ("eval", "RUN"),
    ("watch", "RUN"),
    ("watch", "--record"),
    ("compare", "RUN"),
    ("compare", "--out"),
    ("check", "ENV"),
    ("sweep", "FILE"),
]


def path_argv(command: str, where: str, path: Path, base: dict[str, Path], work: Path) -> list[str]:
    argv = base_argv(command, base, work)
    if where == "--resume":
        return ["train", "--resume", str(path)]
    if where == "ENV":
        return ["check", f"{path}:Env"]
    if where in ("RUN", "FILE"):
        return [argv[0], str(path), *argv[2:]]
    if where in argv:
        argv[argv.index(where) + 1] = str(path)
        return argv
    return [*argv, where, str(path)]


@pytest.mark.parametrize("case", PATH_ARGS, ids=[f"{c}-{w}" for c, w in PATH_ARGS])
@given(kind=st.sampled_from(fz.PATH_KINDS))
@settings(max_examples=len(fz.PATH_KINDS))
def test_every_path_argument_is_read_only_when_it_is_a_regular_file(
    base: dict[str, Path], case: tuple[str, str], kind: str
) -> None:
    command, where = case
    if command == "sweep" and kind == "missing":
        return  # a missing sweep file is refused by the sweep suite; here it would need optuna only to say so
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = fz.make_path(kind, work / "paths")
        result = run_here(*path_argv(command, where, path, base, work), cwd=work)
        assert_by_the_rule(result)
        reads = where not in ("--run-dir", "--record", "--out")
        if reads and kind not in ("empty-file", "text-file", "folder"):  # nothing to read there: refused
            assert result.code == 2, result.ok()


# --- the defects issue 23 found, one test each ------------------------------------------------------


@pytest.mark.parametrize("seeds", ["0-99999999999", "0-100000", "0-5,7-99999999"])
def test_a_huge_seed_range_is_refused_before_any_work(tmp_path: Path, seeds: str) -> None:
    proc = gymlab("train", "random", "CartPole-v1", "--steps", "100", "--seeds", seeds, cwd=tmp_path, timeout=60)
    assert_one_line(proc, 2, "--seeds", "1,000")  # it names the limit and how to split the range
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["train", "random", "CartPole-v1", "--config"], ["eval"], ["watch"], ["compare"]])
def test_a_fifo_is_never_read(tmp_path: Path, args: list[str]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = run_here(*args, fifo, cwd=tmp_path)
    assert result.code == 2, result.ok()
    assert "FIFO" in result.err or "is not a folder" in result.err, result.err
    assert "has no checkpoint" not in result.err


def test_watch_fps_is_bounded(base: dict[str, Path], tmp_path: Path) -> None:
    result = run_here("watch", base["run"], "--episodes", "1", "--fps", "1e308", cwd=tmp_path)
    assert result.code == 2 and "--fps" in result.err, result.ok()


def test_compare_refuses_a_file_of_no_run(tmp_path: Path, taxi_run: Path) -> None:
    (tmp_path / "runs").mkdir()
    shutil.copytree(taxi_run, tmp_path / "runs" / "taxi")  # a run beside the file must not be pooled
    stray = tmp_path / "runs" / "notes.txt"
    stray.write_text("not a run")
    result = run_here("compare", stray, "--out", tmp_path / "plot.png", cwd=tmp_path)
    assert result.code == 2 and "notes.txt" in result.err, result.ok()
    assert not (tmp_path / "plot.png").exists()


def test_eval_best_without_best_pt_says_which_checkpoints_exist(tmp_path: Path, taxi_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(taxi_run, run)
    (run / "checkpoints" / "best.pt").unlink()
    result = run_here("eval", run, "--checkpoint", "best", "--episodes", "1", cwd=tmp_path)
    assert result.code == 2, result.ok()
    assert "best.pt" in result.err and "last.pt" in result.err and "--checkpoint last" in result.err


def test_a_bad_device_flag_is_blamed_on_the_flag(tmp_path: Path) -> None:
    result = run_here("train", "dqn", "CartPole-v1", "--device", "tpu", cwd=tmp_path)
    assert result.code == 2 and "--device tpu" in result.err, result.ok()
    assert "configs/dqn" not in result.err
    assert "expected auto, cpu, cuda, cuda:N or mps" in result.err, result.ok()  # the names, not a regex


@pytest.mark.needs("ffmpeg")
def test_a_display_with_no_server_is_treated_like_no_display(tmp_path: Path, taxi_run: Path) -> None:
    env = {"DISPLAY": ":77", "SDL_VIDEODRIVER": None, "XDG_RUNTIME_DIR": None, "WAYLAND_DISPLAY": None}
    proc = gymlab("watch", taxi_run, "--episodes", "1", "--record", tmp_path / "w.mp4", cwd=tmp_path, env=env)
    assert proc.code == 0, proc.show()
    assert "no screen (cannot open a window" in proc.out, proc.show()
    assert (tmp_path / "w.mp4").stat().st_size > 0
    assert "XDG_RUNTIME_DIR" not in proc.err, proc.show()


@pytest.mark.needs("sweep")
def test_a_sweep_whose_every_trial_fails_exits_nonzero(tmp_path: Path) -> None:
    env_id = fz.write_env_module(tmp_path, "sweepenvs")
    sweep = tmp_path / "failing.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "agent": "random",
                "env": env_id,
                "base": {"steps": 20, "eval_every": 0, "eval_episodes": 1, "env_kwargs": {"fault": "step"}},
                "method": "grid",
                "space": {"num_envs": [1, 2]},
                "seeds": 1,
            }
        )
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = gymlab("sweep", sweep, "--max-concurrent", "1", cwd=tmp_path, env=env, timeout=180)
    assert proc.code == 2, proc.show()
    assert "every trial" in proc.err and "broken step" in proc.err, proc.show()
