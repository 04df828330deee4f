"""Checkpoints: the one type a run's state is saved as, written atomically, read without executing code.

:class:`Checkpoint` is a run's whole state (agent, loop, generators, envs, config); it is the one
writer and reader of the file's layout, so no other module looks inside its dictionaries. A
checkpoint that cannot be put back into a run raises :class:`CheckpointMismatch`.

A checkpoint is a ``torch.save`` of tensors and plain Python data only, read back with
``torch.load(weights_only=True)``. Numpy arrays (Q-tables, RNG states, env states) travel as
tensors tagged ``{"__ndarray__": tensor}`` and come back as numpy arrays, so an agent's
``load_state_dict`` receives exactly the types its ``state_dict`` produced.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over the
old file: a kill at any instant leaves the previous checkpoint whole and readable.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import resource
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gymlab.agent import Agent
from gymlab.config import Config
from gymlab.envstate import batch_fits, rng_state, set_rng_state, set_vector_env_state, vector_env_state
from gymlab.errors import FolderRemoved, GymlabError
from gymlab.finite import check_state

FORMAT = "gymlab-checkpoint"
VERSION = 1

_NDARRAY = "__ndarray__"
_NPSCALAR = "__npscalar__"


def encode(obj: Any) -> Any:
    """Turn numpy arrays and scalars (at any depth) into tagged tensors that weights_only accepts."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be checkpointed safely")
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return {_NPSCALAR: torch.from_numpy(np.asarray(obj).copy())}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    """Invert :func:`encode`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _NDARRAY in obj:
            return obj[_NDARRAY].numpy()
        if len(obj) == 1 and _NPSCALAR in obj:
            return obj[_NPSCALAR].numpy()[()]
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: temp file, fsync, rename over ``path``.

    If the write fails (a full disk, a folder that turned read-only), the temp file is removed,
    the previous checkpoint at ``path`` is left as it was, and the failure is one line.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = {"format": FORMAT, "version": VERSION, **encode(payload)}
    try:
        path.parent.mkdir(exist_ok=True)  # never its parents: a run folder removed meanwhile stays removed
        with open(tmp, "wb") as fh:
            try:
                torch.save(data, fh)
            except RuntimeError as exc:  # torch's zip writer reports a failed write (EFBIG, ENOSPC) this way
                raise OSError(_write_failed(path.parent, exc)) from exc
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not path.parent.parent.is_dir():  # the run folder was deleted between the caller's check and the write
            raise FolderRemoved(path.parent.parent) from None
        kept = "the previous checkpoint is kept" if path.is_file() else "no earlier checkpoint exists"
        raise GymlabError(
            f"cannot write checkpoint {path}: {exc.strerror or _first_line(exc)}; {kept} "
            "(free disk space or make the folder writable, then resume)"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_failed(folder: Path, exc: RuntimeError) -> str:
    """Why torch's zip writer failed, in words: it says only "unexpected pos" for a full disk or a size limit."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return f"no space left on the device ({free:,} bytes free)"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return f"the file size limit was reached (ulimit -f: {limit:,} bytes)"
    return f"the write failed ({_first_line(exc)})"


def peek(path: Path) -> dict[str, Any] | None:
    """A checkpoint file's entries with its tensors left on disk (mmap); None if it cannot be read as one.

    Unchecked: for what a file says it is (its step, agent, env and config) before, or instead of, a full read.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:  # mmap: the tensors (weights, a replay memory) stay on disk; only the small pickled layout is read
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def step_of(path: Path) -> int | None:
    """The env step a checkpoint file was written at, read without loading its tensors; None if unreadable."""
    data = peek(path)
    loop = data.get("loop") if data is not None else None
    step = loop.get("step") if isinstance(loop, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def load(path: Path, *, agent: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, refusing corrupt, foreign, code-carrying or wrong-agent files in one line."""
    if not path.is_file():
        raise GymlabError(f"no checkpoint at {path}")
    _refuse_unzipped(path)
    damage = _damage(path)
    if damage is not None:
        raise GymlabError(f"checkpoint {path} is corrupt ({damage}); use another checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise GymlabError(
                f"checkpoint {path} holds executable objects; refusing to load it "
                "(gymlab checkpoints hold only tensors and plain data)"
            ) from None
        raise GymlabError(f"checkpoint {path} is corrupt ({_first_line(exc)}); use another checkpoint") from None
    except Exception as exc:  # torch.load fails on damaged files with many types (KeyError, EOFError, ...)
        raise GymlabError(
            f"checkpoint {path} is corrupt or truncated ({_first_line(exc)}); use another checkpoint"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GymlabError(f"{path} is not a gymlab checkpoint (no '{FORMAT}' marker)")
    if data.get("version") != VERSION:
        raise GymlabError(f"checkpoint {path} has format version {data.get('version')}; this gymlab reads {VERSION}")
    if agent is not None and data.get("agent") != agent:
        raise GymlabError(f"checkpoint {path} was written by agent '{data.get('agent')}', not '{agent}'")
    return decode(data)


def _refuse_unzipped(path: Path) -> None:
    """Refuse in one line a file that is no zip (torch.save writes one; anything else would reach its old unpickler)."""
    try:
        if zipfile.is_zipfile(path):
            return
        with path.open("rb") as fh:
            start = fh.read(4)
    except OSError as exc:  # an I/O error, a file of the kernel's (/proc) that cannot be read as one
        raise GymlabError(f"cannot read checkpoint {path}: {exc.strerror or _first_line(exc)}") from None
    if start in (b"", b"PK\x03\x04"[: len(start)]):  # empty, or a zip cut before its directory
        raise GymlabError(f"checkpoint {path} is corrupt or truncated (no zip directory); use another checkpoint")
    raise GymlabError(
        f"{path} is not a gymlab checkpoint (not a torch checkpoint file); give a run folder or one of "
        "its checkpoints/last.pt, best.pt"
    )


def _damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's zip, in words; None when it is whole.

    ``torch.load`` checks neither of these: a changed byte in a tensor would load as a changed weight
    (each entry's CRC-32 is compared here, one more read of the file), and bytes after the zip's end
    (another write's tail) would go unseen. torch writes no zip comment, so its end record comes last.
    """
    try:
        with path.open("rb") as fh:
            fh.seek(-_END_RECORD_BYTES, os.SEEK_END)
            if fh.read(4) != _END_RECORD:
                return "bytes follow the end of its zip"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return _first_line(exc)
    return None if bad is None else f"{bad} fails its CRC-32 check"


_END_RECORD, _END_RECORD_BYTES = b"PK\x05\x06", 22  # a zip's end-of-central-directory record, without comment


class CheckpointMismatch(GymlabError):
    """A readable checkpoint that does not fit the run it is put into (another agent, shape or version)."""


@dataclass
class LoopState:
    """The rollout loop's counters: where a run stands, as a checkpoint keeps it."""

    step: int = 0
    episodes: int = 0
    eval_index: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    recent_returns: list[float] = field(default_factory=list)
    eval_due: bool = False  # an evaluation was interrupted at ``step``: a resume plays it first
    phase_done: int = 0  # iterations of the agent's offline phases done, over all its phases


#: The file's ``loop`` entry: the counters of :class:`LoopState`, with the logging window and the observations.
_LOOP_TYPES: dict[str, tuple[type, ...]] = {"step": (int,), "episodes": (int,), "window": (dict,)}
#: The file's top-level entries (besides format and version) and their types.
_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "agent": (str,),
    "env": (str,),
    "config": (dict,),
    "agent_state": (dict,),
    "loop": (dict,),
    "rng": (dict,),
    "envs": (dict, type(None)),
}


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly: the one writer (:meth:`write`) and reader (:meth:`read`).

    ``config`` is the run's resolved config as plain data, ``agent_state`` the agent's
    ``state_dict()`` (``policy`` and ``training``), ``loop`` the loop's counters, ``window`` the
    TensorBoard averaging window, ``obs`` the observations the next step acts on, ``rng`` the global
    generators and ``envs`` the env state (None where env internals cannot be captured).
    """

    agent: str
    env: str
    config: dict[str, Any]
    agent_state: dict[str, Any]
    loop: LoopState
    window: dict[str, Any]
    obs: Any
    rng: dict[str, Any]
    envs: dict[str, Any] | None

    @property
    def step(self) -> int:
        """Env steps done at this checkpoint."""
        return self.loop.step

    @classmethod
    def capture(cls, config: Config, agent: Agent, envs: Any, loop: LoopState, window: Any, obs: Any) -> Checkpoint:
        """A running run's state: the agent, the loop's counters and window, the generators and the envs."""
        return cls(
            agent=config.run.agent,
            env=config.run.env,
            config=config.to_dict(),
            agent_state=agent.state_dict(),
            loop=loop,
            window=window.state_dict(),
            obs=obs,
            rng=rng_state(),
            envs=vector_env_state(envs),
        )

    def restore(self, agent: Agent, envs: Any, loop: LoopState, window: Any, where: Path) -> bool:
        """Put agent, loop counters (in place), window, generators and envs back where this checkpoint left them.

        Returns whether the envs' state came back too (then the run continues from :attr:`obs`; else from
        fresh episodes). A state that does not fit raises :class:`CheckpointMismatch` naming ``where``.
        """
        try:
            agent.load_state_dict(self.agent_state)
            window.load_state_dict(self.window)
            for key, value in vars(self.loop).items():
                setattr(loop, key, value)
            set_rng_state(self.rng)
            restored = set_vector_env_state(envs, self.envs)
            if restored and not batch_fits(envs.observation_space, self.obs):
                raise ValueError(f"its observations ({_shown(self.obs)}) do not fit {envs.observation_space}")
            return restored
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
            raise CheckpointMismatch(
                f"checkpoint of {where} does not fit a {self.agent} agent on {self.env} "
                f"({type(exc).__name__}: {exc}); it is damaged or from another version"
            ) from None

    def write(self, path: Path) -> None:
        """Save atomically (see :func:`save`)."""
        loop = {**asdict(self.loop), "window": self.window, "obs": self.obs}
        save(
            path,
            {
                "agent": self.agent,
                "env": self.env,
                "config": self.config,
                "agent_state": self.agent_state,
                "loop": loop,
                "rng": self.rng,
                "envs": self.envs,
            },
        )

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """Load and check the layout; a damaged or foreign file is refused in one line."""
        data = load(path)
        config = data.get("config")
        if not isinstance(config, dict) or "agent" not in config:
            raise GymlabError(f"checkpoint {path} carries no run config; it is not from `gymlab train`")
        _check_types(data, _TOP_TYPES, path, "")
        try:  # runs never save a NaN or infinity: one here was put in after the save, and would be trained on
            problem = check_state(data["agent_state"], str(data["agent"]))
        except GymlabError as exc:
            raise GymlabError(f"checkpoint {path} is damaged ({exc}); use another checkpoint") from None
        if problem is not None:
            raise GymlabError(f"checkpoint {path} is damaged: its agent state holds {problem}; use another checkpoint")
        loop = dict(data["loop"])
        _check_types(loop, _LOOP_TYPES, path, "loop.")
        window, obs = loop.pop("window"), loop.pop("obs", None)
        names = {f for f in LoopState.__dataclass_fields__}
        unknown = sorted(set(loop) - names)
        if unknown:
            raise GymlabError(f"checkpoint {path} is damaged: 'loop.{unknown[0]}' is unknown; use another checkpoint")
        problem = _config_problem(config, "config") or next(filter(None, map(_counter_problem, loop.items())), None)
        if problem is not None:
            raise GymlabError(f"checkpoint {path} is damaged: {problem}; use another checkpoint")
        return cls(
            agent=data["agent"],
            env=data["env"],
            config=config,
            agent_state=data["agent_state"],
            loop=LoopState(**loop),
            window=window,
            obs=obs,
            rng=data["rng"],
            envs=data["envs"],
        )


def _check_types(data: dict[str, Any], types: dict[str, tuple[type, ...]], path: Path, prefix: str) -> None:
    for key, allowed in types.items():
        if key not in data:
            raise GymlabError(f"checkpoint {path} is damaged: '{prefix}{key}' is missing; use another checkpoint")
        node = data[key]
        if not isinstance(node, allowed) or (isinstance(node, bool) and bool not in allowed):
            raise GymlabError(
                f"checkpoint {path} is damaged: '{prefix}{key}' is a {type(node).__name__}, "
                f"expected {' or '.join(t.__name__ for t in allowed)}; use another checkpoint"
            )


def _config_problem(tree: Any, at: str) -> str | None:
    """Where the run config a file carries holds what no config does (a config is YAML's plain data); else None."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            problem = _config_problem(value, f"{at}.{key}") if isinstance(key, str) else f"'{at}' has a key {key!r}"
            if problem:
                return problem
    elif isinstance(tree, list):
        return next(filter(None, (_config_problem(v, f"{at}[{i}]") for i, v in enumerate(tree))), None)
    elif not isinstance(tree, (str, int, float, bool, type(None))):
        return f"'{at}' is a {type(tree).__name__}, which no config holds"
    return None


def _counter_problem(item: tuple[str, Any]) -> str | None:
    """What is wrong with one of the loop's counters in a file (see :class:`LoopState`); None when it fits."""
    key, value = item

    def real(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if key in ("step", "episodes", "eval_index", "phase_done"):
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif key in ("last_eval", "best_eval"):
        fits = value is None or real(value)
    elif key == "recent_returns":
        fits = isinstance(value, list) and all(real(v) for v in value)
    else:  # eval_due
        fits = isinstance(value, bool)
    return None if fits else f"'loop.{key}' is {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
