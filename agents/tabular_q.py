"""Tabular Q-learning (Watkins, 1989) with an ε-greedy behaviour policy.

The whole algorithm: a table ``Q[s, a]``, and after every step of every env

    target   = r + γ · max_a' Q[s', a']      (just r when the step terminated the episode)
    Q[s, a] += α · (target − Q[s, a])

A step cut by a time limit (truncated) still bootstraps: the state it stopped in has a value,
the episode just was not allowed to reach it. ε decays linearly from ``epsilon_start`` to
``epsilon_final`` over the first ``exploration_fraction`` of the run, and α likewise from
``learning_rate`` to ``learning_rate_final`` over the whole run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gymlab.agent import Context, Transition


class TabularQConfig(BaseModel):
    """Hyperparameters of tabular Q-learning."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(0.1, gt=0, le=1, description="step size α at the start")
    learning_rate_final: float | None = Field(
        None, gt=0, le=1, description="α at the end of the run, linearly decayed (None: constant α)"
    )
    gamma: float = Field(0.99, ge=0, le=1, description="discount γ")
    epsilon_start: float = Field(1.0, ge=0, le=1, description="exploration rate ε at step 0")
    epsilon_final: float = Field(0.05, ge=0, le=1, description="ε after the decay")
    exploration_fraction: float = Field(0.5, gt=0, le=1, description="fraction of the run over which ε decays")
    initial_q: float = Field(  # beyond ±1e150 the squared TD error it reports overflows: "diverged", wrongly
        0.0, ge=-1e9, le=1e9, description="initial value of every table entry"
    )


REPORT_EVERY = 1_000  # updates between reported metrics
PENDING_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


def linear(start: float, end: float, fraction: float) -> float:
    """Linear schedule: ``start`` at fraction 0, ``end`` from fraction 1 on."""
    return start + (end - start) * min(max(fraction, 0.0), 1.0)


class TabularQ:
    """Q-learning over a table indexed by Discrete observations and actions."""

    name: ClassVar[str] = "tabular_q"
    summary: ClassVar[str] = "tabular Q-learning with decaying ε-greedy exploration"
    spaces: ClassVar[str] = "obs: Discrete; actions: Discrete"
    Config: ClassVar[type[BaseModel]] = TabularQConfig
    #: Nothing to shrink: a table is as small as its env, and an update costs microseconds.
    smoke: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Needs Discrete observations (a table row per state) and Discrete actions."""
        bad = [
            f"{what} space is {space}"
            for what, space in (("observation", observation_space), ("action", action_space))
            if not isinstance(space, gym.spaces.Discrete)
        ]
        if bad:
            return f"it needs Discrete observation and action spaces, but the {' and the '.join(bad)}"
        return None

    def __init__(self, config: TabularQConfig, ctx: Context) -> None:
        obs_space, act_space = ctx.observation_space, ctx.action_space
        assert isinstance(obs_space, gym.spaces.Discrete) and isinstance(act_space, gym.spaces.Discrete)
        self.cfg = config
        self.total_steps = ctx.total_steps
        self.n_actions = int(act_space.n)
        # Observations are shifted by the space's start so any Discrete(n, start) indexes the table.
        self.obs_start = int(obs_space.start)
        self.act_start = int(act_space.start)
        self.q = np.full((int(obs_space.n), self.n_actions), config.initial_q, dtype=np.float64)  # (S, A)
        self.rng = np.random.default_rng(ctx.seed)
        self.epsilon = config.epsilon_start
        self.alpha = config.learning_rate
        self._last: Transition | None = None
        self._updates = 0
        self._sq_td_sum = 0.0

    def _row(self, obs: np.ndarray) -> np.ndarray:
        """Table rows of observations (shifted when the Discrete space does not start at 0)."""
        return obs - self.obs_start if self.obs_start else obs

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """ε-greedy actions (greedy when ``explore`` is False), (N,) -> (N,).

        Per copy over Python scalars: with N ~ 1, fancy-indexing the table and a batched argmax
        cost several times what one row's argmax does (about 3 µs against 0.5 µs a step).
        """
        q, rows = self.q, self._row(obs).tolist()
        if explore:
            eps, n_actions, n = self.epsilon, self.n_actions, len(rows)
            # One uniform draw per env decides both whether to explore (u < ε) and, rescaled to
            # [0, 1), which random action to take. A scalar draw is the same stream as a (1,) one.
            draws = [self.rng.random()] if n == 1 else self.rng.random(n).tolist()
            actions = [
                int(u / eps * n_actions) if u < eps else int(q[s].argmax()) for s, u in zip(rows, draws, strict=True)
            ]
        else:
            actions = [int(q[s].argmax()) for s in rows]
        out = np.array(actions, dtype=np.int64)  # (N,)
        return out + self.act_start if self.act_start else out

    def observe(self, transition: Transition) -> None:
        """Keep the step; :meth:`update` learns from it."""
        self._last = transition

    def update(self, step: int) -> Mapping[str, float]:
        """One Q-learning update per env copy from the last step, then advance ε and α."""
        t = self._last
        if t is None:
            return {}
        self._last = None
        q, gamma, alpha, sq_td_sum = self.q, self.cfg.gamma, self.alpha, self._sq_td_sum
        # Python scalars per copy: on (N,)-sized arrays with N ~ 1, numpy's per-call overhead
        # would cost more than the arithmetic.
        for s, a, r, s_next, terminated in zip(
            self._row(t.obs).tolist(),
            (t.action - self.act_start if self.act_start else t.action).tolist(),
            t.reward.tolist(),
            self._row(t.next_obs).tolist(),
            t.terminated.tolist(),
            strict=True,
        ):
            # No bootstrap when terminated; a truncated step still bootstraps from s_next.
            target = r if terminated else r + gamma * max(q[s_next].tolist())
            q_sa = q.item(s, a)
            td_error = target - q_sa
            q[s, a] = q_sa + alpha * td_error
            sq_td_sum += td_error * td_error
        self._sq_td_sum = sq_td_sum
        # The schedules of linear(), inlined (a call per step costs as much as the update's arithmetic).
        cfg = self.cfg
        progress = step / self.total_steps
        self.epsilon = cfg.epsilon_start + (cfg.epsilon_final - cfg.epsilon_start) * min(
            max(progress / cfg.exploration_fraction, 0.0), 1.0
        )
        if cfg.learning_rate_final is not None:
            self.alpha = linear(cfg.learning_rate, cfg.learning_rate_final, progress)
        # Report once per REPORT_EVERY updates: building a dict every step would cost as much as
        # the update itself on fast toy envs.
        self._updates += 1
        if self._updates % REPORT_EVERY:
            return {}
        rms_td = (self._sq_td_sum / (REPORT_EVERY * len(t.reward))) ** 0.5
        self._sq_td_sum = 0.0
        return {"epsilon": self.epsilon, "learning_rate": self.alpha, "rms_td_error": rms_td}

    def state_dict(self) -> dict[str, Any]:
        """Policy: the table. Training: schedules, exploration generator, and the step not yet learned from.

        With the loop's overlap on, a checkpoint falls between observing a step and learning from it.
        """
        last = self._last
        pending = None if last is None else {k: np.array(getattr(last, k)) for k in PENDING_FIELDS}
        return {
            "policy": {"q": self.q},
            "training": {
                "epsilon": self.epsilon,
                "alpha": self.alpha,
                "rng": self.rng.bit_generator.state,
                "updates": self._updates,
                "sq_td_sum": self._sq_td_sum,
                "pending": pending,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a policy-only state restores the table alone."""
        q = state["policy"]["q"]
        if q.shape != self.q.shape:
            raise ValueError(f"Q-table shape {q.shape} does not match this env's {self.q.shape}")
        self.q = np.array(q, dtype=np.float64)
        if "training" not in state:
            return
        training = state["training"]
        self.epsilon = float(training["epsilon"])
        self.alpha = float(training["alpha"])
        self.rng.bit_generator.state = training["rng"]
        self._updates = int(training["updates"])
        self._sq_td_sum = float(training["sq_td_sum"])
        pending = training.get("pending")  # absent from checkpoints written before the overlap
        self._last = None if pending is None else Transition(**{k: np.array(pending[k]) for k in PENDING_FIELDS})
