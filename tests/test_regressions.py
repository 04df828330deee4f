"""Issue 11's "What was found", one test per class (1-8), each a table of cases.

Every case runs ``python -m gymlab`` in a subprocess (exit codes, stderr and signals are what is
under test), from its own folder, and states: the exit code, a stable fragment of the one error
line (the key, file, module or extra it must name, never a whole sentence), no traceback, and that
nothing already written was lost (every file of the run folder it touched is byte-for-byte as
before, or, for a run still being written, its newest checkpoint never goes back).

Children start with SIGINT at its default (a child of a non-interactive shell inherits it ignored;
ANCHORS.md), at most 4 GiB of address space (a YAML alias bomb must fail, not eat the machine),
and stdout/stderr in files of which the first 64 KiB are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ctrl_c_after_update, gymlab_inprocess

from gymlab import checkpoint, runs

MEMORY_LIMIT = 4 << 30  # bytes of address space for a child
OUTPUT_LIMIT = 64 << 10  # bytes of stdout/stderr read back
MAX_ERROR_LINE = 2000  # characters: error messages are capped in length


#: Cases that fail on main until the fix named lands: test node name -> reason. Strict, so a fixed
#: case shows up (XPASS) and its line here is deleted.
PENDING: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _pending(request: pytest.FixtureRequest) -> None:
    """Mark a case listed in :data:`PENDING` as an expected (strict) failure."""
    reason = PENDING.get(request.node.name)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# --- running gymlab in a subprocess ---------------------------------------------------------------


@dataclass
class Proc:
    """A finished ``python -m gymlab`` child (code None: it ran past its timeout and was killed)."""

    args: list[str]
    code: int | None
    out: str
    err: str

    def show(self) -> str:
        """What to print when an assertion on this child fails."""
        command = " ".join(self.args)[:300]
        return f"gymlab {command} -> {self.code}\nstdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}"


class Child:
    """A running ``python -m gymlab`` with SIGINT at its default and bounded memory and output."""

    def __init__(
        self, args: Sequence[Any], cwd: Path, env: Mapping[str, str] | None = None, fsize: int | None = None
    ) -> None:
        self.args = [str(a) for a in args]
        # Anonymous files that live as long as this object: read back (bounded) and closed in wait().
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115

        def limits() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
            if fsize is not None:  # a full disk: writes past this size fail with EFBIG (Python ignores SIGXFSZ)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v is not None}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gymlab", *self.args],
            cwd=cwd,
            stdout=self.stdout,
            stderr=self.stderr,
            env=full_env,
            preexec_fn=limits,
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time the child has used so far."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait(self, timeout: float = 120) -> Proc:
        """Wait for the child (killing it at ``timeout``) and read its output back."""
        try:
            code: int | None = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            code = None
        texts = []
        for fh in (self.stdout, self.stderr):
            fh.seek(0)
            texts.append(fh.read(OUTPUT_LIMIT).decode("utf-8", "replace"))
            fh.close()
        return Proc(self.args, code, texts[0], texts[1])


def gymlab(*args: Any, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120, **kw: Any) -> Proc:
    """Run ``python -m gymlab ARGS`` in ``cwd`` to the end."""
    return Child(args, cwd, env, **kw).wait(timeout)


def assert_one_line(proc: Proc, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one stderr line naming every fragment, no traceback; returns the line."""
    assert proc.code == code, proc.show()
    assert "Traceback" not in proc.out + proc.err, proc.show()
    lines = [line for line in proc.err.splitlines() if line.strip()]
    assert len(lines) == 1, proc.show()
    if code == 2:
        assert lines[0].startswith("gymlab: error: "), proc.show()
    assert len(lines[0]) <= MAX_ERROR_LINE, f"{len(lines[0])} characters: {lines[0][:300]}..."
    for fragment in fragments:
        assert fragment in lines[0], proc.show()
    return lines[0]


def assert_ok(proc: Proc) -> None:
    """Exit 0 and no traceback."""
    assert proc.code == 0 and "Traceback" not in proc.err, proc.show()


# --- run folders ----------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every data file under ``folder`` (not the ``.lock`` a writer holds) by relative path, with a hash of it."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != runs.LOCK_FILE]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_nothing_lost(folder: Path, before: Mapping[str, str]) -> None:
    """Every file that was in the folder is still there, byte for byte."""
    after = snapshot(folder)
    for rel, digest in before.items():
        assert rel in after, f"{rel} was removed"
        assert after[rel] == digest, f"{rel} was changed"


def step_of(path: Path) -> int:
    """The env step a checkpoint was taken at."""
    return int(checkpoint.load(path)["loop"]["step"])


TAXI_ARGS = ["train", "tabular_q", "Taxi-v4", "--steps", "2000", "eval_every=1000", "checkpoint_every=500"]


@pytest.fixture(scope="module")
def taxi_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tabular Q run on Taxi: last.pt at 2,000 steps, best.pt older (the evaluation at 1,000)."""
    run = tmp_path_factory.mktemp("base") / "taxi"
    result = gymlab_inprocess(*TAXI_ARGS, "eval_episodes=1", "--run-dir", run)
    assert result.code == 0, result.ok()
    assert step_of(run / "checkpoints" / "best.pt") < step_of(run / "checkpoints" / "last.pt") == 2000
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


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of a shared run folder."""
    shutil.copytree(run, to)
    return to


USER_ENVS = '''
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Raises(gym.Env):
    observation_space = spaces.Discrete(4)
    action_space = spaces.Discrete(2)

    def __init__(self):
        raise RuntimeError("broken constructor")


class _Counter(gym.Env):
    """Episodes of 10 steps; from env step ``bad`` on, ``spoil`` makes the step wrong."""

    bad = 30

    def __init__(self):
        self.t = 0
        self.k = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        self.k += 1
        return self.spoil(self.obs(), 0.0, self.k >= 10)

    def spoil(self, obs, reward, done):
        return obs, reward, done, False, {}


class StepRaises(_Counter):
    observation_space = spaces.Discrete(4)
    action_space = spaces.Discrete(2)

    def obs(self):
        return 0

    def spoil(self, obs, reward, done):
        if self.t >= self.bad:
            raise RuntimeError("broken step")
        return obs, reward, done, False, {}


class NaNReward(_Counter):
    observation_space = spaces.Discrete(4)
    action_space = spaces.Discrete(2)

    def obs(self):
        return 0

    def spoil(self, obs, reward, done):
        return obs, float("nan") if self.t >= self.bad else 1.0, done, False, {}


class NaNObs(_Counter):
    observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def obs(self):
        return np.full(4, np.nan if self.t >= self.bad else 0.5, np.float32)


class WrongShape(_Counter):
    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def obs(self):
        return np.zeros(4 if self.t < self.bad else 7, np.float32)
'''


def write_user_modules(folder: Path) -> None:
    """User code the cases name as ``module:Class``: envs that misbehave, a module that raises on import."""
    (folder / "userenvs.py").write_text(USER_ENVS)
    (folder / "brokenmod.py").write_text('raise ValueError("this module is broken")\n')


# --- 1. train -> eval -> watch closes for every agent -------------------------------------------------

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
    runs = {}
    for name, args in CYCLE.items():
        run = tmp_path_factory.mktemp("cycle") / name
        result = gymlab_inprocess("train", *args, "eval_episodes=1", "--run-dir", run)
        assert result.code == 0, result.ok()
        runs[name] = run
    return runs


@pytest.mark.parametrize("command", CYCLE_COMMANDS)
@pytest.mark.parametrize("run_name", CYCLE)
def test_1_eval_and_watch_work_on_any_run(cycle_runs: dict[str, Path], run_name: str, command: str, tmp_path: Path):
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


# --- 2. evaluation always ends; interrupts are honoured everywhere -----------------------------------

# CliffWalking registers no time limit; an untrained greedy tabular policy walks into the top wall for good.
NO_TIME_LIMIT = ["tabular_q", "CliffWalking-v1", "--steps", "300", "eval_every=0", "eval_episodes=1"]


@pytest.mark.parametrize(
    "extra",
    [pytest.param([], id="default-cap"), pytest.param(["eval_max_steps=50"], id="own-cap")],
)
def test_2_evaluation_without_time_limit_ends(tmp_path: Path, extra: list[str]):
    trained = gymlab("train", *NO_TIME_LIMIT, *extra, "--run-dir", "r", cwd=tmp_path, timeout=180)
    assert_ok(trained)
    assert "eval_max_steps" in trained.out + trained.err, trained.show()  # hitting the cap is logged
    evaluated = gymlab("eval", "r", "--json", "--episodes", "2", cwd=tmp_path, timeout=180)
    assert_ok(evaluated)
    assert "eval_max_steps" in evaluated.err, evaluated.show()


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
    "training": (["train", "tabular_q", "Taxi-v4", "--steps", "50000000", "--run-dir", "r"], _training, ["--resume"]),
    "eval": (["eval", "RUN", "--episodes", "100000000"], _busy(5.0), []),
    "watch": (["watch", "RUN", "--episodes", "100000", "--record", "w.mp4"], _busy(5.0), []),
}


@pytest.mark.parametrize("phase", INTERRUPTS)
def test_2_sigint_exits_130_with_one_line(taxi_run: Path, tmp_path: Path, phase: str):
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
    assert_one_line(proc, 130, *fragments)
    assert_nothing_lost(run, before)
    if phase == "training":
        assert 0 < step_of(tmp_path / "r" / "checkpoints" / "last.pt") < 50_000_000


# --- 3. resume never overwrites newer data -----------------------------------------------------------


def _as_is(run: Path, tmp: Path, cartpole: Path) -> None:
    pass


def _foreign(run: Path, tmp: Path, cartpole: Path) -> None:
    shutil.copy(cartpole / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


RESUMES = {
    # case: (prepare the run folder, argv, fragments)
    "resume-from-best": (_as_is, ["train", "--resume", "RUN/checkpoints/best.pt", "--steps", "4000"], ["best.pt"]),
    "foreign-eval": (_foreign, ["eval", "RUN"], ["last.pt"]),
    "foreign-watch": (_foreign, ["watch", "RUN", "--record", "w.mp4", "--episodes", "1"], ["last.pt"]),
    "foreign-resume": (_foreign, ["train", "--resume", "RUN", "--steps", "4000"], ["last.pt"]),
}


@pytest.mark.parametrize("case", RESUMES)
def test_3_resume_and_reads_never_overwrite(taxi_run: Path, cartpole_dqn_run: Path, tmp_path: Path, case: str):
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
def test_3_a_second_writer_is_refused(taxi_run: Path, tmp_path: Path, second: list[str]):
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


# --- 4. nothing named in a run folder is imported -----------------------------------------------------

HELPER = """
from pathlib import Path
Path({marker!r}).write_text("imported")
import gymnasium as gym
from gymlab.agents.tabular_q import TabularQ as Agent
Env = gym.make("Taxi-v4").unwrapped.__class__
def wrap(env, *, train):
    return env
"""


def _resave(path: Path, payload: dict[str, Any]) -> None:
    """Write a loaded (and edited) checkpoint back, through gymlab's own writer."""
    checkpoint.save(path, {k: v for k, v in payload.items() if k not in ("format", "version")})


def _plant(run: Path, marker: Path, key: str, value: Any) -> None:
    """Name ``value`` under ``key`` in the run's config.yaml and in both its checkpoints; put helper.py beside."""
    import yaml

    (run / "helper.py").write_text(HELPER.format(marker=str(marker)))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("last.pt", "best.pt"):
        payload = checkpoint.load(run / "checkpoints" / name)
        payload["config"][key] = value
        if key in payload:
            payload[key] = value
        _resave(run / "checkpoints" / name, payload)


PLANTED = {"agent": "helper:Agent", "env": "helper:Env", "wrappers": ["helper:wrap"]}
READERS = {
    "eval": ["eval", "."],
    "watch": ["watch", ".", "--record", "w.mp4", "--episodes", "1"],
    "resume": ["train", "--resume", ".", "--steps", "4000"],
}


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("key", PLANTED)
def test_4_a_run_folder_cannot_make_gymlab_import_code(taxi_run: Path, tmp_path: Path, key: str, command: str):
    run = copy_run(taxi_run, tmp_path / "run")
    marker = tmp_path / "IMPORTED"
    _plant(run, marker, key, PLANTED[key])
    before = snapshot(run)
    proc = gymlab(*READERS[command], cwd=run)  # `python -m` puts the run folder first on sys.path
    assert_one_line(proc, 2, "helper")
    assert not marker.exists(), "gymlab imported helper.py from the run folder"
    assert_nothing_lost(run, before)


# --- 5. DQN's resume is exact by default --------------------------------------------------------------

DQN_RESUMES = {
    # case: (overrides, exact)
    "default": ([], True),
    "two-envs": (["num_envs=2"], True),
    "ring-wraps": (["buffer_size=64"], True),
    "over-budget": (["replay_save_budget_mb=0.0001"], False),
}


@pytest.mark.parametrize("case", DQN_RESUMES)
def test_5_dqn_resume(tmp_path: Path, case: str):
    overrides, exact = DQN_RESUMES[case]
    args = ["train", "dqn", "CartPole-v1", "--steps", "320", "eval_every=160", "eval_episodes=1", "checkpoint_every=64"]
    args += ["net_arch=[8]", "learning_starts=16", "train_freq=4", "batch_size=8", *overrides]
    whole = gymlab_inprocess(*args, "--run-dir", tmp_path / "whole")
    assert whole.code == 0, whole.ok()
    with ctrl_c_after_update("dqn", 200):
        stopped = gymlab_inprocess(*args, "--run-dir", tmp_path / "parts")
    assert stopped.code == 130, stopped.ok()
    resumed = gymlab_inprocess("train", "--resume", tmp_path / "parts")
    assert resumed.code == 0, resumed.ok()
    a = checkpoint.load(tmp_path / "whole" / "checkpoints" / "last.pt")["agent_state"]
    b = checkpoint.load(tmp_path / "parts" / "checkpoints" / "last.pt")["agent_state"]
    same = all(torch.equal(x, y) for x, y in zip(_tensors(a), _tensors(b), strict=True))
    assert same == exact
    if not exact:  # said plainly, at save and at resume
        assert "replay" in stopped.out + stopped.err and "replay" in resumed.out + resumed.err, resumed.ok()


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "biuf":
        yield torch.from_numpy(tree)
    elif isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            yield from _tensors(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)


# --- 6. non-finite numbers stop with one line ----------------------------------------------------------

NON_FINITE_CONFIG = {
    "lr-inf": (["tabular_q", "Taxi-v4", "learning_rate=inf"], "learning_rate"),
    "initial-q-nan": (["tabular_q", "Taxi-v4", "initial_q=.nan"], "initial_q"),
    "gamma-nan": (["dqn", "CartPole-v1", "gamma=.nan"], "gamma"),
    "eps-minus-inf": (["dqn", "CartPole-v1", "exploration_final_eps=-.inf"], "exploration_final_eps"),
    "reinforce-lr-inf": (["reinforce", "CartPole-v1", "learning_rate=.inf"], "learning_rate"),
}


@pytest.mark.parametrize("case", NON_FINITE_CONFIG)
def test_6_non_finite_config_values_are_refused(tmp_path: Path, case: str):
    argv, fragment = NON_FINITE_CONFIG[case]
    proc = gymlab("train", *argv, "--run-dir", "r", cwd=tmp_path)
    assert_one_line(proc, 2, fragment)
    assert not (tmp_path / "r").exists()


NON_FINITE_RUNS = {
    "nan-reward": (["tabular_q", "userenvs:NaNReward"], ["reward", "step"]),
    "nan-observation": (["dqn", "userenvs:NaNObs", "net_arch=[8]", "learning_starts=8"], ["observation", "step"]),
    "diverging-loss": (["dqn", "CartPole-v1", "learning_rate=1e30", "net_arch=[8]", "learning_starts=8"], ["step"]),
}


@pytest.mark.parametrize("case", NON_FINITE_RUNS)
def test_6_non_finite_at_run_time_stops_keeping_the_last_good_checkpoint(tmp_path: Path, case: str):
    argv, fragments = NON_FINITE_RUNS[case]
    write_user_modules(tmp_path)
    run_keys = ["--steps", "3000", "checkpoint_every=10", "eval_every=0", "eval_episodes=1"]
    proc = gymlab("train", *argv, *run_keys, "--run-dir", "r", cwd=tmp_path)
    assert_one_line(proc, 2, *fragments)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    if last.exists():
        state = checkpoint.load(last)["agent_state"]
        assert all(bool(torch.isfinite(t.float()).all()) for t in _tensors(state)), "a non-finite checkpoint was kept"


# --- 7. one line, exit 2, nothing lost, for every bad input ---------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    body = "\n".join("  " + line for line in lines)
    return f"steps: 100\nenv_kwargs:\n{body}\n"


def _damage(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / "checkpoints" / "last.pt"
        payload = checkpoint.load(path)
        fn(payload)
        _resave(path, payload)

    return apply


def _reshape_arrays(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return torch.zeros(3, 1)
    if isinstance(tree, np.ndarray):
        return np.zeros((3, 1), tree.dtype)
    if isinstance(tree, dict):
        return {k: _reshape_arrays(v) for k, v in tree.items()}
    return tree


def _reshape_agent_state(payload: dict[str, Any]) -> None:
    payload["agent_state"] = _reshape_arrays(payload["agent_state"])


def _files(**files: bytes | str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for name, content in files.items():
            path = folder / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    return write


def _nothing(folder: Path) -> None:
    pass


NOT_UTF8 = b"steps: 100\nhparams:\n  gamma: 0.9 # \xff\xfe caf\xe9\n"
TINY_SWEEP = "agent: tabular_q\nenv: Taxi-v4\nmethod: grid\nspace:\n  learning_rate: [0.1]\nbase: {steps: 100}\n"


@dataclass(frozen=True)
class Bad:
    """One bad input: argv (RUN is a copy of a trained Taxi run), files written first, env vars, what must be said."""

    argv: list[str]
    fragments: list[str]
    prepare: Callable[[Path], None] = _nothing  # writes files into the working folder
    damage: Callable[[Path], None] = _nothing  # changes the run folder before the command
    env: dict[str, str] = field(default_factory=dict)
    fsize: int | None = None
    no_folder: bool = False  # the command must not create --run-dir r


def _shadow(module: str) -> Callable[[Path], None]:
    """A package named like an optional dependency that fails to import, first on PYTHONPATH."""

    def write(folder: Path) -> None:
        package = folder / "shadow" / module
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f'raise ImportError("No module named {module!r} (shadowed)")\n')

    return write


def _both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for step in steps:
            step(folder)

    return apply


SHADOW = {"PYTHONPATH": "shadow"}

BAD_INPUTS: dict[str, Bad] = {
    # files that are not UTF-8
    "config-not-utf8": Bad(["train", "tabular_q", "Taxi-v4", "--config", "c.yaml", "--run-dir", "r"], ["c.yaml"],
                           _files(**{"c.yaml": NOT_UTF8}), no_folder=True),
    "sweep-not-utf8": Bad(["sweep", "s.yaml", "--run-dir", "sw"], ["s.yaml"], _files(**{"s.yaml": NOT_UTF8})),
    "run-config-not-utf8": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["config.yaml"],
                               damage=_files(**{"config.yaml": NOT_UTF8})),
    # YAML bounded in size and aliases
    "alias-bomb": Bad(["train", "tabular_q", "Taxi-v4", "--config", "b.yaml", "--run-dir", "r"], ["b.yaml"],
                      _files(**{"b.yaml": _alias_bomb()}), no_folder=True),
    # bad env_kwargs values
    "env-kwargs-unknown-map": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.map_name=9x9", "--run-dir", "r"],
                                  ["map_name"], no_folder=True),
    "env-kwargs-wrong-type": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.desc=5", "--run-dir", "r"],
                                 ["desc"], no_folder=True),
    "env-kwargs-huge-value": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.map_name=" + "x" * 50_000,
                                  "--run-dir", "r"], ["map_name"], no_folder=True),
    # user envs and modules
    "env-constructor-raises": Bad(["train", "tabular_q", "userenvs:Raises", "--run-dir", "r"], ["userenvs:Raises"],
                                  write_user_modules, no_folder=True),
    "env-step-raises": Bad(["train", "tabular_q", "userenvs:StepRaises", "--steps", "100", "--run-dir", "r"],
                           ["userenvs:StepRaises"], write_user_modules),
    "env-wrong-shape": Bad(["train", "dqn", "userenvs:WrongShape", "--steps", "100", "net_arch=[8]", "--run-dir", "r"],
                           ["userenvs:WrongShape"], write_user_modules),
    "env-module-raises": Bad(["train", "tabular_q", "brokenmod:Env", "--run-dir", "r"], ["brokenmod"],
                             write_user_modules, no_folder=True),
    "agent-module-raises": Bad(["train", "brokenmod:Agent", "Taxi-v4", "--run-dir", "r"], ["brokenmod"],
                               write_user_modules, no_folder=True),
    # damaged checkpoint internals
    "ckpt-arrays-reshaped-eval": Bad(["eval", "RUN"], ["checkpoint"], damage=_damage(_reshape_agent_state)),
    "ckpt-arrays-reshaped-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                                       damage=_damage(_reshape_agent_state)),
    "ckpt-no-loop-eval": Bad(["eval", "RUN"], ["checkpoint"], damage=_damage(lambda p: p.pop("loop"))),
    "ckpt-no-loop-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                               damage=_damage(lambda p: p.pop("loop"))),
    "ckpt-rng-garbage-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                                   damage=_damage(lambda p: p.update(rng={"python": "garbage"}))),
    "ckpt-agent-state-number-eval": Bad(["eval", "RUN"], ["checkpoint"],
                                        damage=_damage(lambda p: p.update(agent_state=42))),
    # options
    "eval-seed-negative": Bad(["eval", "RUN", "--seed", "-1"], ["--seed"]),
    # a full disk while writing checkpoints: no temp file left behind
    "disk-full": Bad(["train", "tabular_q", "Taxi-v4", "--steps", "2000", "checkpoint_every=500", "eval_episodes=1",
                      "--run-dir", "r"], ["last.pt"], fsize=20_000),
    # agent sizes
    "replay-smaller-than-envs": Bad(["train", "dqn", "CartPole-v1", "num_envs=32", "buffer_size=16", "--run-dir", "r"],
                                    ["buffer_size"], no_folder=True),
    "net-arch-negative": Bad(["train", "dqn", "CartPole-v1", "net_arch=[-4]", "--run-dir", "r"], ["net_arch"],
                             no_folder=True),
    "hidden-sizes-zero": Bad(["train", "reinforce", "CartPole-v1", "hidden_sizes=[0]", "--run-dir", "r"],
                             ["hidden_sizes"], no_folder=True),
    # missing extras name their install command
    "no-ale-py": Bad(["train", "dqn", "PongNoFrameskip-v4", "--steps", "64", "--run-dir", "r"],
                     ['pip install "gymlab[atari]"'], _shadow("ale_py"), env=SHADOW, no_folder=True),
    "no-box2d": Bad(["train", "dqn", "LunarLander-v3", "--steps", "64", "--run-dir", "r"],
                    ['pip install "gymlab[box2d]"'], _shadow("Box2D"), env=SHADOW, no_folder=True),
    "no-optuna": Bad(["sweep", "s.yaml", "--run-dir", "sw"], ['pip install "gymlab[sweep]"'],
                     _both(_shadow("optuna"), _files(**{"s.yaml": TINY_SWEEP})), env=SHADOW),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_7_bad_input_is_one_line_and_loses_nothing(taxi_run: Path, tmp_path: Path, case: str):
    bad = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    bad.prepare(work)
    run = copy_run(taxi_run, work / "run")
    bad.damage(run)
    before = snapshot(run)
    env = {k: str(work / v) if k == "PYTHONPATH" else v for k, v in bad.env.items()}
    proc = gymlab(*[a.replace("RUN", str(run)) for a in bad.argv], cwd=work, env=env, fsize=bad.fsize, timeout=180)
    assert_one_line(proc, 2, *bad.fragments)
    assert_nothing_lost(run, before)
    if bad.no_folder:
        assert not (work / "r").exists(), "a rejected command created its run folder"
    leftovers = [p for p in work.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temp files left behind: {leftovers}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_7_read_only_run_folder(taxi_run: Path, tmp_path: Path):
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


WINDOWLESS = {
    "empty-driver": {"SDL_VIDEODRIVER": "", "DISPLAY": ":99"},
    "unknown-driver": {"SDL_VIDEODRIVER": "no-such-driver", "DISPLAY": ":99"},
    "no-server": {"SDL_VIDEODRIVER": "x11", "DISPLAY": ":99"},
}


@pytest.mark.parametrize("case", WINDOWLESS)
def test_7_watch_falls_back_to_mp4_when_no_window_opens(taxi_run: Path, tmp_path: Path, case: str):
    run = copy_run(taxi_run, tmp_path / "run")
    before = snapshot(run)
    proc = gymlab("watch", run, "--episodes", "1", "--record", "w.mp4", cwd=tmp_path, env=WINDOWLESS[case])
    assert_ok(proc)
    assert (tmp_path / "w.mp4").stat().st_size > 0 and "w.mp4" in proc.out, proc.show()
    assert_nothing_lost(run, before)


# --- 8. a failed start leaves nothing that blocks the retry ----------------------------------------------

FAILED_STARTS = {
    # case: (what makes the first try fail, fragment)
    "no-cuda": (["--device", "cuda"], "cuda"),
    "env-kwargs": (["env_kwargs.map_name=9x9"], "map_name"),
    "full-disk": (["--fsize"], "last.pt"),  # the first checkpoint cannot be written
}


@pytest.mark.parametrize("case", FAILED_STARTS)
def test_8_a_failed_start_does_not_block_the_retry(tmp_path: Path, case: str):
    extra, fragment = FAILED_STARTS[case]
    if case == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["train", "tabular_q", "Taxi-v4", "--steps", "2000", "checkpoint_every=500", "--run-dir", "r"]
    if case == "env-kwargs":
        args[2] = "FrozenLake-v1"
    fsize = 20_000 if extra == ["--fsize"] else None  # Taxi's Q-table alone is 24 kB
    first = gymlab(*args, *[e for e in extra if e != "--fsize"], cwd=tmp_path, fsize=fsize)
    assert_one_line(first, 2, fragment)
    retry = gymlab(*args, cwd=tmp_path)
    assert_ok(retry)
    assert step_of(tmp_path / "r" / "checkpoints" / "last.pt") == 2000
