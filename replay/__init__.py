"""Replay memories: a uniform ring of transitions that stores each observation frame once, and its device batches."""

from gymlab.replay.buffer import Batch, ReplayBuffer
from gymlab.replay.loader import DeviceBatches, TensorBatch, choose_source

__all__ = ["Batch", "DeviceBatches", "ReplayBuffer", "TensorBatch", "choose_source"]
