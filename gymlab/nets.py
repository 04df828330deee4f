"""Networks the agents share (a plain MLP, an MLP on flat or one-hot observations, the Nature CNN), and clipping.

:func:`clip_grad_norm` clips by global norm as ``clip_grad_norm_`` does, without its per-call overhead.
"""

from __future__ import annotations

import itertools
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
