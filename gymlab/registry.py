"""Environments by name: Gymnasium ids, ``module:EnvId`` ids, or ``module:EnvClass`` classes.

The loop gets its envs from here: a vector env in same-step autoreset mode (so every step the
loop sees is a real transition, with the episode's final observation in ``infos["final_obs"]``)
and a separate evaluation env. Wrappers named in a config (``wrappers: [atari]``) are applied to
each copy, told whether the copy is for training or for evaluation.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv

from gymlab.errors import GymlabError
from gymlab.vector import ARRAY_SPACES, LeanSyncVectorEnv

#: Wrapper stacks a config can name; each is ``fn(env, *, train: bool) -> env``.
WRAPPERS: Mapping[str, str] = {
    "atari": "gymlab.envs.atari:wrap_atari",
}

EnvWrapper = Callable[..., gym.Env[Any, Any]]


def _register_lab_envs() -> None:
    """Make the lab's own envs (and Atari, when ale-py is installed) known to gym.make."""
    importlib.import_module("gymlab.envs")  # registers SeqGen and friends on import


def _register_atari() -> bool:
    try:
        import ale_py
    except ImportError:
        return False
    gym.register_envs(ale_py)
    return True


def _import(module_name: str, what: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise GymlabError(f"{what}: cannot import '{module_name}' ({exc}); is it installed?") from None


def _load_attr(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = _import(module_name, f"{what} '{path}'")
    if not hasattr(module, attr):
        raise GymlabError(f"{what} '{path}': module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)


def _unknown_env(env_id: str) -> GymlabError:
    names = list(gym.registry)
    close = difflib.get_close_matches(env_id, names, n=3, cutoff=0.6)
    if not close:  # try ignoring the version, e.g. Taxi-v3 -> Taxi-v4
        stem = re.sub(r"-v\d+$", "", env_id)
        close = [n for n in names if re.sub(r"-v\d+$", "", n).lower() == stem.lower()][:3]
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.registry for the ids"
    return GymlabError(f"unknown environment '{env_id}': {hint} (your own env: module:EnvClass or module:Env-v0)")


def resolve_env(env_id: str) -> None:
    """Check that ``env_id`` names an env, raising a one-line error with close names if not."""
    _register_lab_envs()
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        module = _import(module_name, f"environment '{env_id}'")  # importing registers its ids
        if attr in gym.registry or inspect.isclass(getattr(module, attr, None)):
            return
        raise GymlabError(
            f"environment '{env_id}': '{module_name}' neither registers '{attr}' nor defines a class of that name"
        )
    if env_id not in gym.registry and not (_register_atari() and env_id in gym.registry):
        raise _unknown_env(env_id)


def _base_env(env_id: str, env_kwargs: Mapping[str, Any], render_mode: str | None) -> gym.Env[Any, Any]:
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if ":" in env_id:
        module_name, _, attr = env_id.partition(":")
        target = getattr(importlib.import_module(module_name), attr, None)
        if inspect.isclass(target) and attr not in gym.registry:
            if not issubclass(target, gym.Env):
                raise GymlabError(f"environment '{env_id}': {attr} is a class but not a gymnasium.Env")
            made: gym.Env[Any, Any] = target(**kwargs)
            return made
        env_id = attr
    try:
        return gym.make(env_id, **kwargs)
    except TypeError as exc:
        raise GymlabError(f"environment '{env_id}' rejected env_kwargs {dict(env_kwargs)}: {exc}") from None


def make_env(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    wrappers: Sequence[str] = (),
    *,
    train: bool,
    render_mode: str | None = None,
) -> gym.Env[Any, Any]:
    """Build one env with the named wrappers; ``train`` tells them training from evaluation."""
    resolve_env(env_id)
    # Innermost, so episode statistics are the whole game's, before any wrapper that clips rewards
    # or ends training episodes early (e.g. Atari's terminal-on-life-loss).
    env: gym.Env[Any, Any] = gym.wrappers.RecordEpisodeStatistics(_base_env(env_id, env_kwargs or {}, render_mode))
    for name in wrappers:
        wrap: EnvWrapper = _load_attr(WRAPPERS.get(name, name), "wrapper")
        env = wrap(env, train=train)
    return env


def has_native_vector_env(env_id: str) -> bool:
    """Whether the id is one of the lab's natively batched envs (e.g. SeqGen's token generator).

    Only the lab's own: Gymnasium registers batched versions of some classic envs too (CartPole),
    but in next-step autoreset mode, which the loop does not use; those go through per-copy envs.
    """
    resolve_env(env_id)
    spec = gym.registry.get(env_id.rpartition(":")[2])
    entry = spec.vector_entry_point if spec is not None else None
    return isinstance(entry, str) and entry.startswith("gymlab.")


def make_vec_env(
    env_id: str,
    num_envs: int,
    env_kwargs: Mapping[str, Any] | None = None,
    wrappers: Sequence[str] = (),
    *,
    vectorization: str = "sync",
    train: bool = True,
    render_mode: str | None = None,
) -> VectorEnv[Any, Any, Any]:
    """A vector env of ``num_envs`` copies in same-step autoreset mode.

    In same-step mode a step that ends an episode returns the *next* episode's first observation
    and puts the ended episode's last one in ``infos["final_obs"]``: every step is a real
    transition, and the loop never has to discard the "reset step" that next-step mode inserts.
    """
    if has_native_vector_env(env_id):
        venv = gym.make_vec(
            env_id.rpartition(":")[2],
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            **dict(env_kwargs or {}),
        )
        if venv.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise GymlabError(f"environment '{env_id}': its vector env must use same-step autoreset")
        return venv

    def factory() -> gym.Env[Any, Any]:
        return make_env(env_id, env_kwargs, wrappers, train=train, render_mode=render_mode)

    fns = [factory] * num_envs
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    first = factory()
    fns = [lambda: first, *fns[1:]]
    if isinstance(first.observation_space, ARRAY_SPACES):
        return LeanSyncVectorEnv(fns)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
