"""The agent protocol: the only contract between the rollout loop and an algorithm.

The loop knows nothing of any algorithm. Each agent owns its own schedule: when to learn, when
to sync a target network, when an episode batch is complete. One training iteration is::

    actions = agent.act(obs, explore=True)          # (N, *action_shape)
    ... envs.step(actions) ...
    agent.observe(Transition(...))                  # every step of every env
    metrics = agent.update(step)                    # learns if due; {} when nothing happened

Agents are named in :data:`AGENTS` (lazy import paths, so ``gymlab list`` stays fast) or given
as ``module:Class`` for a user's own agent.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from pydantic import BaseModel

from gymlab.errors import GymlabError

#: Built-in agents by name, as import paths so that naming one never imports another.
AGENTS: Mapping[str, str] = {
    "tabular_q": "gymlab.agents.tabular_q:TabularQ",
    "dqn": "gymlab.agents.dqn:DQN",
    "reinforce": "gymlab.agents.reinforce:Reinforce",
    "seqgan": "gymlab.agents.seqgan:SeqGAN",
}


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of every env, as the loop hands it to ``Agent.observe``.

    ``next_obs`` is the true next observation: for a step that ended an episode it is the final
    observation of that episode (not the first of the next one), so no agent repeats Gymnasium's
    autoreset bookkeeping. A truncated step (time limit) still bootstraps from ``next_obs``; a
    terminated one does not.
    """

    obs: np.ndarray  # (N, *obs_shape)
    action: np.ndarray  # (N, *action_shape) as act() chose it (for Box spaces the env got it clipped)
    reward: np.ndarray  # (N,) float
    next_obs: np.ndarray  # (N, *obs_shape)
    terminated: np.ndarray  # (N,) bool: the MDP reached a terminal state
    truncated: np.ndarray  # (N,) bool: cut by a time limit; the value of next_obs still counts


@dataclass(frozen=True)
class Context:
    """What an agent is told about its surroundings when it is built."""

    observation_space: gym.Space[Any]  # of one env (not the batched vector space)
    action_space: gym.Space[Any]  # of one env
    num_envs: int  # N, the batch size of obs in act() and of every Transition
    seed: int  # seeds the agent's own generators
    device: torch.device
    total_steps: int  # the run's env-step budget, for schedules given as fractions of it


@runtime_checkable
class Agent(Protocol):
    """What the loop, the checkpoints and the CLI need from an algorithm.

    Class attributes:
        name: registry name, also written into checkpoints to catch a wrong-agent load.
        summary: one line for ``gymlab list``.
        spaces: the observation and action spaces it handles, in words, for ``gymlab list``.
        Config: a pydantic model of its hyperparameters, each declared once with a description.

    The constructor takes ``(config: Config, ctx: Context)``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    spaces: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Return why these spaces are unsupported (naming what is needed), or None if they are fine."""
        ...

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Choose actions for a batch of observations, (N, *obs_shape) -> (N, *action_shape).

        Pure: no learning side effects. ``explore=False`` is the greedy/deterministic policy.
        """
        ...

    def observe(self, transition: Transition) -> None:
        """Record one step of every env."""
        ...

    def update(self, step: int) -> Mapping[str, float | str]:
        """Learn if due at env step ``step``; return scalars (and text) to log, {} if nothing happened."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume: tensors, numpy arrays and plain types only."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


def load_agent_class(name: str) -> type[Agent]:
    """Resolve an agent name (or ``module:Class``) to its class, with a clear error if unknown."""
    target = AGENTS.get(name, name)
    if ":" not in target:
        close = difflib.get_close_matches(name, AGENTS, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(AGENTS)}"
        raise GymlabError(f"unknown agent '{name}': {hint} (or give your own as module:Class; see `gymlab list`)")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise GymlabError(f"agent '{name}': cannot import '{module_name}' ({exc}); is it installed?") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise GymlabError(f"agent '{name}': module '{module_name}' has no attribute '{attr}'")
    for required in ("Config", "check_spaces", "act", "observe", "update", "state_dict"):
        if not hasattr(cls, required):
            raise GymlabError(f"agent '{name}': {cls.__name__} lacks '{required}' and is not a gymlab Agent")
    return cls


def check_agent_spaces(
    cls: type[Agent], env_id: str, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> None:
    """Raise a one-line error when the agent cannot handle the env's spaces."""
    problem = cls.check_spaces(observation_space, action_space)
    if problem is not None:
        raise GymlabError(f"agent '{cls.name}' cannot train on {env_id}: {problem}")


def env_actions(action_space: gym.Space[Any], actions: np.ndarray) -> np.ndarray:
    """What the env receives for an agent's actions: clipped to the bounds of a Box space.

    Agents return what their policy sampled (a Gaussian sample can leave the bounds) and see that
    same action again in ``observe``, so the log-probability is the sample's; the clip is treated
    as part of the env. ``action_space`` is one env's space; ``actions`` are batched (N, D).
    """
    if isinstance(action_space, gym.spaces.Box):
        return np.clip(actions, action_space.low, action_space.high).astype(action_space.dtype, copy=False)
    return actions


def describe_space(space: gym.Space[Any]) -> str:
    """A short human name of a space, e.g. ``Discrete(16)`` or ``Box(4,)``."""
    if isinstance(space, gym.spaces.Box):
        return f"Box{space.shape}"
    return str(space)
