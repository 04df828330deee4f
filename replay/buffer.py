"""A uniform replay memory in preallocated contiguous arrays, fed by N parallel envs.

Layout: one *lane* per env copy, each a ring of ``capacity // N`` frame slots. A frame is what
one step adds to the observation: the whole observation for vector observations, the newest
frame ``obs[-1]`` for a stack of frames (``frame_stack`` > 1, e.g. Atari's (4, 84, 84)). An
episode of T steps in one lane occupies T + 1 consecutive slots, its observations
``f_0, f_1, ..., f_T``; the transition of step t is stored at the slot of ``f_t`` and its next
observation is always the following slot. So

* every frame is stored exactly once: not again as a next observation, and not four times
  through frame stacking (the stack is rebuilt at sampling time from the previous slots, with
  the first frame repeated at the start of an episode as Gymnasium's ``FrameStackObservation``
  pads);
* the true last observation of an episode (``f_T``) is kept, so a step cut by a time limit
  bootstraps from the right state. That slot holds no transition of its own, which is the one
  cost of the layout: a lane holds ``L`` frames, i.e. ``L`` minus (episodes ended in the window)
  transitions.

Bytes: ``capacity × (frame_bytes + action_bytes + 8)`` (8 = float32 reward, terminated,
truncated, has-transition flags and the uint8 in-episode offset). 1M Atari transitions:
1M × (84·84 + 8 + 8) = 7.07 GB (6.6 GiB), under 8 GB.

Insertion of a whole (N,) batch writes at most two slots per lane with a few vectorised
fancy-index assignments; sampling draws slots uniformly and redraws (vectorised) the few that
hold no transition or whose frame history was already overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Batch:
    """A sampled batch of transitions, as numpy arrays (B = batch size)."""

    obs: np.ndarray  # (B, *obs_shape), the stored dtype (uint8 pixels stay uint8)
    action: np.ndarray  # (B, *action_shape)
    reward: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, *obs_shape): the true next observation, also after a truncation
    terminated: np.ndarray  # (B,) bool: no bootstrap
    truncated: np.ndarray  # (B,) bool: bootstrap from next_obs all the same


class ReplayBuffer:
    """Uniform experience replay for ``num_envs`` env copies, storing each frame once.

    Args:
        capacity: frame slots in all (split evenly into one lane per env).
        num_envs: N, the batch size of every :meth:`add`.
        obs_shape: shape of one observation; with ``frame_stack`` > 1 its first axis is the stack.
        obs_dtype: stored as is (uint8 pixels stay uint8 until they reach the network).
        action_shape: shape of one action (``()`` for Discrete).
        action_dtype: dtype of actions.
        frame_stack: S > 1 when an observation is the last S frames stacked along axis 0
            (then only the newest frame of each step is stored); 1 for any other observation.
        seed: seeds the sampling generator (part of :meth:`state_dict`).

    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype[Any] | type,
        action_shape: tuple[int, ...] = (),
        action_dtype: np.dtype[Any] | type = np.int64,
        frame_stack: int = 1,
        seed: int = 0,
    ) -> None:
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if frame_stack > 1 and (len(obs_shape) < 1 or obs_shape[0] != frame_stack):
            raise ValueError(f"frame_stack={frame_stack} needs observations of shape ({frame_stack}, ...)")
        lane = capacity // num_envs
        if lane < frame_stack + 2:
            raise ValueError(
                f"capacity {capacity} is too small for {num_envs} envs: each needs at least {frame_stack + 2} slots"
            )
        self.capacity = lane * num_envs
        self.num_envs = num_envs
        self.lane_size = lane
        self.obs_shape = tuple(obs_shape)
        self.frame_stack = frame_stack
        frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
        n, L = num_envs, lane
        self.frames = np.zeros((n, L, *frame_shape), dtype=obs_dtype)  # (N, L, *frame_shape)
        self.action = np.zeros((n, L, *action_shape), dtype=action_dtype)  # (N, L, *action_shape)
        self.reward = np.zeros((n, L), dtype=np.float32)
        self.terminated = np.zeros((n, L), dtype=bool)
        self.truncated = np.zeros((n, L), dtype=bool)
        self.has_transition = np.zeros((n, L), dtype=bool)  # False: empty, or an episode's last frame
        # Steps since the episode began, capped at S - 1: how far back the frame stack reaches.
        self.offset = np.zeros((n, L), dtype=np.uint8)
        self.head = np.zeros(n, dtype=np.int64)  # next slot to write, per lane
        self.written = np.zeros(n, dtype=np.int64)  # slots ever written, per lane
        self.starting = np.ones(n, dtype=bool)  # the next add begins a new episode in this lane
        self.num_added = 0  # transitions ever added (summed over lanes)
        self.rng = np.random.default_rng(seed)
        self._lanes = np.arange(n)
        # (S,): for stack position k (oldest first), how many steps back it reaches at most.
        self._back = np.arange(frame_stack - 1, -1, -1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays."""
        arrays = (self.frames, self.action, self.reward, self.terminated, self.truncated)
        return sum(a.nbytes for a in (*arrays, self.has_transition, self.offset))

    def __len__(self) -> int:
        """Transitions that can be sampled now (O(capacity): not for hot paths)."""
        return int(self._valid(*np.nonzero(self.has_transition)).sum())

    def _newest(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, -1] if self.frame_stack > 1 else obs

    def _check_stacking(self, obs: np.ndarray, next_obs: np.ndarray) -> None:
        """Storing one frame per step is exact only for true frame stacks: check each step's."""
        shifted = np.array_equal(next_obs[:, :-1], obs[:, 1:])
        start = self.starting
        padded = not start.any() or np.array_equal(
            obs[start, :-1], np.broadcast_to(obs[start, -1:], obs[start, :-1].shape)
        )
        if not (shifted and padded):
            raise ValueError(
                f"frame_stack={self.frame_stack}, but the observations are not a stack of consecutive frames "
                "along axis 0 (each next_obs[:-1] == obs[1:], episodes starting with the first frame repeated); "
                "use frame_stack=1"
            )

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Insert one step of every env: arrays of leading size N, O(1) in the capacity.

        ``next_obs`` must be the true next observation (the final one when the step ended an
        episode); ``obs`` of a lane's next add is then the first of its next episode.
        """
        if self.frame_stack > 1:
            self._check_stacking(obs, next_obs)
        lanes, L, start = self._lanes, self.lane_size, self.starting
        if start.any():  # a new episode: its first frame gets a slot of its own
            sl, pos = lanes[start], self.head[start]
            self._write_frame(sl, pos, self._newest(obs[start]), 0)
            self.head[start] = (pos + 1) % L
            self.written[start] += 1
        cur = (self.head - 1) % L  # (N,) the slot of obs's newest frame
        self.action[lanes, cur] = action
        self.reward[lanes, cur] = reward
        self.terminated[lanes, cur] = terminated
        self.truncated[lanes, cur] = truncated
        self.has_transition[lanes, cur] = True
        nxt = self.head
        next_offset = np.minimum(self.offset[lanes, cur] + 1, self.frame_stack - 1)
        self._write_frame(lanes, nxt, self._newest(next_obs), next_offset)
        self.head = (nxt + 1) % L
        self.written += 1
        self.starting = np.logical_or(terminated, truncated)
        self.num_added += self.num_envs

    def _write_frame(self, lanes: np.ndarray, pos: np.ndarray, frame: np.ndarray, offset: Any) -> None:
        # Overwriting the oldest slot also retires the transition that lived there.
        self.frames[lanes, pos] = frame
        self.offset[lanes, pos] = offset
        self.has_transition[lanes, pos] = False

    def _valid(self, lane: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Whether slot ``pos`` of ``lane`` holds a transition whose whole frame stack survives."""
        ok = self.has_transition[lane, pos]
        if self.frame_stack > 1:
            # Once a lane has wrapped, the oldest slots' stacks may reach into frames already
            # overwritten by the newest ones: age counts slots from the oldest surviving one.
            age = (pos - self.head[lane]) % self.lane_size
            wrapped = self.written[lane] >= self.lane_size
            ok &= ~wrapped | (age >= self.offset[lane, pos])
        return ok

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` transitions uniformly with replacement."""
        if self.num_added == 0:
            raise ValueError("cannot sample from an empty replay memory")
        n, rng = self.num_envs, self.rng
        hi = int(min(self.written.max(), self.lane_size))  # slots in use in the fullest lane
        lane = rng.integers(0, n, batch_size)
        pos = rng.integers(0, hi, batch_size)
        ok = self._valid(lane, pos)
        # Rejection keeps the draw uniform over valid transitions; a few percent get redrawn.
        while not ok.all():
            bad = np.flatnonzero(~ok)
            lane[bad] = rng.integers(0, n, len(bad))
            pos[bad] = rng.integers(0, hi, len(bad))
            ok[bad] = self._valid(lane[bad], pos[bad])
        return self.gather(lane, pos)

    def gather(self, lane: np.ndarray, pos: np.ndarray) -> Batch:
        """The transitions stored at slots ``pos`` of lanes ``lane`` (both (B,))."""
        L = self.lane_size
        nxt = (pos + 1) % L
        if self.frame_stack > 1:
            off = self.offset[lane, pos].astype(np.int64)[:, None]  # (B, 1)
            lanes2d = lane[:, None]
            # Stack position k reaches back _back[k] steps, but never before the episode's first frame.
            obs_idx = (pos[:, None] - np.minimum(off, self._back)) % L  # (B, S)
            next_idx = (nxt[:, None] - np.minimum(off + 1, self._back)) % L  # (B, S)
            obs = self.frames[lanes2d, obs_idx]  # (B, S, *frame_shape)
            next_obs = self.frames[lanes2d, next_idx]
        else:
            obs = self.frames[lane, pos]
            next_obs = self.frames[lane, nxt]
        return Batch(
            obs=obs,
            action=self.action[lane, pos],
            reward=self.reward[lane, pos],
            next_obs=next_obs,
            terminated=self.terminated[lane, pos],
            truncated=self.truncated[lane, pos],
        )

    def state_dict(self) -> dict[str, Any]:
        """Contents (only the slots in use), write positions and the sampling generator."""
        hi = int(min(self.written.max(), self.lane_size))
        arrays = ("frames", "action", "reward", "terminated", "truncated", "has_transition", "offset")
        return {
            **{name: getattr(self, name)[:, :hi] for name in arrays},
            "head": self.head.copy(),
            "written": self.written.copy(),
            "starting": self.starting.copy(),
            "num_added": self.num_added,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a memory built with the same shapes."""
        hi = state["frames"].shape[1]
        if state["frames"].shape[0] != self.num_envs or hi > self.lane_size:
            raise ValueError(
                f"saved replay memory has {state['frames'].shape[0]} lanes of {hi} slots; "
                f"this one has {self.num_envs} of {self.lane_size}"
            )
        for name in ("frames", "action", "reward", "terminated", "truncated", "has_transition", "offset"):
            target = getattr(self, name)
            target[:, :hi] = state[name]
            target[:, hi:] = 0
        self.head = np.array(state["head"], dtype=np.int64)
        self.written = np.array(state["written"], dtype=np.int64)
        self.starting = np.array(state["starting"], dtype=bool)
        self.num_added = int(state["num_added"])
        self.rng.bit_generator.state = state["rng"]
