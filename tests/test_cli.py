"""The command line end to end, in subprocesses: training, eval, list, resume, and every bad input
answered with one line, exit code 2, no traceback, and nothing already written lost."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import assert_nothing_lost, assert_ok, gymlab, read_first_line_then_go, snapshot
from conftest import gymlab_inprocess

from gymlab.checkpoint import Checkpoint


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gymlab: error: ")
    assert "Traceback" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_then_eval_then_list(cli, tmp_path):
    proc = cli("train", "tabular_q", "FrozenLake-v1", "--steps", "3000", "--seed", "1", "eval_episodes=20")
    assert proc.returncode == 0, proc.stderr
    assert "done: 3,000 steps" in proc.stdout and "run: runs/FrozenLake-v1/tabular_q/" in proc.stdout
    assert "step 3,000/3,000 (100%)" in proc.stdout  # plain progress lines when not a terminal
    (run,) = (tmp_path / "runs" / "FrozenLake-v1" / "tabular_q").iterdir()
    assert run.name.endswith("-s1")
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    ev = cli("eval", str(run), "--episodes", "7", "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["episodes"] == 7 and {"mean_return", "std_return"} <= result.keys()
    assert 0.0 <= result["mean_return"] <= 1.0
    human = cli("eval", str(run / "checkpoints" / "last.pt"), "--episodes", "3")
    assert human.returncode == 0 and "± " in human.stdout and "over 3 episodes" in human.stdout

    listing = cli("list")
    assert listing.returncode == 0
    assert "tabular_q" in listing.stdout and "Discrete" in listing.stdout and "FrozenLake-v1" in listing.stdout
    # A variant preset's command works as printed from this folder (not only from the repo root).
    variants = [line.split("--config ")[1].strip() for line in listing.stdout.splitlines() if "--config " in line]
    assert variants and all((tmp_path / path).is_file() for path in variants), variants


CHATTY_ENV = """
import gymnasium as gym
import numpy as np


class Chatty(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        print("chatty: reset")
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        print("chatty: step")
        return np.zeros(2, np.float32), 1.0, self.t >= 5, False, {}
"""


def test_eval_json_is_the_only_thing_on_stdout_when_the_env_prints(cli, tmp_path):
    """`eval --json | jq`: what an env prints goes to stderr, so stdout stays one JSON object."""
    (tmp_path / "chatty.py").write_text(CHATTY_ENV)
    assert cli("train", "random", "chatty:Chatty", "--steps", "50", "--run-dir", "r").returncode == 0
    ev = cli("eval", "r", "--episodes", "2", "--json", "--trust", "chatty")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["mean_return"] == 5.0
    assert "chatty: step" in ev.stderr


def test_config_file_and_overrides_reach_the_resolved_config(cli, tmp_path):
    (tmp_path / "my.yaml").write_text("agent: tabular_q\nenv: Taxi-v4\nsteps: 2000\nhparams:\n  gamma: 0.8\n")
    proc = cli("train", "--config", "my.yaml", "learning_rate=0.25", "--run-dir", "r")
    assert proc.returncode == 0, proc.stderr
    written = (tmp_path / "r" / "config.yaml").read_text()
    assert "gamma: 0.8" in written and "learning_rate: 0.25" in written and "steps: 2000" in written


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "tabularq", "Taxi-v4"], ["unknown agent 'tabularq'", "did you mean tabular_q"]),
        (["train", "tabular_q", "Taxi-v3"], ["unknown environment 'Taxi-v3'", "Taxi-v4"]),
        (
            ["train", "tabular_q", "CartPole-v1"],
            ["cannot train on CartPole-v1", "Discrete", "observation space is Box"],
        ),
        (
            ["train", "tabular_q", "Taxi-v4", "learnig_rate=0.1"],
            ["unknown key 'learnig_rate'", "hparams.learning_rate"],
        ),
        (["train", "tabular_q", "Taxi-v4", "gamma=2"], ["'hparams.gamma' = 2"]),
        (["train", "tabular_q", "Taxi-v4", "--config", "missing.yaml"], ["cannot read config missing.yaml"]),
        (["train", "tabular_q", "Taxi-v4", "--bogus"], ["No such option: --bogus"]),
        (["train", "tabular_q", "Taxi-v4", "--steps", "many"], ["Invalid value for '--steps'", "valid integer"]),
        (["eval", "nowhere"], ["no run folder or checkpoint at nowhere"]),
        (["eval", "nowhere", "--seed", "-1"], ["Invalid value for '--seed'", "greater than or equal to 0"]),
        (["train", "tabular_q", "Taxi-v4", "--steps", "0"], ["Invalid value for '--steps'"]),
        (["train", "tabular_q", "Taxi-v4", "gamma=" + "x" * 20_000], ["'hparams.gamma'"]),  # capped, one line
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, fragments):
    proc = cli(*args)
    assert_one_line_error(proc, *fragments)
    assert len(proc.stderr) < 1_100  # error messages are capped
    assert not (tmp_path / "runs").exists()  # nothing is created for a rejected command


def test_malformed_yaml(cli, tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: 10\nhparams: {gamma: 0.9\n")
    assert_one_line_error(cli("train", "tabular_q", "Taxi-v4", "--config", "bad.yaml"), "not valid YAML at line")


def test_existing_run_folder_is_never_overwritten(cli, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    proc = cli("train", "tabular_q", "Taxi-v4", "--run-dir", "taken", "--steps", "100")
    assert_one_line_error(proc, "folder taken already exists; choose a new --run-dir")
    assert "--resume" not in proc.stderr  # not a run folder: resuming it cannot work, so it is not offered
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"


def test_unwritable_output_folder(cli, tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = cli("train", "tabular_q", "Taxi-v4", "--run-dir", "a_file/run", "--steps", "100")
    assert_one_line_error(proc, "cannot create run folder a_file/run: a_file is a file, not a folder", "writable")


def test_corrupt_foreign_and_wrong_checkpoints(cli, tmp_path):
    ok = cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "500", "eval_episodes=1")
    assert ok.returncode == 0, ok.stderr
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 3])
    assert_one_line_error(cli("eval", "r"), "corrupt or truncated")
    assert_one_line_error(cli("train", "--resume", "r"), "corrupt or truncated")
    import torch

    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    assert_one_line_error(cli("eval", "foreign.pt"), "not a gymlab checkpoint")
    # stop 32: both said "run folder ... has no checkpoint yet; train it first", of folders no run wrote
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("eval", "empty"), "empty is not a run folder")
    shutil.copytree(tmp_path / "r" / "checkpoints", tmp_path / "r2" / "checkpoints")
    (tmp_path / "r2" / "config.yaml").write_text((tmp_path / "r" / "config.yaml").read_text())
    assert_one_line_error(
        cli("eval", "r2/checkpoints"), "r2/checkpoints is a run's checkpoints folder", "give the run folder r2"
    )


def test_the_folder_of_several_seeds_points_to_its_runs(cli, tmp_path):
    """``--seeds 0,1 --run-dir r`` makes r/s0 and r/s1; eval, watch or resume of r used to say "train it first"."""
    ok = cli(
        "train", "tabular_q", "FrozenLake-v1", "--seeds", "0,1", "--run-dir", "r", "--steps", "200", "eval_episodes=1"
    )
    assert ok.returncode == 0, ok.stderr
    hint = ("r is not a run folder but holds 2 runs (s0, s1)", "e.g. r/s0")
    assert_one_line_error(cli("eval", "r"), *hint)
    assert_one_line_error(cli("watch", "r", "--record", "v.mp4"), *hint)
    assert_one_line_error(cli("train", "--resume", "r"), *hint)
    assert cli("eval", "r/s0").returncode == 0


def test_resume_continues_to_a_larger_budget(cli, tmp_path):
    assert cli("train", "tabular_q", "Taxi-v4", "--run-dir", "r", "--steps", "1000", "eval_episodes=1").returncode == 0
    assert_one_line_error(cli("train", "--resume", "r"), "already reached step 1,000", "--steps")
    more = cli("train", "--resume", "r", "--steps", "3000")
    assert more.returncode == 0, more.stderr
    assert Checkpoint.read(tmp_path / "r" / "checkpoints" / "last.pt").step == 3000
    assert "done: 3,000 steps, 2,000 of them in " in more.stdout  # the time and the rate are this session's
    assert_one_line_error(cli("train", "--resume", "r", "tabular_q"), "--resume continues a run")


# --- eval and watch read any run, whatever it was trained with ------------------------------------------------

CYCLE = {
    "reinforce-8-envs": ["reinforce", "CartPole-v1", "--steps", "320", "num_envs=8", "hidden_sizes=[8]"],
    "dqn-2-envs-save-replay": [
        "dqn",
        "CartPole-v1",
        "--steps",
        "200",
        "num_envs=2",
        "save_replay=true",
        "net_arch=[8]",
    ],
}
CYCLE_COMMANDS = {
    "eval": ["eval", "RUN", "--json", "--episodes", "2"],
    "watch": ["watch", "RUN", "--record", "out.mp4", "--episodes", "1"],
}


@pytest.fixture(scope="module")
def cycle_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run per CYCLE entry, trained in-process."""
    trained = {}
    for name, args in CYCLE.items():
        run = tmp_path_factory.mktemp("cycle") / name
        result = gymlab_inprocess("train", *args, "eval_episodes=1", "--run-dir", run)
        assert result.code == 0, result.ok()
        trained[name] = run
    return trained


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=[pytest.mark.needs("ffmpeg")] if c == "watch" else []) for c in CYCLE_COMMANDS]
)
@pytest.mark.parametrize("run_name", CYCLE)
def test_eval_and_watch_read_runs_of_several_envs_and_a_saved_replay(
    cycle_runs: dict[str, Path], run_name: str, command: str, tmp_path: Path
):
    run = cycle_runs[run_name]
    before = snapshot(run)
    args = [str(run) if a == "RUN" else a for a in CYCLE_COMMANDS[command]]
    proc = gymlab(*args, cwd=tmp_path)
    assert_ok(proc)
    if command == "eval":
        assert json.loads(proc.out.strip().splitlines()[-1])["episodes"] == 2
    else:
        assert (tmp_path / "out.mp4").stat().st_size > 0
    assert_nothing_lost(run, before)


def test_the_clis_bounds_are_the_configs():
    # cli.py keeps copies (it imports no config at start-up, so `gymlab --help` stays light): they must agree.
    from gymlab import cli, config

    assert (cli.MAX_SEED, cli.MAX_WORKERS, cli.MAX_TRIALS) == (config.MAX_SEED, config.MAX_AT_ONCE, config.MAX_TRIALS)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_that_is_not_utf8_gets_question_marks_not_a_crash(tmp_path, encoding):
    """The tables' ─, ± and · raised UnicodeEncodeError: list, eval and train (killed by its progress line) died."""
    for argv in (["list"], ["train", "tabular_q", "FrozenLake-v1", "--steps", "300", "eval_episodes=1"]):
        assert_ok(gymlab(*argv, cwd=tmp_path, env={"PYTHONIOENCODING": encoding}, timeout=300))


def test_a_deleted_working_folder_is_one_line(tmp_path):
    """Torch's math library aborted on it ('Intel oneMKL FATAL ERROR'), exit 2 without gymlab's line."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (
        "import os, shutil, sys\n"
        f"os.chdir({str(gone)!r}); shutil.rmtree({str(gone)!r})\n"
        "sys.argv = ['gymlab', 'list']\n"
        "from gymlab.__main__ import run\n"
        "run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("gymlab: error: the current folder no longer exists") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [["list"], ["check", "FrozenLake-v1", "--steps", "20"]])
def test_a_command_whose_reader_is_gone_before_it_writes_succeeds_quietly(tmp_path, argv):
    """`gymlab list | head -1`: click turned the broken pipe into a silent exit 1, failing the shell's pipeline."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymlab", *argv], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before gymlab (still importing torch) writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_a_reader_that_goes_away_ends_the_output_not_the_run(tmp_path):
    """`gymlab train ... | head -1`: the run died silently at its next progress line (exit 1, no final checkpoint)."""
    code, err = read_first_line_then_go(
        "train", "tabular_q", "Taxi-v4", "--steps", "60000", "eval_episodes=1", "log_every=1000", "--run-dir", "r",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0 and err == "", err
    assert Checkpoint.read(tmp_path / "r" / "checkpoints" / "last.pt").step == 60000
