"""What a checkpoint saves beside the agent: the global random generators and the envs' own state.

Gymnasium has no serialisation API for envs, and pickling one would mean loading code from the
checkpoint. Instead each layer of the wrapper chain contributes its plain-data attributes
(episode step counters, the toy-text state index, classic-control state vectors) and its
generator's state; MuJoCo envs add qpos/qvel. For such envs a resume continues the very episodes
that were running. Layers holding opaque simulator objects (ALE, Box2D) are not captured: there
a resume starts fresh episodes.
"""

from __future__ import annotations

import random
from typing import Any

import gymnasium as gym
import numpy as np
import torch

# --- global random number generators ---------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the global generator itself
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(state["numpy"])  # noqa: NPY002 - the global generator itself
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- environment state -----------------------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None), np.generic)


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufc" and value.size <= 1_000_000
    if isinstance(value, (tuple, list)):
        return len(value) <= 1_000 and all(isinstance(v, _PLAIN) for v in value)
    return False


def env_state(env: gym.Env[Any, Any]) -> list[dict[str, Any]]:
    """Plain-data state of every layer of a (wrapped) env, outermost first."""
    layers: list[dict[str, Any]] = []
    layer: Any = env
    while True:
        state: dict[str, Any] = {}
        for key, value in vars(layer).items():
            if isinstance(value, np.random.Generator):
                state[key] = {"__generator__": value.bit_generator.state}
            elif _is_plain(value):
                state[key] = value
        if layer is env.unwrapped and hasattr(layer, "set_state") and hasattr(layer, "data"):
            data = layer.data  # MuJoCo
            state["__mujoco__"] = {"qpos": data.qpos.copy(), "qvel": data.qvel.copy(), "time": float(data.time)}
        layers.append(state)
        if not isinstance(layer, gym.Wrapper):
            return layers
        layer = layer.env


def set_env_state(env: gym.Env[Any, Any], layers: list[dict[str, Any]]) -> None:
    """Restore what :func:`env_state` captured into an env built the same way."""
    layer: Any = env
    for state in layers:
        for key, value in state.items():
            if key == "__mujoco__":
                layer.set_state(value["qpos"], value["qvel"])
                layer.data.time = value["time"]
            elif isinstance(value, dict) and "__generator__" in value:
                gen_state = value["__generator__"]
                bitgen = getattr(np.random, gen_state["bit_generator"])()
                bitgen.state = gen_state
                setattr(layer, key, np.random.Generator(bitgen))
            else:
                setattr(layer, key, value)
        if not isinstance(layer, gym.Wrapper):
            return
        layer = layer.env


#: Attributes of an unwrapped env that hold a simulator whose state plain data cannot restore.
OPAQUE_SIMULATORS = ("ale", "world")  # the Arcade Learning Environment; Box2D


def capturable(env: gym.Env[Any, Any]) -> bool:
    """Whether :func:`env_state` restores this env exactly (no opaque simulator inside)."""
    return not any(hasattr(env.unwrapped, name) for name in OPAQUE_SIMULATORS)


def vector_env_state(envs: Any) -> dict[str, Any] | None:
    """State of a vector env: its own ``state_dict`` if it has one, else each sync copy's layers.

    None when the episodes in progress cannot be restored exactly (async copies live in other
    processes; Atari and Box2D simulators are opaque): a resume then starts fresh episodes.
    """
    if hasattr(envs, "state_dict"):
        return {"native": envs.state_dict()}
    if hasattr(envs, "envs") and all(capturable(e) for e in envs.envs):
        state: dict[str, Any] = {"copies": [env_state(e) for e in envs.envs]}
        episodes = envs.episode_state() if hasattr(envs, "episode_state") else None
        if episodes is not None:  # the running sums of a vector env that keeps episode statistics itself
            state["episodes"] = episodes
        return state
    return None


def _layers(env: gym.Env[Any, Any]) -> int:
    """How many layers (wrappers and the env) :func:`env_state` walks."""
    count, layer = 1, env
    while isinstance(layer, gym.Wrapper):
        count, layer = count + 1, layer.env
    return count


def set_vector_env_state(envs: Any, state: dict[str, Any] | None) -> bool:
    """Restore :func:`vector_env_state`; False when nothing could be restored."""
    if state is None:
        return False
    if "native" in state and hasattr(envs, "load_state_dict"):
        envs.load_state_dict(state["native"])
        return True
    if "copies" in state and hasattr(envs, "envs"):
        # A checkpoint of copies wrapped otherwise (e.g. one from before the vector env kept episode
        # statistics itself) cannot be put back layer by layer: fresh episodes then.
        if any(len(layers) != _layers(env) for env, layers in zip(envs.envs, state["copies"], strict=True)):
            return False
        if ("episodes" in state) != (getattr(envs, "episode_state", lambda: None)() is not None):
            return False
        for env, layers in zip(envs.envs, state["copies"], strict=True):
            set_env_state(env, layers)
        if "episodes" in state:
            envs.load_episode_state(state["episodes"])
        return True
    return False


def batch_fits(space: gym.Space[Any], obs: Any) -> bool:
    """Whether a checkpoint's observations are a batch of the vector env's (a Box's shape and dtype exactly)."""
    if isinstance(space, gym.spaces.Box):
        return isinstance(obs, np.ndarray) and obs.shape == space.shape and obs.dtype == space.dtype
    try:
        return bool(space.contains(obs))
    except Exception:  # a value of any type: whatever contains() raises on it, it does not fit
        return False
