"""Sampled batches, moved to the learner's device: three ways, chosen by where the frames can live.

* ``host``: gather on the host into new arrays, then move them (on the CPU the tensors share
  the arrays' memory: nothing is copied). The CPU's path.
* ``pinned``: gather on the host straight into page-locked (pinned) staging arrays, then copy
  them with ``non_blocking=True``: the copy runs on the GPU's DMA engine while Python goes on.
  Two staging sets are used in turn, each reused only once the copy out of it has finished
  (a CUDA event), so the host never overwrites a batch still being read. Without CUDA the
  staging is ordinary memory.
* ``device``: the memory keeps its frames in a tensor on the device (written at each
  ``add``); a batch's frames are gathered there, and only the indices, actions, rewards and
  flags (a few bytes per transition) cross the bus, through pinned staging as above.

:func:`choose_source` picks one for ``auto``: ``device`` on CUDA when the frames take at most a
quarter of the GPU's free memory (Atari: 10k frames are 71 MB, 1M are 7.06 GB), else ``pinned``;
``host`` on every other device.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from gymlab.replay.buffer import Batch, ReplayBuffer

from gymlab.staging import torch_dtype

Source = Literal["host", "pinned", "device"]
#: ``auto`` keeps the frames on a CUDA device when they take at most this share of its free memory.
DEVICE_SHARE = 0.25


class TensorBatch(NamedTuple):
    """A batch on the learner's device (B = batch size)."""

    obs: torch.Tensor  # (B, *obs_shape), the stored dtype
    action: torch.Tensor  # (B,) int64
    reward: torch.Tensor  # (B,) float32
    next_obs: torch.Tensor  # (B, *obs_shape)
    terminated: torch.Tensor  # (B,) float32, 1 where there is no bootstrap
    discount: torch.Tensor  # (B,) float32, γ^k: the bootstrap's discount after the k steps in reward


def choose_source(requested: str, device: torch.device, frame_bytes: int) -> Source:
    """Resolve ``auto`` (see the module's docstring); any other value is returned as it is."""
    if requested in ("host", "pinned", "device"):
        return requested  # type: ignore[return-value]
    if device.type != "cuda":
        return "host"
    free, _total = torch.cuda.mem_get_info(device)
    return "device" if frame_bytes <= DEVICE_SHARE * free else "pinned"


class DeviceBatches:
    """Draws uniform batches from ``replay`` and hands them over as tensors on ``device``.

    Args:
        replay: the memory; for ``source="device"`` it must keep its frames on ``device``.
        device: where the learner runs.
        source: ``host``, ``pinned`` or ``device`` (see the module's docstring).

    """

    def __init__(self, replay: ReplayBuffer, device: torch.device, source: Source) -> None:
        if source == "device" and replay.device != device:
            raise ValueError(f"source='device' needs a memory that keeps its frames on {device}")
        self.replay = replay
        self.device = device
        self.source = source
        self.cuda = device.type == "cuda"
        # Two staging sets used in turn (pinned on CUDA): tensors, and numpy views of the same memory
        # that the host gathers into. The copy reads the tensors, which know their memory is pinned.
        self._staging: list[tuple[list[torch.Tensor], Batch]] = []
        self._copied: list[torch.cuda.Event | None] = [None, None]  # each set's copies have finished
        self._turn = 0

    def sample(self, batch_size: int) -> TensorBatch:
        """``batch_size`` transitions drawn uniformly (``replay.sample_slots``), on the device."""
        lane, pos = self.replay.sample_slots(batch_size)
        if self.source == "host":
            b = self.replay.gather(lane, pos)
            return self._move(b.obs, b.action, b.reward, b.next_obs, b.terminated, b.discount)
        tensors, arrays = self._next_staging(batch_size)
        obs_t, action_t, reward_t, next_obs_t, terminated_t, _, discount_t = tensors
        if self.source == "pinned":
            self.replay.gather(lane, pos, out=arrays)
            batch = self._move(obs_t, action_t, reward_t, next_obs_t, terminated_t, discount_t)
        else:
            steps = self.replay.gather_rest(lane, pos, out=arrays)[-1]
            obs_rows, next_rows, pad = self.replay.frame_index(lane, pos, steps)
            obs, next_obs = self.replay.sample_frames(obs_rows, next_rows, pad)
            batch = self._move(obs, action_t, reward_t, next_obs, terminated_t, discount_t)
        if self.cuda:
            event = torch.cuda.Event()
            event.record()  # on the current stream, after the copies out of this staging set
            self._copied[self._turn] = event
        return batch

    def _move(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, discount: Any) -> TensorBatch:
        def to(x: Any) -> torch.Tensor:
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
            return t.to(self.device, non_blocking=True)

        return TensorBatch(
            obs=to(obs),
            action=to(action),
            reward=to(reward),
            next_obs=to(next_obs),
            terminated=to(terminated).float(),
            discount=to(discount),
        )

    def _next_staging(self, rows: int) -> tuple[list[torch.Tensor], Batch]:
        """The other staging set, once the copies out of it are done, cut to ``rows`` rows."""
        self._turn = 1 - self._turn
        event = self._copied[self._turn]
        if event is not None:
            event.synchronize()
        if not self._staging or len(self._staging[0][0][2]) < rows:
            self._staging = [self._allocate(rows) for _ in range(2)]
            self._copied = [None, None]
        tensors = [t[:rows] for t in self._staging[self._turn][0]]
        return tensors, Batch(*(t.numpy() for t in tensors))

    def _allocate(self, rows: int) -> tuple[list[torch.Tensor], Batch]:
        r = self.replay
        obs_shape = r.obs_shape if self.source == "pinned" else (0,)  # device: frames stay on the device
        frames_dtype = r.frames.dtype if isinstance(r.frames, np.ndarray) else np.dtype(np.uint8)
        shapes = (
            ((rows, *obs_shape), frames_dtype),
            ((rows, *r.action.shape[2:]), r.action.dtype),
            ((rows,), r.reward.dtype),
            ((rows, *obs_shape), frames_dtype),
            ((rows,), r.terminated.dtype),
            ((rows,), r.truncated.dtype),
            ((rows,), np.dtype(np.float32)),  # discount
        )
        tensors = [torch.empty(shape, dtype=torch_dtype(dtype), pin_memory=self.cuda) for shape, dtype in shapes]
        return tensors, Batch(*(t.numpy() for t in tensors))
