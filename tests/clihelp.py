"""Running ``python -m gymlab`` in a subprocess the way the command-line tests need it, once.

A test that checks exit codes, stderr and signals runs gymlab as a child process, from its own folder,
and states: the exit code, a stable fragment of the one error line (the key, file, module or extra it
must name, never a whole sentence), no traceback, and that nothing already written was lost (every file
of the run folder it touched is byte-for-byte as before, or, for a run still being written, its newest
checkpoint never goes back).

Children start with SIGINT at its default (a child of a non-interactive shell inherits it ignored, and
a Ctrl-C test would then send a signal nobody hears), at most 4 GiB of address space (a YAML alias bomb
must fail, not eat the machine), and stdout/stderr in files of which the first 64 KiB are read.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forkrun
import numpy as np
import torch

from gymlab import checkpoint
from gymlab.checkpoint import Checkpoint
from gymlab.folderlock import LOCK_FILE

MEMORY_LIMIT = 4 << 30  # bytes of address space for a child
OUTPUT_LIMIT = 64 << 10  # bytes of stdout/stderr read back
MAX_ERROR_LINE = 2000  # characters: error messages are capped in length


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
        self,
        args: Sequence[Any],
        cwd: Path,
        env: Mapping[str, str | None] | None = None,
        fsize: int | None = None,
        group: bool = False,
    ) -> None:
        """``group``: the child leads a process group of its own, so ``os.killpg`` reaches it and its
        workers at once, as a terminal's Ctrl-C does."""
        self.args = [str(a) for a in args]
        # Anonymous files that live as long as this object: read back (bounded) and closed in wait().
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115

        def limits() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
            if fsize is not None:  # a full disk: writes past this size fail with EFBIG (Python ignores SIGXFSZ)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gymlab", *self.args],
            cwd=cwd,
            stdout=self.stdout,
            stderr=self.stderr,
            env=child_env(env),
            preexec_fn=limits,
            start_new_session=group,
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


def child_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment for a child, unbuffered, with ``env`` over it (a None value: unset)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return {k: v for k, v in full.items() if v is not None}


def gymlab(
    *args: Any, cwd: Path, env: Mapping[str, str | None] | None = None, timeout: float = 120, fsize: int | None = None
) -> Proc:
    """Run ``python -m gymlab ARGS`` in ``cwd`` to the end: forked warm (tests/forkrun.py) where that starts alike."""
    full_env = child_env(env)
    limits = {resource.RLIMIT_AS: MEMORY_LIMIT, **({resource.RLIMIT_FSIZE: fsize} if fsize is not None else {})}
    proc = forked(args, cwd, full_env, timeout, limits) if forkrun.forkable(full_env) else None
    return proc if proc is not None else Child(args, cwd, env, fsize=fsize).wait(timeout)


def forked(
    args: Sequence[Any],
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    limits: Mapping[int, int],
    read: int = OUTPUT_LIMIT,
) -> Proc | None:
    """Fork ``python -m gymlab ARGS`` warm (tests/forkrun.py), wait ``timeout`` s, read ``read`` bytes of its output.

    None: the child found a module of the warm interpreter shadowed in its folder; start a fresh one.
    """
    argv = [str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="gymlab-child-") as folder:
        names = [os.path.join(folder, n) for n in ("stdout", "stderr")]
        for name in names:
            Path(name).touch()
        process = forkrun.start(argv, str(cwd), env, names[0], names[1], limits)
        process.join(timeout)
        code: int | None = process.exitcode
        if code is None:  # ran past its timeout
            process.kill()
            process.join()
        if code == forkrun.SHADOWED:
            return None
        texts = []
        for name in names:
            with open(name, "rb") as fh:
                texts.append(fh.read(read).decode("utf-8", "replace"))
    return Proc(argv, code, texts[0], texts[1])


def assert_one_line(proc: Proc, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one stderr line naming every fragment, no traceback; returns the line."""
    assert proc.code == code, proc.show()
    assert "Traceback" not in proc.out + proc.err, proc.show()
    lines = [line for line in proc.err.splitlines() if line.strip()]
    assert len(lines) == 1, proc.show()
    if code == 2:
        assert lines[0].startswith("gymlab: error: "), proc.show()
        assert "Value error, " not in lines[0], proc.show()  # pydantic's wrapping of gymlab's own words
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
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_nothing_lost(folder: Path, before: Mapping[str, str]) -> None:
    """Every file that was in the folder is still there, byte for byte."""
    after = snapshot(folder)
    for rel, digest in before.items():
        assert rel in after, f"{rel} was removed"
        assert after[rel] == digest, f"{rel} was changed"


def step_of(path: Path) -> int:
    """The env step a checkpoint was taken at."""
    return int(Checkpoint.read(path).step)


TAXI_ARGS = ["train", "tabular_q", "Taxi-v4", "--steps", "2000", "eval_every=1000", "checkpoint_every=500"]


def copy_run(run: Path, to: Path) -> Path:
    """A private copy of a shared run folder."""
    shutil.copytree(run, to)
    return to


def resave(path: Path, payload: dict[str, Any]) -> None:
    """Write a loaded (and edited) checkpoint back, through gymlab's own writer."""
    checkpoint.save(path, {k: v for k, v in payload.items() if k not in ("format", "version")})


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run (wall-clock ``time/`` tags aside) as (step, value) lists in step order.

    In step order because a run resumed within the same second of the same process (only in tests)
    has two event files whose names differ only by a counter, which sorts as text ("...10" before
    "...9"): the files can be read in either order. A point logged twice still shows twice.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: sorted((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["scalars"]
        if not tag.startswith("time/")
    }


def tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every numeric array in a checkpoint's (nested) state, as tensors, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "biuf":
        yield torch.from_numpy(tree)
    elif isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            yield from tensors(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from tensors(item)


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


class InfoNotDict(_Counter):
    """From the 33rd step on, mid-episode, ``info`` is text; :class:`InfoNotDictAtEnd` from an episode's last step."""

    bad = 33
    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def obs(self):
        return np.zeros(4, np.float32)

    def spoil(self, obs, reward, done):
        return obs, reward, done, False, {} if self.t < self.bad else "not a dict"


class InfoNotDictAtEnd(InfoNotDict):
    bad = 30


class StepExits(StepRaises):
    """Calls ``sys.exit(3)`` at its 30th step, in whichever process runs it."""

    def spoil(self, obs, reward, done):
        if self.t >= self.bad:
            import sys

            sys.exit(3)
        return obs, reward, done, False, {}


class ResetExits(StepRaises):
    def reset(self, *, seed=None, options=None):
        import sys

        sys.exit()


class ResetRaises(StepRaises):
    def reset(self, *, seed=None, options=None):
        raise ValueError("broken reset")


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


def read_first_line_then_go(*args: Any, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """``python -m gymlab ARGS | head -1``: read the first line of stdout, close it; (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymlab", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # the first line, then the reader is gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=timeout), err
