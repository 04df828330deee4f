"""Building a run from its config: the device, the process's generators, the envs and the agent.

One path for everything that needs an agent: :func:`preflight` (before a run folder exists),
:func:`build` (a training run), :func:`build_policy` (``gymlab eval``, ``watch`` and videos load a
checkpoint's policy into an agent made for one env), and :func:`eval_envs`, the one evaluation env
that training-time evaluation and ``gymlab eval`` both play on.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from gymlab import registry
from gymlab.agent import POLICY, Agent, Context, check_agent_spaces, check_config, ignore_text
from gymlab.checkpoint import Checkpoint
from gymlab.config import DEVICE_PATTERN, DEVICE_WORDS, Config
from gymlab.envguard import close_env
from gymlab.errors import GymlabError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one, or for no device at all, is a clear error."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise GymlabError(f"--device '{name}': {DEVICE_WORDS}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GymlabError("--device mps was asked for but this machine has no MPS device; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GymlabError(f"--device {name} was asked for but no CUDA device is available; use --device auto or cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        names = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise GymlabError(
            f"--device {name} was asked for but this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"({names}); use one of those, auto or cpu"
        )
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator that libraries and users draw from
    torch.manual_seed(seed)


def prepare_process(config: Config) -> None:
    """A training process's global state for this run: seeded generators, torch's CPU threads, determinism.

    ``deterministic`` makes torch choose deterministic kernels (and cuBLAS a fixed workspace, which
    it reads before its first call), so a CUDA run repeats itself bit for bit, resumes included.
    """
    if config.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(config.run.seed)
    if config.run.threads > 0:
        # Measured: REINFORCE/DQN-sized nets on 2 cores run up to several times slower with 2
        # threads than with 1 (thread hand-offs cost more than the small matmuls they split).
        torch.set_num_threads(config.run.threads)


def make_context(
    config: Config,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    *,
    num_envs: int | None = None,
    device: torch.device | None = None,
    text: Callable[[str, str], None] = ignore_text,
    training: bool = True,
) -> Context:
    """The agent's :class:`Context` for this config (``num_envs`` and ``device`` default to the config's)."""
    run = config.run
    return Context(
        observation_space,
        action_space,
        run.num_envs if num_envs is None else num_envs,
        run.seed,
        resolve_device(run.device) if device is None else device,
        run.steps,
        env_id=run.env,
        env_kwargs=MappingProxyType(run.env_kwargs),
        text=text,
        training=training,
    )


def check_fit(config: Config, ctx: Context) -> None:
    """Refuse in one line an agent that cannot handle the env's spaces, or that cannot run this config."""
    cls = config.agent_class
    check_agent_spaces(cls, config.run.env, ctx.observation_space, ctx.action_space)
    problem = check_config(cls, config.hparams, ctx)
    if problem is not None:
        raise GymlabError(f"agent '{config.run.agent}' cannot run this config: {problem}")


def preflight(config: Config) -> None:
    """Check, before any folder is created, that the env exists and the agent can handle its spaces and config."""
    run = config.run
    env = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=True)
    try:
        check_fit(config, make_context(config, env.observation_space, env.action_space))
    finally:
        close_env(env)


def eval_envs(config: Config) -> VectorEnv[Any, Any, Any]:
    """The evaluation env: one copy without training's reward clipping or life-loss ends, in this process.

    Of the same kind as training's (ALE's native vector env or Python wrappers); ``async`` runs
    evaluate in-process (``sync``).
    """
    run = config.run
    kind = "sync" if run.vectorization == "async" else run.vectorization
    return registry.make_vec_env(run.env, 1, run.env_kwargs, run.wrappers, vectorization=kind, train=False)


#: What torch's and numpy's allocators say when a request cannot be met.
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "unable to allocate", "not enough memory")
#: What numpy and torch say of a size too large to be computed at all (settings multiplied past 64 bits).
TOO_LARGE = (
    "maximum allowed size exceeded", "maximum allowed dimension exceeded", "array is too big",
    "storage size calculation overflowed", "overflow when unpacking long",
)  # fmt: skip
#: The errors an allocation that cannot be met raises (see :func:`out_of_memory`).
ALLOCATION_ERRORS = (MemoryError, RuntimeError, ValueError, TypeError)


def out_of_memory(exc: BaseException) -> str | None:
    """What an allocator said when it could not meet a request; None for any other error.

    numpy raises MemoryError, torch a RuntimeError (or its OOM subclass) that says so; a size past
    64 bits is numpy's ValueError or torch's RuntimeError or TypeError (:data:`TOO_LARGE`).
    """
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) or any(s in said.lower() for s in (*OUT_OF_MEMORY, *TOO_LARGE)):
        return said[:200]
    return None


def make_agent(config: Config, ctx: Context) -> Agent:
    """Build the agent: running out of memory while it allocates is one line, not an allocator's traceback.

    A table or a replay memory is sized by the env's spaces and the config; the line names both.
    """
    try:
        return config.agent_class(config.hparams, ctx)
    except ALLOCATION_ERRORS as exc:
        said = out_of_memory(exc)
        if said is None:
            raise
        raise GymlabError(
            f"agent '{config.run.agent}' does not fit in memory for {config.run.env} (observations "
            f"{ctx.observation_space}, actions {ctx.action_space}): {said}; use a smaller env space "
            "or smaller settings (buffer_size, net_arch, num_envs)"
        ) from None


@dataclass(frozen=True)
class Built:
    """A training run's envs and agent."""

    envs: VectorEnv[Any, Any, Any]
    eval_envs: VectorEnv[Any, Any, Any]
    agent: Agent


def build(config: Config, text: Callable[[str, str], None] = ignore_text) -> Built:
    """Make the training and evaluation envs and the agent, checking the agent fits the env and config.

    ``text`` is the agent's text channel (``Context.text``). Whatever was built is closed again if a
    later part fails or is interrupted.
    """
    run = config.run
    device = resolve_device(run.device)
    envs = registry.make_vec_env(
        run.env, run.num_envs, run.env_kwargs, run.wrappers, vectorization=run.vectorization, train=True
    )
    try:
        ctx = make_context(config, envs.single_observation_space, envs.single_action_space, device=device, text=text)
        check_fit(config, ctx)
        evaluation = eval_envs(config)
        try:
            agent = make_agent(config, ctx)
        except BaseException:
            close_env(evaluation)
            raise
    except BaseException:
        close_env(envs)
        raise
    return Built(envs, evaluation, agent)


def build_policy(config: Config, ckpt: Checkpoint, device: str | None = None) -> Agent:
    """A trained agent for acting: built for one env, to act only, given the checkpoint's policy state only.

    So any run (whatever its ``num_envs`` or memory settings) can be evaluated and watched, without
    building what only learning needs (``Context.training``).
    """
    run = config.run
    env = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=False)
    obs_space, act_space = env.observation_space, env.action_space
    close_env(env)
    device_ = resolve_device(run.device if device is None else device)
    ctx = make_context(config, obs_space, act_space, num_envs=1, device=device_, training=False)
    agent = make_agent(config, ctx)
    state = ckpt.agent_state
    if POLICY not in state:
        raise GymlabError(f"checkpoint of {run.agent} on {run.env} holds no policy state; it is not from this gymlab")
    try:
        agent.load_state_dict({POLICY: state[POLICY]})
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise GymlabError(f"checkpoint does not fit a {run.agent} agent on {run.env}: {exc}") from None
    return agent
