"""Environments by name: Gymnasium ids, ``module:EnvId`` ids, or ``module:EnvClass`` classes.

The loop gets its envs from here: a vector env in same-step autoreset mode (so every step the
loop sees is a real transition, with the episode's final observation in ``infos["final_obs"]``)
and a separate evaluation env. Wrappers named in a config (``wrappers: [atari]``) are applied to
each copy, told whether the copy is for training or for evaluation. Env families
(:data:`ENV_FAMILIES`) add the ids an optional package registers, and may run a wrapper stack in a
vector env of their own: for ``[atari]`` that is ALE's, by default (``vectorization: auto``; see
``gymlab.envs.atari``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import reprlib
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv

from gymlab.envfault import CopyChecked, check_spaces_declared
from gymlab.errors import USER_CODE_FAILURES, GymlabError, describe, raised_text
from gymlab.extras import import_module, install_hint, load_attr, missing_dependency, missing_extra
from gymlab.vector import ARRAY_SPACES, LeanSyncVectorEnv

#: Wrapper stacks a config can name; each is ``fn(env, *, train: bool) -> env``.
WRAPPERS: Mapping[str, str] = {
    "atari": "gymlab.envs.atari:wrap_atari",
    "flatten": "gymlab.registry:flatten_observations",
}


def flatten_observations(env: gym.Env[Any, Any], *, train: bool) -> gym.Env[Any, Any]:
    """``wrappers: [flatten]``: Dict, Tuple or MultiDiscrete observations as one flat Box (Gymnasium's own wrapper)."""
    return gym.wrappers.FlattenObservation(env)


EnvWrapper = Callable[..., gym.Env[Any, Any]]

#: Env families (see :class:`EnvFamily`) as modules to import when the registry needs one: ids that an optional
#: package registers, the hints for them when it is missing, and their native vector env.
ENV_FAMILIES: tuple[str, ...] = ("gymlab.envs.atari",)


def env_error(env_id: str, call: str, exc: BaseException) -> GymlabError:
    """A one-line error for an exception the env raised in ``call`` (e.g. ``"step()"``, ``"reset(seed=3)"``).

    For the loop and other callers of a user's env: ``raise registry.env_error(id, "step()", exc) from exc``.
    A GymlabError passes through unchanged; a missing optional dependency names its extra.
    """
    if isinstance(exc, GymlabError):
        return exc
    missing = missing_dependency(exc)
    if missing is not None:
        module, extra = missing
        return GymlabError(f"environment '{env_id}' needs {module} (gymlab's {extra} extra): {install_hint(extra)}")
    return GymlabError(f"environment '{env_id}': {call} raised {describe(exc)}")


def _register_lab_envs() -> None:
    """Make the lab's own envs known to gym.make."""
    importlib.import_module("gymlab.envs")  # registers SeqGen and friends on import


class EnvFamily(Protocol):
    """What a module in :data:`ENV_FAMILIES` provides: its ids, the hints for them, and its native vector env.

    A family is a set of ids that Gymnasium knows only once an optional package registers them
    (Atari's, through ale-py), and that may come with a vector env of its own for one wrapper stack.
    """

    #: The wrapper stack its native vector env stands in for (empty: it has none), and that env's name in messages.
    NATIVE_WRAPPERS: tuple[str, ...]
    NATIVE_NAME: str

    def register(self) -> bool:
        """Register the family's ids with Gymnasium; False when its package is missing or fails to import."""
        ...

    def unavailable_error(self, env_id: str) -> str | None:
        """For an unknown id while the family cannot register: the whole error when the id is surely one of its."""
        ...

    def unavailable_hint(self, env_id: str) -> str | None:
        """For an unknown id while the family cannot register: a sentence to add when the id may be one of its."""
        ...

    def native_vector_env(
        self, spec: EnvSpec | None, env_kwargs: Mapping[str, Any]
    ) -> Callable[..., VectorEnv[Any, Any, Any]] | str:
        """Its native vector env class for the env of ``spec``, or why that cannot run it.

        The class is called as ``cls(env_id, num_envs, env_kwargs, train=train)`` in same-step autoreset mode.
        """
        ...


def _env_families() -> list[EnvFamily]:
    """The modules of :data:`ENV_FAMILIES`, imported now (each is light: its package is imported by ``register``)."""
    return [cast(EnvFamily, importlib.import_module(path)) for path in ENV_FAMILIES]


def _register_families() -> list[EnvFamily]:
    """Register every family's ids with Gymnasium; the families that cannot (their package missing or broken)."""
    return [family for family in _env_families() if not family.register()]


def _unknown_env(env_id: str) -> GymlabError:
    unavailable = _register_families()
    for family in unavailable:
        error = family.unavailable_error(env_id)
        if error is not None:
            return GymlabError(error)
    names = list(gym.registry)
    close = difflib.get_close_matches(env_id, names, n=3, cutoff=0.6)
    if not close:  # try ignoring the version, e.g. Taxi-v3 -> Taxi-v4
        stem = re.sub(r"-v\d+$", "", env_id)
        close = [n for n in names if re.sub(r"-v\d+$", "", n).lower() == stem.lower()][:3]
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.registry for the ids"
    for family in unavailable:
        extra = family.unavailable_hint(env_id)
        if extra is not None:
            hint += f" {extra}"
    return GymlabError(f"unknown environment '{env_id}': {hint} (your own env: module:EnvClass or module:Env-v0)")


def _check_extra(env_id: str, name: str) -> None:
    """Refuse a registered id whose entry point needs an extra that is not installed, naming the install command."""
    spec = gym.registry.get(name)
    if spec is None:
        return
    need = missing_extra(spec.entry_point)
    if need is not None:
        extra, missing = need
        raise GymlabError(
            f"environment '{env_id}' needs {', '.join(missing)} (gymlab's {extra} extra): {install_hint(extra)}"
        )


def resolve_env(env_id: str) -> None:
    """Check that ``env_id`` names an env, raising a one-line error with close names if not.

    Also refuses an id whose optional dependencies are missing (Box2D, ale-py), naming the extra
    and its install command, and a user module that fails to import, naming the cause.
    """
    _register_lab_envs()
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        module = import_module(module_name, f"environment '{env_id}'")  # importing registers its ids
        if attr in gym.registry:
            _check_extra(env_id, attr)
            return
        if inspect.isclass(getattr(module, attr, None)):
            return
        raise GymlabError(
            f"environment '{env_id}': '{module_name}' neither registers '{attr}' nor defines a class of that name"
        )
    if env_id not in gym.registry:
        _register_families()  # ids that an optional package registers (e.g. ale-py's Atari games)
        if env_id not in gym.registry:
            raise _unknown_env(env_id)
    _check_extra(env_id, env_id)


def _base_env(env_id: str, env_kwargs: Mapping[str, Any], render_mode: str | None) -> gym.Env[Any, Any]:
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    name = env_id
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        target = getattr(import_module(module_name, f"environment '{env_id}'"), attr, None)
        if inspect.isclass(target) and attr not in gym.registry:
            if not issubclass(target, gym.Env):
                raise GymlabError(f"environment '{env_id}': {attr} is a class but not a gymnasium.Env")
            # max_episode_steps is gym.make's time limit for a registered id; a class gets the same (unless it
            # takes the argument itself)
            limit = None
            if "max_episode_steps" not in inspect.signature(target).parameters:
                limit = kwargs.pop("max_episode_steps", None)
                if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                    raise GymlabError(
                        f"environment '{env_id}': env_kwargs.max_episode_steps must be a whole number of at least 1, "
                        f"not {limit!r}"
                    )
            try:
                made: gym.Env[Any, Any] = target(**kwargs)
            except USER_CODE_FAILURES as exc:
                raise _construct_error(env_id, env_kwargs, exc) from None
            check_spaces_declared(made, env_id)
            return made if limit is None else gym.wrappers.TimeLimit(made, max_episode_steps=limit)
        name = attr
    try:
        return gym.make(name, **kwargs)
    except USER_CODE_FAILURES as exc:
        raise _construct_error(env_id, env_kwargs, exc) from None


def _construct_error(env_id: str, env_kwargs: Mapping[str, Any], exc: BaseException) -> GymlabError:
    """One line for an env whose construction failed: bad env_kwargs, a missing extra, or the env's own error."""
    if isinstance(exc, GymlabError):
        return exc
    if missing_dependency(exc) is not None:
        return env_error(env_id, "construction", exc)
    given = f" with env_kwargs {dict(env_kwargs)}" if env_kwargs else ""
    if isinstance(exc, TypeError) and "argument" in str(exc):  # an unknown or missing keyword
        # gym.make appends " was raised from the environment creator for ID with kwargs (...)": said already
        reason = str(exc).split(" was raised from the environment creator", 1)[0]
        return GymlabError(f"environment '{env_id}' rejected env_kwargs {dict(env_kwargs)}: {reason}")
    return GymlabError(f"environment '{env_id}'{given}: its constructor {raised_text(exc)}")


def _checked_copy(factory: Callable[[], gym.Env[Any, Any]], copy: int) -> gym.Env[Any, Any]:
    """Copy ``copy`` of a vector env that Gymnasium steps, checked as the lean one checks its copies."""
    return CopyChecked(factory(), copy)


def _worker_copy(factory: Callable[[], gym.Env[Any, Any]], copy: int, run_pid: int) -> gym.Env[Any, Any]:
    """Copy ``copy`` of Gymnasium's process-per-copy vector env, made inside its worker process.

    The worker ignores Ctrl-C and SIGTERM: a terminal sends them to the whole process group, and the
    worker would otherwise raise the run's start-up interrupt (the handler it was forked with) back
    through the pipe as the env's error. The run hears the signal itself, stops between two steps and
    closes its workers. (Gymnasium also makes a first copy in the run's own process, ``run_pid``, to
    read its spaces: that one leaves the run's handlers alone.)
    """
    if os.getpid() != run_pid:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return _checked_copy(factory, copy)


def make_env(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    wrappers: Sequence[str] = (),
    *,
    train: bool,
    render_mode: str | None = None,
    episode_statistics: bool = True,
) -> gym.Env[Any, Any]:
    """Build one env with the named wrappers; ``train`` tells them training from evaluation.

    ``episode_statistics``: a ``RecordEpisodeStatistics`` innermost (off where the vector env keeps
    the statistics itself: :class:`~gymlab.vector.LeanSyncVectorEnv` over copies without wrappers).

    Whatever goes wrong building it (bad env_kwargs, a constructor or wrapper that raises, a
    missing optional dependency) is one :class:`GymlabError` naming the env and the cause.
    """
    resolve_env(env_id)
    # Innermost, so episode statistics are the whole game's, before any wrapper that clips rewards
    # or ends training episodes early (e.g. Atari's terminal-on-life-loss).
    env: gym.Env[Any, Any] = _base_env(env_id, env_kwargs or {}, render_mode)
    if episode_statistics:
        env = gym.wrappers.RecordEpisodeStatistics(env)
    for name in wrappers:
        wrap: EnvWrapper = load_attr(WRAPPERS.get(name, name), "wrapper")
        inner = env
        try:
            env = wrap(inner, train=train)
        except Exception as exc:
            inner.close()
            if missing_dependency(exc) is not None:
                raise env_error(env_id, f"wrapper '{name}'", exc) from None
            how = (
                " (a wrapper is called as wrapper(env, *, train=...), train telling training from evaluation)"
                if isinstance(exc, TypeError) and "train" in str(exc)
                else ""
            )
            raise GymlabError(f"wrapper '{name}' on environment '{env_id}' raised {describe(exc)}{how}") from None
        _check_wrapped(env, inner, name, env_id)
    return env


def _check_wrapped(env: Any, inner: gym.Env[Any, Any], name: str, env_id: str) -> None:
    """Refuse in one line what a wrapper returned in place of the env it was given, wrapped.

    Not an env at all (None, a number), or the env below every wrapper (``env.unwrapped``): the
    wrappers before it, the episode statistics recorded innermost among them, would be gone.
    """
    is_env = isinstance(env, gym.Env)
    stripped = is_env and env is not inner and env is inner.unwrapped
    if is_env and not stripped:
        return
    what = "the env below all wrappers (env.unwrapped)" if is_env else reprlib.repr(env)
    inner.close()
    raise GymlabError(
        f"wrapper '{name}' on environment '{env_id}' returned {what}, not the env it was given, wrapped: "
        "return a gymnasium.Wrapper around the env it gets"
    )


def has_native_vector_env(env_id: str) -> bool:
    """Whether the id is one of the lab's natively batched envs (e.g. SeqGen's token generator).

    Only the lab's own: Gymnasium registers batched versions of some classic envs too (CartPole),
    but in next-step autoreset mode, which the loop does not use; those go through per-copy envs.
    """
    resolve_env(env_id)
    spec = gym.registry.get(env_id.rpartition(":")[2])
    entry = spec.vector_entry_point if spec is not None else None
    return isinstance(entry, str) and entry.startswith("gymlab.")


def _native_vector_env(
    env_id: str, env_kwargs: Mapping[str, Any], wrappers: Sequence[str], vectorization: str, render_mode: str | None
) -> Callable[..., VectorEnv[Any, Any, Any]] | None:
    """A family's native vector env class when ``vectorization`` asks for it (or ``auto``) and it can run the env."""
    if vectorization not in ("auto", "native"):
        return None
    natives = [family for family in _env_families() if family.NATIVE_WRAPPERS]
    family = next((f for f in natives if list(wrappers) == list(f.NATIVE_WRAPPERS)), None)
    if family is None or render_mode is not None:
        if vectorization == "native":
            offers = " or ".join(f"{f.NATIVE_NAME} for wrappers: [{', '.join(f.NATIVE_WRAPPERS)}]" for f in natives)
            raise GymlabError(
                f"vectorization=native is {offers} (without rendering); "
                f"environment '{env_id}' has wrappers {list(wrappers)}: use vectorization=sync"
            )
        return None
    resolve_env(env_id)
    native = family.native_vector_env(gym.registry.get(env_id.rpartition(":")[2]), env_kwargs)
    if not isinstance(native, str):
        return native
    if vectorization == "native":
        raise GymlabError(f"environment '{env_id}': vectorization=native cannot run it: {native}; use sync")
    return None


def effective_vectorization(
    env_id: str, env_kwargs: Mapping[str, Any], wrappers: Sequence[str], vectorization: str
) -> str:
    """What ``vectorization`` means for this env: ``auto`` resolved as :func:`make_vec_env` resolves it.

    ``native`` or ``sync`` for ``auto``; any other value as given. Two configs that differ only in ``auto`` against
    what it resolves to train on the same envs.
    """
    if vectorization != "auto":
        return vectorization
    return "native" if _native_vector_env(env_id, env_kwargs, wrappers, vectorization, None) is not None else "sync"


def make_vec_env(
    env_id: str,
    num_envs: int,
    env_kwargs: Mapping[str, Any] | None = None,
    wrappers: Sequence[str] = (),
    *,
    vectorization: str = "auto",
    train: bool = True,
    render_mode: str | None = None,
) -> VectorEnv[Any, Any, Any]:
    """A vector env of ``num_envs`` copies in same-step autoreset mode.

    In same-step mode a step that ends an episode returns the *next* episode's first observation
    and puts the ended episode's last one in ``infos["final_obs"]``: every step is a real
    transition, and the loop never has to discard the "reset step" that next-step mode inserts.

    ``vectorization``: ``sync`` (copies stepped in this process), ``async`` (one process each),
    ``native`` (ALE's C++ vector env for ``wrappers: [atari]``; one line when it cannot run the
    env), or ``auto``: native where it can run, sync otherwise.
    """
    native = _native_vector_env(env_id, env_kwargs or {}, wrappers, vectorization, render_mode)
    if native is not None:
        try:
            return native(env_id, num_envs, env_kwargs, train=train)
        except Exception as exc:
            raise _construct_error(env_id, env_kwargs or {}, exc) from None
    if has_native_vector_env(env_id):
        if wrappers or vectorization == "async":
            what = f"wrappers ({', '.join(wrappers)})" if wrappers else "vectorization=async (a process per copy)"
            raise GymlabError(
                f"environment '{env_id}' is one batched env of all its copies, which takes no {what}: remove it"
            )
        try:
            venv = gym.make_vec(
                env_id.rpartition(":")[2],
                num_envs=num_envs,
                vectorization_mode="vector_entry_point",
                **dict(env_kwargs or {}),
            )
        except Exception as exc:
            raise _construct_error(env_id, env_kwargs or {}, exc) from None
        if venv.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise GymlabError(f"environment '{env_id}': its vector env must use same-step autoreset")
        return venv

    # Without wrappers, the lean vector env keeps episode statistics itself (no wrapper call per step);
    # wrappers that end episodes early or clip rewards need them innermost, below themselves.
    lean_counts = not wrappers and vectorization != "async"

    def factory(statistics: bool = True) -> gym.Env[Any, Any]:
        return make_env(
            env_id, env_kwargs, wrappers, train=train, render_mode=render_mode, episode_statistics=statistics
        )

    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(
            [functools.partial(_worker_copy, factory, i, os.getpid()) for i in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
    first = factory(not lean_counts)
    if isinstance(first.observation_space, ARRAY_SPACES):
        copies = [lambda: first, *[lambda: factory(not lean_counts)] * (num_envs - 1)]
        return LeanSyncVectorEnv(copies, count_episodes=lean_counts)
    if lean_counts:  # Gymnasium's vector env needs the statistics from the copies
        first = gym.wrappers.RecordEpisodeStatistics(first)
    return gym.vector.SyncVectorEnv(
        [lambda: CopyChecked(first, 0), *[functools.partial(_checked_copy, factory, i) for i in range(1, num_envs)]],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
