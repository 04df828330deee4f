"""Networks the agents share (a plain MLP, an MLP on flat or one-hot observations, the Nature CNN), and clipping.

:func:`clip_grad_norm` clips by global norm as ``clip_grad_norm_`` does, without its per-call overhead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

#: The smallest height and width the Nature CNN's three convolutions (8/4, 4/2, 3/1) leave one pixel of.
NATURE_CNN_MIN_SIDE = 36


def is_image(space: gym.Space[Any]) -> bool:
    """A (C, H, W) uint8 Box: frames for the Nature CNN."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def mlp(sizes: Sequence[int], activation: str) -> torch.nn.Sequential:
    """Linear layers of ``sizes[0] -> … -> sizes[-1]`` with the activation (``tanh`` or ``relu``) between them."""
    act: type[torch.nn.Module] = torch.nn.Tanh if activation == "tanh" else torch.nn.ReLU
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return torch.nn.Sequential(*layers)


class MLP(torch.nn.Module):
    """Fully connected ReLU network on flat (or one-hot) observations."""

    def __init__(self, in_dim: int, hidden: list[int], n_out: int, one_hot: int = 0, start: int = 0) -> None:
        super().__init__()
        self.one_hot = one_hot  # > 0: observations are Discrete indices into this many states
        self.start = start  # the Discrete space's first state
        self.net = mlp([in_dim, *hidden, n_out], "relu")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, *obs_shape) -> (B, n_out)."""
        if self.one_hot:
            index = obs.long() - self.start if self.start else obs.long()
            x = torch.nn.functional.one_hot(index, self.one_hot).float()  # (B, S)
        else:
            x = obs.reshape(obs.shape[0], -1).float()  # (B, D); a no-op for float32 vectors
        return self.net(x)


class NatureCNN(torch.nn.Module):
    """The Nature DQN torso and head (Mnih et al., 2015): 3 convolutions, 512 hidden units, ``n_out`` outputs."""

    def __init__(self, in_channels: int, height: int, width: int, n_out: int) -> None:
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, kernel_size=4, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, kernel_size=3, stride=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, in_channels, height, width)).shape[1]  # 3136 for 84x84
        self.head = torch.nn.Sequential(torch.nn.Linear(flat, 512), torch.nn.ReLU(), torch.nn.Linear(512, n_out))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> (B, n_out); pixels are scaled on the device, after the transfer."""
        return self.head(self.conv(obs.float() / 255.0))


def observation_net(observation_space: gym.Space[Any], n_out: int, hidden: list[int]) -> torch.nn.Module:
    """``n_out`` outputs from an observation: the Nature CNN for uint8 images, else an MLP (``hidden`` sizes).

    Box observations are flattened; Discrete ones are one-hot encoded.
    """
    if is_image(observation_space):
        c, h, w = observation_space.shape  # type: ignore[misc]
        return NatureCNN(c, h, w, n_out)
    if isinstance(observation_space, gym.spaces.Discrete):
        n = int(observation_space.n)
        return MLP(n, hidden, n_out, one_hot=n, start=int(observation_space.start))
    return MLP(int(np.prod(observation_space.shape or ())), hidden, n_out)


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global L2 norm of at most ``max_norm``; the norm before scaling.

    The arithmetic of ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` op for op
    (per-tensor norms in one foreach call, their norm, ``min(max_norm / (norm + 1e-6), 1)``, one foreach
    multiply), so the result is the same to the bit, without the public function's per-call grouping
    of the tensors by device and dtype: 37 against 63 µs per call for CartPole's MLP on this CPU
    (benchmarks/README.md, "DQN: the step against its floor"). The parameters must share one device
    and dtype (one network's do).
    ``tests/test_dqn.py`` checks it against ``clip_grad_norm_`` on the installed torch.
    """
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


def portable_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as an eager optimizer writes it, whatever the run's ``compile``.

    A CUDA graph's Adam holds its learning rate in a tensor and is capturable; saved as a number and
    not capturable, the state loads into an eager optimizer as into a graphed one (which puts both
    back after loading: :meth:`gymlab.cudagraph.CUDAGraphStep.optimizer_loaded`).
    """
    state = optimizer.state_dict()
    state["param_groups"] = [{**g, "lr": float(g["lr"]), "capturable": False} for g in state["param_groups"]]
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """``optimizer.load_state_dict(state)``, refusing a state that does not fit the optimizer, with ValueError.

    torch checks only that the parameter groups match in number and size: a moment of another shape,
    a number where a tensor was, a moment or a setting missing would load, then fail inside the next
    update. Everything is checked before anything is loaded.
    """
    problem = _optimizer_state_problem(optimizer, state)
    if problem:
        raise ValueError(f"its optimizer state {problem}")
    optimizer.load_state_dict(state)


def _optimizer_state_problem(optimizer: torch.optim.Optimizer, state: Any) -> str | None:
    """What keeps ``state`` from being a ``state_dict`` this optimizer wrote; None when nothing."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        return f"is a {type(state).__name__} without a 'state' mapping"
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "has no list of parameter groups"
    return next(filter(None, (_settings_problem(optimizer, g) for g in groups)), None) or _moments_problem(
        optimizer, state["state"], any(g.get("amsgrad") for g in groups)
    )


def _settings_problem(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str | None:
    """A parameter group's setting missing or of another kind than the optimizer's default; None when none."""
    for key, default in (("params", []), *optimizer.defaults.items()):
        if key not in group:
            if isinstance(default, bool) or default is None:
                continue  # a flag newer than the torch that wrote the file: torch fills it in as it loads
            return f"has the setting '{key}' missing"
        if not _same_kind(default, group[key]):
            return f"has the setting '{key}' {repr(group[key])[:40]}"
    return None


def _moments_problem(optimizer: torch.optim.Optimizer, held: dict[Any, Any], amsgrad: bool) -> str | None:
    """Per-parameter state for a parameter that is not there, or not one ``step`` and moments of its shape."""
    shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
    moments = {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
    expected = {"step", *moments} if isinstance(optimizer, torch.optim.Adam) else None
    for index, values in held.items():
        if not (isinstance(index, int) and 0 <= index < len(shapes)) or not isinstance(values, dict):
            return f"holds {type(values).__name__} for a parameter {index!r} of {len(shapes)}"
        if set(values) != (expected or set(values)):
            return f"holds {sorted(map(str, values))} for parameter {index}, not {sorted(expected or ())}"
        for key, value in values.items():
            if key == "step":
                fits = _same_kind(0.0, value)
            else:
                fits = isinstance(value, torch.Tensor) and tuple(value.shape) == shapes[index]
            if not fits:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                return f"holds '{key}' of parameter {index} as {shape}, not {shapes[index]}"
    return None


def _same_kind(default: Any, value: Any) -> bool:
    """Whether an optimizer setting from a file is of the kind the optimizer's default is (finite where a number)."""
    if isinstance(default, bool) or default is None:
        return isinstance(value, bool) or value is None
    if isinstance(default, (int, float)):
        if isinstance(value, torch.Tensor):  # a learning rate held in a tensor (a CUDA graph's Adam)
            return value.numel() == 1 and bool(torch.isfinite(value).all())
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, list):  # a group's parameter indices
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if isinstance(default, tuple):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(default)
            and all(_same_kind(d, v) for d, v in zip(default, value, strict=True))
        )
    return True
