"""Hypothesis strategies for the fuzz suites (tests/test_fuzz_*.py), and the suites' one settings profile.

Everything here is enumerated from what the code declares, so a new agent, command, option or key is
fuzzed with no new test code:

- config keys: every field of :class:`gymlab.config.RunConfig` and of each agent's ``Config`` in
  :data:`gymlab.agent.AGENTS` (:func:`config_keys`);
- command-line options: every option of every ``gymlab`` subcommand, classified by its annotation
  (:func:`cli_options`);
- user envs: :data:`ENV_MODULE`, one env class whose spaces and misbehaviour are its ``env_kwargs``
  (:data:`SPACES` x :data:`FAULTS`).

The profile ``gymlab`` is derandomized (the same examples on every run, no example database) and
bounded (:data:`MAX_EXAMPLES` per property unless a test says fewer), so the suites fit ``make test``.

A wider hunt, outside ``make test``: ``GYMLAB_FUZZ_SCALE=K`` multiplies every property's examples by K
(:func:`examples`) and draws them at random instead of the fixed sequence; ``--hypothesis-seed=N``
makes such a run repeatable, and a failure prints the blob that replays it::

    GYMLAB_FUZZ_SCALE=4 .venv/bin/python -m pytest -n 2 tests/test_fuzz_*.py --hypothesis-seed=7
"""

from __future__ import annotations

import math
import os
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gymlab.agent import AGENTS, load_agent_class
from gymlab.config import RunConfig

#: How many times more examples than ``make test``'s a wider hunt draws (``GYMLAB_FUZZ_SCALE``; 1: the suite's).
SCALE = max(1, int(os.environ.get("GYMLAB_FUZZ_SCALE", "1") or "1"))


def examples(n: int) -> int:
    """A property's example count: ``n`` in ``make test``, ``n`` times :data:`SCALE` in a wider hunt."""
    return n * SCALE


#: Examples per property (a test may ask for fewer when each example starts a process).
MAX_EXAMPLES = 25

settings.register_profile(
    "gymlab",
    derandomize=SCALE == 1,  # make test: a fixed sequence of examples, so the suite is deterministic and its time known
    database=None,
    max_examples=examples(MAX_EXAMPLES),
    deadline=None,  # a gymlab command takes a second or two, more on a loaded machine
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("gymlab")


# --- values ---------------------------------------------------------------------------------------

#: Numbers at the edges: zero, signs, the limits of 32 and 64 bits, floats' extremes and specials.
EDGE_NUMBERS: list[Any] = [
    0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30),
    0.0, -0.0, 0.5, 1.5, 1e-300, 5e-324, 1e308, -1e308, sys.float_info.max, -sys.float_info.max, math.inf,
    -math.inf, math.nan,
]  # fmt: skip

#: Text that looks like something else: numbers, booleans, nulls, YAML specials, paths, huge or odd text.
EDGE_TEXTS: list[str] = [
    "", " ", "0", "1", "-1", "3.5", "1e-3", "1e308", "inf", "-inf", "nan", ".nan", "true", "false", "yes", "no",
    "null", "~", "None", "[]", "{}", "[1, 2]", "{a: 1}", "&a [*a]", "!!python/object:os.system", "cuda:99", "tpu",
    "auto", "../..", "/dev/zero", "é", "\x00", "a" * 2_000, "1-2-3", "0--1", "2-1", "0,,1", "0x10", "1_000",
]  # fmt: skip

#: Anything YAML can hold: scalars, and lists and mappings of them nested a few levels.
scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.sampled_from(EDGE_NUMBERS),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_TEXTS),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


# --- config keys ----------------------------------------------------------------------------------

#: A standard env for each agent (the one its contract case trains on, or a preset's).
AGENT_ENVS: dict[str, str] = {"tabular_q": "FrozenLake-v1", "seqgan": "SeqGen-v0"}
DEFAULT_ENV = "CartPole-v1"

#: Run keys that name the run rather than configure it (fuzzed by the CLI suite as AGENT ENV).
NAMING_KEYS = ("agent", "env", "hparams")


def agents() -> list[str]:
    """Every registered agent that loads here (an optional one that cannot is skipped)."""
    names = []
    for name in AGENTS:
        try:
            load_agent_class(name)
        except Exception:  # an agent whose optional package is missing
            continue
        names.append(name)
    return names


def env_of(agent: str) -> str:
    """The env a config for ``agent`` names."""
    return AGENT_ENVS.get(agent, DEFAULT_ENV)


def config_keys() -> list[tuple[str, str, Any]]:
    """Every config key there is: ``(agent, dotted key, annotation)``, run keys once per agent."""
    keys: list[tuple[str, str, Any]] = []
    for agent in agents():
        for name, info in RunConfig.model_fields.items():
            if name not in NAMING_KEYS:
                keys.append((agent, name, info.annotation))
        for name, info in load_agent_class(agent).Config.model_fields.items():
            keys.append((agent, f"hparams.{name}", info.annotation))
    return keys


def values_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Values for a key: mostly hostile junk, sometimes a value of the declared kind (which must then be honoured)."""
    base = typing.get_origin(annotation) or annotation
    kinds: list[st.SearchStrategy[Any]] = [junk]
    if base in (int, float) or annotation in (int, float, int | None, float | None):
        kinds.append(st.sampled_from(EDGE_NUMBERS))
        kinds.append(st.integers(min_value=0, max_value=10_000))
        kinds.append(st.floats(min_value=0, max_value=1))
    if annotation is bool:
        kinds.append(st.sampled_from([True, False, 0, 1, "true", "True"]))
    if base is typing.Literal:
        kinds.append(st.sampled_from([*typing.get_args(annotation), "AUTO", ""]))
    return st.one_of(*kinds)


# --- command-line options -------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of one subcommand: its flag, the kind of value it takes (int, float, str, path, flag), its bound.

    ``bounded``: a number option that declares a largest value. One that does not (``train --steps``)
    is a request for that much work, so only small valid values are drawn for it (and every invalid one).
    """

    command: str
    flag: str
    kind: str
    bounded: bool = False


def _kind(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    inner = args[0] if args else annotation
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    args = [a for a in typing.get_args(inner) if a is not type(None)] or [inner]
    base = args[0]
    if typing.get_origin(base) is list:
        base = typing.get_args(base)[0]
    return {int: "int", float: "float", bool: "flag", Path: "path"}.get(base, "str")


def cli_options() -> list[Option]:
    """Every option of every ``gymlab`` subcommand (as ``gymlab.cli.app`` declares them)."""
    from typer.main import get_command

    from gymlab.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    options = []
    for info in app.registered_commands:
        callback = getattr(info.callback, "__wrapped__", info.callback)
        assert callback is not None
        hints = typing.get_type_hints(callback, include_extras=True)
        name = info.name or callback.__name__
        for param in commands[name].params:
            if param.param_type_name == "option":
                flag = max(param.opts, key=len)
                bounded = getattr(param, "max", None) is not None
                options.append(Option(name, flag, _kind(hints[param.name]), bounded))
    return options


def option_values(option: Option) -> st.SearchStrategy[str]:
    """Text for ``option``: edge numbers written every way, odd text, and a few plain values.

    A number option without a declared bound gets no large positive numbers (see :class:`Option`).
    """
    edges = EDGE_NUMBERS if option.bounded else [v for v in EDGE_NUMBERS if not (isinstance(v, int) and v > 2)]
    numbers = st.sampled_from(edges).map(lambda v: repr(v) if isinstance(v, float) else str(v))
    if option.kind in ("int", "float"):
        small = st.integers(min_value=1, max_value=2).map(str)
        texts = [t for t in EDGE_TEXTS if option.bounded or not _large_number(t)]
        return st.one_of(numbers, st.sampled_from(texts), small)
    return st.sampled_from(EDGE_TEXTS)


def _large_number(text: str) -> bool:
    """Whether ``text`` reads as a finite number above 2, however written ("3.5", "1e308", "1_000")."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 2


# --- paths ----------------------------------------------------------------------------------------

#: Kinds of filesystem entries a path argument may name (see :func:`make_path`).
PATH_KINDS = ("missing", "empty-file", "text-file", "folder", "fifo", "symlink-to-fifo", "dangling-symlink", "loop")


def make_path(kind: str, where: Path) -> Path:
    """Create an entry of ``kind`` under ``where`` and return its path."""
    import os

    where.mkdir(parents=True, exist_ok=True)
    path = where / f"p-{kind}"
    if kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "text-file":
        path.write_text("not: [a config\n")
    elif kind == "folder":
        path.mkdir()
        (path / "stray.txt").write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-fifo":
        os.mkfifo(where / "target-fifo")
        path.symlink_to(where / "target-fifo")
    elif kind == "dangling-symlink":
        path.symlink_to(where / "nowhere")
    elif kind == "loop":
        path.symlink_to(path)
    return path


# --- user envs ------------------------------------------------------------------------------------

#: Observation spaces the generated env may have (``env_kwargs.space``).
SPACES = ("discrete", "box", "box-inf", "box-int", "multi-discrete", "multi-binary", "tuple", "dict")
#: How it misbehaves (``env_kwargs.fault``): raising in one method, returning what its space does not allow,
#: calling ``sys.exit`` in ``step``, a reward that is an array or beyond float32, ``terminated`` as text,
#: frames of floats in [0, 1], or the old Gym API (``step`` returning 4 values, ``reset`` a bare observation).
FAULTS = (
    "none", "init", "reset", "step", "render", "close",
    "wrong-shape", "wrong-dtype", "out-of-bounds", "nan",
    "exit", "reward-array", "reward-huge", "done-text", "render-float", "old-api-step", "old-api-reset",
)  # fmt: skip

ENV_MODULE = '''
"""A user env whose observation space and misbehaviour are chosen by env_kwargs (tests/strategies.py)."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _space(kind):
    if kind == "discrete":
        return spaces.Discrete(5)
    if kind == "box":
        return spaces.Box(-1.0, 1.0, (3,), np.float32)
    if kind == "box-inf":
        return spaces.Box(-np.inf, np.inf, (2, 2), np.float64)
    if kind == "box-int":
        return spaces.Box(0, 9, (3,), np.int64)
    if kind == "multi-discrete":
        return spaces.MultiDiscrete([3, 4])
    if kind == "multi-binary":
        return spaces.MultiBinary(4)
    if kind == "tuple":
        return spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32)))
    if kind == "dict":
        return spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), "flag": spaces.MultiBinary(2)})
    raise ValueError(kind)


def _spoil(space, obs, fault):
    """What a misbehaving env returns instead of ``obs``."""
    if isinstance(space, spaces.Tuple):
        return (_spoil(space[0], obs[0], fault), obs[1])
    if isinstance(space, spaces.Dict):
        return {**obs, "pos": _spoil(space["pos"], obs["pos"], fault)}
    arr = np.asarray(obs)
    if fault == "wrong-shape":
        return np.zeros((*arr.shape, 2), arr.dtype) if arr.ndim else np.zeros(2, arr.dtype)
    if fault == "wrong-dtype":
        return arr.astype(np.float64) + 0.5 if arr.dtype.kind in "iub" else arr.astype(np.complex128)
    if fault == "out-of-bounds":
        return np.full_like(arr, 1e38 if arr.dtype.kind == "f" else 99)
    if fault == "nan":
        return np.full(arr.shape, np.nan) if arr.dtype.kind == "f" else arr.astype(np.float64) * np.nan
    return obs


class Generated(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, space="box", fault="none", render_mode=None):
        if fault == "init":
            raise RuntimeError("broken __init__")
        self.observation_space = _space(space)
        self.action_space = spaces.Discrete(2)
        self.fault, self.render_mode, self.k = fault, render_mode, 0

    def _obs(self):
        self.observation_space.seed(self.k)
        obs = self.observation_space.sample()
        return _spoil(self.observation_space, obs, self.fault)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.fault == "reset":
            raise RuntimeError("broken reset")
        self.k = 0
        if self.fault == "old-api-reset":
            return self._obs()
        return self._obs(), {}

    def step(self, action):
        if self.fault == "step":
            raise RuntimeError("broken step")
        if self.fault == "exit" and self.k == 3:
            import sys

            sys.exit(3)
        self.k += 1
        reward = {"reward-array": np.array([1.0, 1.0]), "reward-huge": 1e39}.get(self.fault, 1.0)
        done = ("yes" if self.k >= 8 else "no") if self.fault == "done-text" else self.k >= 8
        if self.fault == "old-api-step":
            return self._obs(), reward, done, {}
        return self._obs(), reward, done, False, {}

    def render(self):
        if self.fault == "render":
            raise RuntimeError("broken render")
        if self.fault == "render-float":
            return np.full((16, 16, 3), 0.5)
        return np.zeros((16, 16, 3), np.uint8)

    def close(self):
        if self.fault == "close":
            raise RuntimeError("broken close")
'''


def write_env_module(folder: Path, name: str = "fuzzenvs") -> str:
    """Write :data:`ENV_MODULE` as ``folder/name.py``; returns the env id of its class."""
    (folder / f"{name}.py").write_text(ENV_MODULE)
    return f"{name}:Generated"


def env_cases() -> st.SearchStrategy[tuple[str, str]]:
    """(space, fault) pairs."""
    return st.tuples(st.sampled_from(SPACES), st.sampled_from(FAULTS))


def one_line_or_ok(code: int | None, out: str, err: str) -> Iterator[str]:
    """What is wrong with a command's ending by the project's rule (exit 0, or exit 2 with one error line)."""
    if code not in (0, 2):
        yield f"exit code {code}"
    if "Traceback" in out + err:
        yield "a traceback"
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2 and (len(lines) != 1 or not lines[0].startswith("gymlab: error: ")):
        yield f"{len(lines)} stderr lines, not one 'gymlab: error:' line"
