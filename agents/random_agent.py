"""The uniform-random baseline: every action drawn uniformly from the action space, whatever it is.

It learns nothing, which is what makes it useful: ``gymlab compare`` can plot a learner against
the return of pure chance on the same env (e.g. CartPole's ≈22, FrozenLake's ≈0.015).

It is also the smallest complete agent, the worked example of docs/ARCHITECTURE.md: a pydantic
``Config``, the class attributes, ``check_spaces``, ``act``, ``observe``, ``update``,
``state_dict`` and ``load_state_dict``, and one line in ``gymlab.agent.AGENTS``.

Sampling goes through Gymnasium's ``batch_space``, so every space works: Box, Discrete,
MultiDiscrete, MultiBinary, and Dict or Tuple spaces of them (and, as tuples of samples, spaces
that cannot be batched). Each call seeds the batched space from the agent's own generator, so the
generator's state is the agent's whole state and a resume draws the very same actions.
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


def batch_size(obs: Any) -> int:
    """N of a batch of observations: the leading axis, looking inside Dict and Tuple batches."""
    while (
        isinstance(obs, (dict, tuple)) and len(obs) and isinstance(next(iter(_values(obs))), (np.ndarray, dict, tuple))
    ):
        obs = next(iter(_values(obs)))
    return len(obs)


def _values(obs: dict[str, Any] | tuple[Any, ...]) -> Any:
    return obs.values() if isinstance(obs, dict) else obs


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
        self.rng = np.random.default_rng([ctx.seed, 0x5A4D])
        self._batched: dict[int, gym.Space[Any]] = {}  # N -> the action space of N envs

    def act(self, obs: Any, explore: bool) -> Any:
        """One uniform action per observation (``explore`` changes nothing): (N, ...) -> (N, *action_shape)."""
        n = batch_size(obs)
        if n not in self._batched:
            self._batched[n] = batch_space(self.action_space, n)
        space = self._batched[n]
        space.seed(int(self.rng.integers(2**63)))
        return space.sample()

    def observe(self, transition: Transition) -> None:
        """Nothing to remember."""

    def update(self, step: int) -> Mapping[str, float]:
        """Nothing to learn."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """No policy to speak of; the generator is the training state."""
        return {"policy": {}, "training": {"rng": self.rng.bit_generator.state}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a policy-only state leaves the generator as built)."""
        if "training" in state:
            self.rng.bit_generator.state = state["training"]["rng"]
