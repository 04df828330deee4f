"""The uniform-random baseline: every action drawn uniformly from the action space, whatever it is.

It learns nothing, which is what makes it useful: ``gymlab compare`` can plot a learner against
the return of pure chance on the same env (e.g. CartPole's ≈22, FrozenLake's ≈0.015).

It is also the smallest complete agent, the worked example of docs/ARCHITECTURE.md: a pydantic
``Config``, the class attributes, ``check_spaces``, ``act``, ``observe``, ``update``,
``state_dict`` and ``load_state_dict``, and one line in ``gymlab.agent.AGENTS``.

Discrete, MultiDiscrete, MultiBinary and bounded Box actions are drawn for all N envs with one
call of the agent's own generator (one array, no per-env Python). Every other space (a Box with an
infinite bound, Dict or Tuple spaces, and as tuples of samples, spaces that cannot be batched) goes
through Gymnasium's ``batch_space``, seeded from the same generator each call. Either way the
generators' states are the agent's whole state, so a resume draws the very same actions.

Training (``explore=True``) and playing (``explore=False``: evaluations, videos, ``watch``) draw from
two generators, so that playing never moves training's: a run's training is the same with or without
videos, whose timing follows the wall clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space
from pydantic import BaseModel, ConfigDict

from gymlab.agent import Context, Transition


class RandomConfig(BaseModel):
    """The random baseline has no hyperparameters."""

    model_config = ConfigDict(extra="forbid")


def batch_size(obs: Any, space: gym.Space[Any]) -> int:
    """N of a batch of observations of one env's ``space``: the leading axis, looking inside Dict and Tuple batches.

    Gymnasium batches a Dict or Tuple space part by part, and every space it cannot stack (a
    Sequence, Graph or Text, whose samples vary in length) as a tuple of N samples: only Dict and
    Tuple spaces are walked into, so a Sequence batch counts its N samples, not the length of its first one.
    """
    while isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) and len(space.spaces):
        if isinstance(space, gym.spaces.Dict):
            key = next(iter(space.spaces))
            space, obs = space.spaces[key], obs[key]
        else:
            space, obs = space.spaces[0], obs[0]
    return len(obs)


class RandomAgent:
    """Uniform-random actions over any action space."""

    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "uniform-random actions: the chance baseline to compare learners against"
    spaces: ClassVar[str] = "obs: any; actions: any"
    Config: ClassVar[type[BaseModel]] = RandomConfig
    smoke: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Any spaces will do."""
        return None

    def __init__(self, config: RandomConfig, ctx: Context) -> None:
        self.action_space = ctx.action_space
        self.observation_space = ctx.observation_space
        self.rng = np.random.default_rng([ctx.seed, 0x5A4D])
        self.play_rng = np.random.default_rng([ctx.seed, 0x5A4D, 1])
        self._batched: dict[int, gym.Space[Any]] = {}  # N -> the action space of N envs

    def act(self, obs: Any, explore: bool) -> Any:
        """One uniform action per observation: (N, ...) -> (N, *action_shape); ``explore`` picks the generator."""
        n = batch_size(obs, self.observation_space)
        rng = self.rng if explore else self.play_rng
        drawn = self._draw(n, rng)
        if drawn is not None:
            return drawn
        if n not in self._batched:
            self._batched[n] = batch_space(self.action_space, n)
        space = self._batched[n]
        space.seed(int(rng.integers(2**63)))
        return space.sample()

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """``n`` uniform actions in one generator call, for the spaces that have a closed form; else None."""
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(space.start, space.start + space.n, size=n, dtype=space.dtype)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return (space.start + rng.integers(space.nvec, size=(n, *space.nvec.shape))).astype(space.dtype)
        if isinstance(space, gym.spaces.MultiBinary):
            return rng.integers(2, size=(n, *space.shape)).astype(space.dtype)
        if isinstance(space, gym.spaces.Box) and space.is_bounded("both"):
            shape = (n, *space.shape)
            if np.dtype(space.dtype).kind in "iu":
                return rng.integers(space.low, space.high, size=shape, endpoint=True).astype(space.dtype)
            return rng.uniform(space.low, space.high, size=shape).astype(space.dtype)
        return None

    def observe(self, transition: Transition) -> None:
        """Nothing to remember."""

    def update(self, step: int) -> Mapping[str, float]:
        """Nothing to learn."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """No policy to speak of; the generators are the training state."""
        return {
            "policy": {},
            "training": {"rng": self.rng.bit_generator.state, "play": self.play_rng.bit_generator.state},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a policy-only state leaves the generators as built)."""
        if "training" in state:
            self.rng.bit_generator.state = state["training"]["rng"]
            if "play" in state["training"]:  # (checkpoints before stop 32 had one generator)
                self.play_rng.bit_generator.state = state["training"]["play"]
