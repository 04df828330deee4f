"""Host arrays to a device through staging buffers used in turns, and a function run on numpy batches there.

:class:`BatchForward` is acting's forward pass: observations in, actions out, eager or from a CUDA graph.

A copy from ordinary (pageable) host memory to a GPU waits for the host: the driver first copies
the array into page-locked memory of its own. From page-locked (pinned) memory the copy runs on the
GPU's copy engine while Python goes on (``non_blocking=True``). :class:`HostStaging` keeps such
buffers and refills them at each call, so observations (acting) and frames (a replay memory that
keeps its frames on the GPU) reach the device without a blocking copy or a fresh allocation.

A buffer must not be refilled while the copy out of it may still run: the buffers come in sets,
used in turn, and a set is refilled only once a CUDA event recorded after its copies has passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gymlab.cudagraph import CUDAGraphForward


def torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype of a numpy dtype."""
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class HostStaging:
    """Copies numpy arrays to ``device`` through host buffers of its own, ``sets`` sets used in turn.

    Args:
        device: where the arrays go.
        pin: page-lock the buffers (needs CUDA; False elsewhere, e.g. to test the turns on the CPU).
        sets: buffer sets used in turn; a set is refilled once the copies out of it have finished.

    Each buffer grows to the most rows asked of it and is cut to each call's rows; a new dtype or
    trailing shape at a position replaces that position's buffer.

    """

    def __init__(self, device: torch.device, pin: bool, sets: int = 2) -> None:
        self.device = device
        self.pin = pin
        self.sets: list[list[torch.Tensor]] = [[] for _ in range(sets)]
        self.copied: list[torch.cuda.Event | None] = [None] * sets  # each set's copies have finished
        self.turn = 0
        self.cuda = device.type == "cuda"

    def to_device(
        self, arrays: Sequence[np.ndarray], out: Sequence[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """Each array on the device: into this turn's buffer, then (non-blocking) into ``out``'s tensor or a new one.

        The arrays may be any layout (non-contiguous views included); the buffers are contiguous.
        """
        self.turn = (self.turn + 1) % len(self.sets)
        event = self.copied[self.turn]
        if event is not None:
            event.synchronize()
        buffers = self.sets[self.turn]
        result = []
        for i, array in enumerate(arrays):
            host = self._buffer(buffers, i, array)
            np.copyto(host.numpy(), array, casting="no")
            target = None if out is None else out[i]
            if target is None:
                target = torch.empty(host.shape, dtype=host.dtype, device=self.device)
            target.copy_(host, non_blocking=True)
            result.append(target)
        if self.cuda:
            done = torch.cuda.Event()
            done.record()  # on the current stream, after the copies out of this set
            self.copied[self.turn] = done
        return result

    def _buffer(self, buffers: list[torch.Tensor], i: int, array: np.ndarray) -> torch.Tensor:
        """The set's buffer at position ``i``, cut to the array's rows (grown or replaced when it does not fit)."""
        dtype = torch_dtype(array.dtype)
        rows = array.shape[0] if array.ndim else 1
        shape = array.shape if array.ndim else (1,)
        if i < len(buffers):
            buf = buffers[i]
            if buf.dtype == dtype and buf.shape[1:] == shape[1:] and len(buf) >= rows:
                return buf[:rows] if array.ndim else buf[0]
        buf = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        if i < len(buffers):
            buffers[i] = buf
        else:
            buffers.append(buf)
        return buf if array.ndim else buf[0]


class BatchForward:
    """``fn`` on batches of observations, numpy in and numpy out: (N, *obs_shape) -> ``fn``'s (N, ...) result.

    Runs under ``torch.inference_mode``. Off CUDA ``fn`` reads the observations in place
    (``torch.from_numpy``: no copy). On CUDA each batch shape gets a preallocated device tensor,
    filled through page-locked staging with a non-blocking copy; with ``graphed`` ``fn`` on it is
    recorded in a CUDA graph at the first batch of that shape and replayed after (the graph reads
    the weights where they live, so it follows every update). ``fn`` must change no tensor.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, graphed: bool) -> None:
        self.fn = fn
        self.device = device
        self.graphed = graphed
        self.staging = HostStaging(device, pin=True) if device.type == "cuda" else None
        # Per (shape, dtype) of a batch: its static device input and, with the graph, the graph.
        self.inputs: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}
        self.graphs: dict[tuple[tuple[int, ...], str], CUDAGraphForward] = {}

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """``fn`` of a batch of observations, as a numpy array."""
        if self.staging is None:
            with torch.inference_mode():
                on_device = torch.from_numpy(obs).to(self.device, non_blocking=True)  # the CPU: the same memory
                return self.fn(on_device).cpu().numpy()
        key = (obs.shape, obs.dtype.str)
        if key in self.inputs:
            x = self.staging.to_device((obs,), out=(self.inputs[key],))[0]
        else:
            x = self.inputs[key] = self.staging.to_device((obs,))[0]
        if self.graphed:
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = CUDAGraphForward(self.fn, (x,))
            out = graph()[0]
        else:
            with torch.inference_mode():
                out = self.fn(x)
        return out.cpu().numpy()
