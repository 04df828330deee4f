"""A uniform replay memory in preallocated contiguous arrays, fed by N parallel envs.

Layout: one *lane* per env copy, each a ring of ``capacity // N`` frame slots. A frame is what
one step adds to the observation: the whole observation for vector observations, the newest
frame ``obs[-1]`` for a stack of frames (``frame_stack`` > 1, e.g. Atari's (4, 84, 84)). An
episode of T steps in one lane occupies T + 1 consecutive slots, its observations
``f_0, f_1, ..., f_T``; the transition of step t is stored at the slot of ``f_t`` and its next
observation is always the following slot. So

* every frame is stored exactly once: not again as a next observation, and not four times
  through frame stacking (the stack is rebuilt at sampling time from the previous slots). An
  episode's first stack is padded the way the env pads it, seen at the first episode start that
  tells: the first frame repeated (Gymnasium's ``FrameStackObservation``, and both Atari paths of
  ``gymlab.envs.atari``, after a lost life too) or zeros (an env that pads so, e.g. ALE's own
  vector env used directly);
* the true last observation of an episode (``f_T``) is kept, so a step cut by a time limit
  bootstraps from the right state. That slot holds no transition of its own, which is the one
  cost of the layout: a lane holds ``L`` frames, i.e. ``L`` minus (episodes ended in the window)
  transitions.

Bytes: ``capacity × (frame_bytes + action_bytes + 8)`` (8 = float32 reward, terminated,
truncated, has-transition flags and the uint8 in-episode offset). 1M Atari slots:
1M × (84·84 + 8 + 8) = 7.07 GB (6.59 GiB).

Where the frames live: a numpy array (host memory) by default; with ``device`` a torch tensor on
that device (e.g. a GPU), written at each :meth:`add` and gathered there by :meth:`sample_frames`,
so a batch's pixels never cross the bus. Each step's new frames go there through staging buffers
of the memory's own (page-locked on CUDA, so the copy does not wait for the host: gymlab/staging.py).
Everything else (actions, rewards, flags, offsets) stays in numpy: the sampler's bookkeeping never
waits for the device.

n-step returns (``n_step`` > 1) need nothing stored beyond this: an episode's steps are consecutive
slots, so a sampled transition at slot ``p`` reads the rewards of slots ``p .. p+k-1`` and bootstraps
from the frame at slot ``p+k``, where ``k`` ≤ n stops early at the episode's end (a terminal step:
no bootstrap; a truncated one: bootstrap from its true last observation) or at the newest step
stored (a shorter return, still a valid target). A batch carries ``γ^k``, the bootstrap's discount.

Insertion of a whole (N,) batch writes at most two slots per lane with a few vectorised
fancy-index assignments; sampling draws slots uniformly and redraws (vectorised) the few that
hold no transition or whose frame history was already overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gymlab.errors import GymlabError
from gymlab.staging import HostStaging

#: How an env pads the frame stack of an episode's first observation.
PADDINGS = ("reset", "zero")


@dataclass(frozen=True)
class Batch:
    """A sampled batch of transitions, as numpy arrays (B = batch size)."""

    obs: np.ndarray  # (B, *obs_shape), the stored dtype (uint8 pixels stay uint8)
    action: np.ndarray  # (B, *action_shape)
    reward: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, *obs_shape): the true next observation, also after a truncation
    terminated: np.ndarray  # (B,) bool: no bootstrap
    truncated: np.ndarray  # (B,) bool: bootstrap from next_obs all the same
    discount: np.ndarray  # (B,) float32: γ^k, the bootstrap's discount after the k ≤ n steps summed in reward


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
        n_step: a sampled transition spans up to this many steps of its episode: its reward is
            ``Σ_{i<k} γ^i r_{t+i}`` and its next observation ``s_{t+k}`` (see the module's docstring).
        gamma: γ, for the n-step sum and the discount a batch carries.
        device: keep the frames in a torch tensor on this device (None: a numpy array in host
            memory). Read them with :meth:`sample_frames` then; :meth:`gather` copies them to the host.

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
        device: torch.device | None = None,
        n_step: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
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
        self.n_step = n_step
        self.gamma = gamma
        self.frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
        n, L = num_envs, lane
        self.device = device
        self.frames: Any  # (N, L, *frame_shape): np.ndarray, or a torch.Tensor on ``device``
        if device is None:
            self.frames = np.zeros((n, L, *self.frame_shape), dtype=obs_dtype)
        else:
            dtype = torch.from_numpy(np.zeros(0, dtype=obs_dtype)).dtype
            self.frames = torch.zeros((n, L, *self.frame_shape), dtype=dtype, device=device)
            self._frame_dtype = np.dtype(obs_dtype)
            self._staging = HostStaging(device, pin=device.type == "cuda")
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
        self.padding: str | None = None  # "reset" or "zero" once an episode start has shown it (frame_stack > 1)
        self.num_added = 0  # transitions ever added (summed over lanes)
        self.rng = np.random.default_rng(seed)
        self._lanes = np.arange(n)
        # (S,): for stack position k (oldest first), how many steps back it reaches at most.
        self._back = np.arange(frame_stack - 1, -1, -1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays."""
        frames = self.frames.nbytes if isinstance(self.frames, np.ndarray) else self.frames.untyped_storage().nbytes()
        arrays = (self.action, self.reward, self.terminated, self.truncated, self.has_transition, self.offset)
        return frames + sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        """Transitions that can be sampled now (O(capacity): not for hot paths)."""
        return int(self._valid(*np.nonzero(self.has_transition)).sum())

    def _newest(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, -1] if self.frame_stack > 1 else obs

    def _check_stacking(self, obs: np.ndarray, next_obs: np.ndarray) -> None:
        """Storing one frame per step is exact only for true frame stacks: check each step's.

        An episode's first stack must be padded as the env pads: with its first frame repeated or
        with zeros. The first start that tells the two apart fixes which for this memory (a first
        frame of zeros fits both, and rebuilds the same either way).
        """
        shifted = np.array_equal(next_obs[:, :-1], obs[:, 1:])
        padded = True
        start = self.starting
        if start.any():
            first = obs[start]  # (K, S, *frame_shape)
            older = first[:, :-1].reshape(len(first), -1)
            repeated = (older == np.repeat(first[:, -1:], self.frame_stack - 1, axis=1).reshape(len(first), -1)).all(1)
            zeros = ~older.any(1)
            if self.padding is None:
                if (repeated & ~zeros).any():
                    self.padding = "reset"
                elif (zeros & ~repeated).any():
                    self.padding = "zero"
            fits = {"reset": repeated, "zero": zeros, None: repeated | zeros}[self.padding]
            padded = bool(fits.all())
        if not (shifted and padded):  # the config's fault (frame_stack), said in one line
            raise GymlabError(
                f"frame_stack={self.frame_stack}, but the observations are not a stack of consecutive frames "
                "along axis 0 (each next_obs[:-1] == obs[1:], episodes starting with the first frame repeated "
                "or with zeros, the same way every time); use frame_stack=1"
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
        if isinstance(self.frames, np.ndarray):
            self.frames[lanes, pos] = frame
        else:  # one index and one frame transfer through the staging buffers, queued on the device's stream
            rows = (lanes * self.lane_size + pos).astype(np.int64, copy=False)
            flat, values = self._staging.to_device((rows, np.asarray(frame, dtype=self._frame_dtype)))
            self.frames.view(-1, *self.frame_shape).index_copy_(0, flat, values)
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

    def sample_slots(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` transitions uniformly with replacement: their (lane, slot) indices, both (B,)."""
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
        return lane, pos

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` transitions uniformly with replacement, as numpy arrays."""
        return self.gather(*self.sample_slots(batch_size))

    def frame_index(
        self, lane: np.ndarray, pos: np.ndarray, steps: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Where the frames of the transitions at (lane, pos) are, as rows of ``frames`` flattened to (N·L, ...).

        ``steps``: (B,) k of each transition (:meth:`horizon`): next_obs is the frame k slots on (None: 1).

        Returns ``(obs_rows, next_rows, pad)``: (B,) rows without a frame stack, else (B, S) rows,
        oldest first; ``pad`` is None, or (B, 2, S) bool, True where the stack of obs (``pad[:, 0]``)
        or next_obs (``pad[:, 1]``) reaches before its episode's first frame and the env pads with
        zeros (for "reset" padding the rows already repeat the first frame there).
        """
        L = self.lane_size
        ahead = 1 if steps is None else steps  # (B,) or 1: slots from obs to next_obs
        nxt = (pos + ahead) % L
        base = lane * L
        if self.frame_stack == 1:
            return base + pos, base + nxt, None
        off = self.offset[lane, pos].astype(np.int64)[:, None]  # (B, 1)
        ahead = 1 if steps is None else steps[:, None]  # (B, 1) or 1
        # Stack position k reaches back _back[k] steps, but never before the episode's first frame.
        obs_rows = base[:, None] + (pos[:, None] - np.minimum(off, self._back)) % L  # (B, S)
        next_rows = base[:, None] + (nxt[:, None] - np.minimum(off + ahead, self._back)) % L
        pad = None
        if self.padding == "zero":
            pad = np.stack((self._back > off, self._back > off + ahead), axis=1)  # (B, 2, S)
            if not pad.any():
                pad = None
        return obs_rows, next_rows, pad

    def gather(self, lane: np.ndarray, pos: np.ndarray, out: Batch | None = None) -> Batch:
        """The transitions stored at slots ``pos`` of lanes ``lane`` (both (B,)), as numpy arrays.

        ``out``: arrays of the right shapes and dtypes to write into (e.g. pinned staging memory
        for a non-blocking copy to a GPU) instead of new ones. Frames kept on a device are copied
        to the host here; :meth:`sample_frames` reads them where they are.
        """
        action, reward, terminated, truncated, discount, steps = self.gather_rest(lane, pos, out)
        obs_rows, next_rows, pad = self.frame_index(lane, pos, steps)
        if isinstance(self.frames, np.ndarray):
            flat = self.frames.reshape(-1, *self.frame_shape)
            # np.take with mode="clip" writes straight into ``out`` (mode "raise" would buffer first).
            obs = np.take(flat, obs_rows, axis=0, out=None if out is None else out.obs, mode="clip")
            next_obs = np.take(flat, next_rows, axis=0, out=None if out is None else out.next_obs, mode="clip")
        else:
            frames = self.sample_frames(obs_rows, next_rows, pad)
            obs, next_obs = (f.cpu().numpy() for f in frames)
            pad = None
        if pad is not None:
            obs[pad[:, 0]] = 0
            next_obs[pad[:, 1]] = 0
        return Batch(
            obs=obs,
            action=action,
            reward=reward,
            next_obs=next_obs,
            terminated=terminated,
            truncated=truncated,
            discount=discount,
        )

    def gather_rest(
        self, lane: np.ndarray, pos: np.ndarray, out: Batch | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Everything but the frames at (lane, pos), into ``out``'s arrays if given.

        Returns ``(action, reward, terminated, truncated, discount, steps)``: the n-step values of
        :meth:`horizon`, and ``steps`` (B,), which :meth:`frame_index` needs to find next_obs.
        """
        steps, n_step_values = self.horizon(lane, pos)
        values = (self.action[lane, pos], *n_step_values)
        if out is None:
            return (*values, steps)
        into = (out.action, out.reward, out.terminated, out.truncated, out.discount)
        for value, target in zip(values, into, strict=True):
            target[...] = value
        return (*into, steps)

    def horizon(self, lane: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray | None, tuple[np.ndarray, ...]]:
        """The n-step view of the transitions at (lane, pos), all (B,).

        Returns ``(steps, (reward, terminated, truncated, discount))``: k ≤ n steps taken (None
        when n = 1: always one), the discounted reward sum over them, the flags of the k-th step,
        and γ^k.
        """
        gamma = self.gamma
        if self.n_step == 1:
            discount = np.full(len(pos), gamma, dtype=np.float32)
            return None, (self.reward[lane, pos], self.terminated[lane, pos], self.truncated[lane, pos], discount)
        L = self.lane_size
        slots = (pos[:, None] + np.arange(self.n_step)) % L  # (B, n)
        rows = lane[:, None]
        # Step j is taken while slots 0..j all hold transitions. The layout makes that the whole
        # rule: the slot after an episode's last step holds its final frame (no transition), and
        # the slot after a lane's newest step holds the newest frame (none yet either).
        taken = np.logical_and.accumulate(self.has_transition[rows, slots], axis=1)
        steps = taken.sum(axis=1)  # (B,) >= 1: a sampled slot holds a transition
        powers = gamma ** np.arange(self.n_step, dtype=np.float64)  # (n,)
        reward = (self.reward[rows, slots] * taken) @ powers  # (B,)
        last = (pos + steps - 1) % L
        discount = gamma**steps
        return steps, (
            reward.astype(np.float32),
            self.terminated[lane, last],
            self.truncated[lane, last],
            discount.astype(np.float32),
        )

    def sample_frames(
        self, obs_rows: np.ndarray, next_rows: np.ndarray, pad: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames kept on the device, gathered there: (obs, next_obs) at :meth:`frame_index`'s rows."""
        assert isinstance(self.frames, torch.Tensor), "the frames are in host memory: use gather"
        dev = self.device
        rows = torch.from_numpy(np.concatenate((obs_rows, next_rows))).to(dev, non_blocking=True)
        both = self.frames.view(-1, *self.frame_shape)[rows]  # (2B, [S,] *frame_shape): one gather
        if pad is not None:
            mask = torch.from_numpy(np.concatenate((pad[:, 0], pad[:, 1]))).to(dev, non_blocking=True)
            both.masked_fill_(mask.view(*mask.shape, *(1,) * len(self.frame_shape)), 0)
        b = len(obs_rows)
        return both[:b], both[b:]

    def state_dict(self) -> dict[str, Any]:
        """Contents (only the slots in use), write positions and the sampling generator."""
        hi = int(min(self.written.max(), self.lane_size))
        arrays = ("action", "reward", "terminated", "truncated", "has_transition", "offset")
        frames = self.frames[:, :hi]
        return {
            "frames": frames if isinstance(frames, np.ndarray) else frames.cpu().numpy(),  # host, either way
            **{name: getattr(self, name)[:, :hi] for name in arrays},
            "padding": self.padding,
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
            value = state[name]
            target[:, :hi] = value if isinstance(target, np.ndarray) else torch.as_tensor(value).to(self.device)
            target[:, hi:] = 0
        self.padding = state.get("padding")  # checkpoints from before zero padding: learnt again
        self.head = np.array(state["head"], dtype=np.int64)
        self.written = np.array(state["written"], dtype=np.int64)
        self.starting = np.array(state["starting"], dtype=bool)
        self.num_added = int(state["num_added"])
        self.rng.bit_generator.state = state["rng"]
