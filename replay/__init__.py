"""Replay memories: a uniform ring of transitions that stores each observation frame once."""

from gymlab.replay.buffer import Batch, ReplayBuffer

__all__ = ["Batch", "ReplayBuffer"]
