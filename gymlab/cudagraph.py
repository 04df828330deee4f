"""A training step (or a forward pass) recorded once in a CUDA graph and replayed: one launch for all of it.

A CUDA graph replays a fixed sequence of kernels on fixed memory. :class:`CUDAGraphStep` wraps a
step function (forward, backward, clipping, the optimizer's step) so that calling it copies the
inputs into static tensors and replays the graph; the first call records it. What the step
returns are the graph's static output tensors, overwritten by the next call.

What the graph needs from the step (PyTorch's CUDA graph notes):

* the same shapes and dtypes at every call, on a CUDA device;
* an optimizer built with ``capturable=True`` and a learning rate in a tensor: a number would be
  recorded as a constant. A learning rate later set as a number (a schedule) is copied into that
  tensor at the next call, and :meth:`CUDAGraphStep.optimizer_loaded` does the same after
  ``optimizer.load_state_dict``.

:class:`CUDAGraphForward` records a function without side effects (acting: a forward pass and an
argmax) on input tensors the caller owns and refills before each replay. The weights it reads are
read where they live, so the graph sees every later change made in place (Adam's steps, a
checkpoint loaded with ``load_state_dict``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: Eager steps run on a side stream before recording (PyTorch's notes ask for a few).
WARMUP_STEPS = 3


def resolve_compile(requested: str, device: torch.device) -> str:
    """An agent's ``compile=auto``: the CUDA graph on a CUDA device, eager (``off``) elsewhere; others as they are."""
    if requested != "auto":
        return requested
    return "cuda_graph" if device.type == "cuda" else "off"


class CUDAGraphStep:
    """``step(*inputs) -> outputs`` recorded in a CUDA graph at the first call, replayed at every call after.

    Args:
        step: one training step on tensors; returns a tuple of tensors (e.g. the loss and the gradient norm).
        params: the tensors ``step`` changes (the weights). The warm-up steps before recording would
            learn from the first batch, so these and ``optimizer``'s state are put back afterwards:
            the first replay is then the first step, as in eager mode.
        optimizer: the optimizer ``step`` steps; its learning rates must be tensors.

    """

    def __init__(
        self,
        step: Callable[..., tuple[torch.Tensor, ...]],
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.step = step
        self.params = list(params)
        self.optimizer = optimizer
        self.learning_rates: list[torch.Tensor] = [group["lr"] for group in optimizer.param_groups]
        if not all(isinstance(lr, torch.Tensor) for lr in self.learning_rates):
            raise ValueError("a CUDA graph needs the optimizer's learning rates in tensors")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []  # static copies the graph reads
        self.outputs: tuple[torch.Tensor, ...] = ()  # static tensors the graph writes

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step on ``inputs``: recorded at the first call, replayed from then on; the static outputs."""
        self._follow_learning_rates()
        if self.graph is None:
            self._record(inputs)
        for static, value in zip(self.inputs, inputs, strict=True):
            static.copy_(value)
        assert self.graph is not None
        self.graph.replay()
        return self.outputs

    def optimizer_loaded(self) -> None:
        """After ``optimizer.load_state_dict``: learning rates back into the tensors, and record again at the next call.

        Loading replaces the optimizer's state tensors, whose old addresses the graph holds.
        """
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates, strict=True):
            lr.fill_(float(group["lr"]))
            group.update(lr=lr, capturable=True)
        for param, values in self.optimizer.state.items():  # a state saved unfused keeps its step counts on the host
            step = values.get("step")
            if isinstance(step, torch.Tensor) and step.device != param.device:
                values["step"] = step.to(param.device)
        self.graph = None

    def _follow_learning_rates(self) -> None:
        """A learning rate set as a number (a schedule) goes into its tensor, before any recording too."""
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates, strict=True):
            if not isinstance(group["lr"], torch.Tensor):
                lr.fill_(group["lr"])
                group["lr"] = lr

    def _record(self, inputs: Sequence[torch.Tensor]) -> None:
        """Warm up on a side stream, record one step on static copies of ``inputs``, then undo the warm-up."""
        static = [x.clone() for x in inputs]
        params = [p.detach().clone() for p in self.params]
        state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items()} for p in self.optimizer.state}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.step(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward owns the gradients from now on
        with torch.cuda.graph(graph):
            outputs = self.step(*static)
        with torch.no_grad():
            for p, saved in zip(self.params, params, strict=True):
                p.copy_(saved)
            for p, values in self.optimizer.state.items():
                for key, value in values.items():  # state the optimizer created while warming up starts from zero
                    value.copy_(state[p][key]) if p in state else value.zero_()
        self.inputs, self.outputs, self.graph = static, tuple(outputs), graph


class CUDAGraphForward:
    """``fn(*inputs) -> outputs`` (no side effects) recorded once in a CUDA graph on ``inputs``, replayed per call.

    Args:
        fn: tensors in, a tensor or a tuple of tensors out; it must not change any tensor (it is
            run a few times while warming up). It runs under ``torch.inference_mode``.
        inputs: the static CUDA tensors ``fn`` reads; the caller writes each call's values into
            them (e.g. ``copy_(..., non_blocking=True)`` from pinned memory) before calling.

    """

    def __init__(
        self, fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], inputs: Sequence[torch.Tensor]
    ) -> None:
        self.inputs = list(inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode():
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = fn(*self.inputs)
        self.outputs: tuple[torch.Tensor, ...] = out if isinstance(out, tuple) else (out,)

    def __call__(self) -> tuple[torch.Tensor, ...]:
        """Replay on what the inputs hold now; the static outputs (overwritten by the next replay)."""
        self.graph.replay()
        return self.outputs
