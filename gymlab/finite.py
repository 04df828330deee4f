"""Finite or stop: the checks of what an agent reports (metrics) and holds (its state's tensors).

Each number an agent reports is checked with ``value - value``: 0 for every finite number, NaN
for NaN or infinity, at a fraction of a microsecond. A NaN or infinite tensor in an agent's state
is looked for before each checkpoint, so the last good one is never overwritten by a diverged one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gymlab.agent import POLICY
from gymlab.errors import GymlabError


class NonFinite(Exception):
    """A NaN or infinite number from the agent (a metric, or a tensor of its state): stop without saving."""


def check_metrics(metrics: Any, prefix: str, agent: str, call: str, source: str) -> None:
    """Raise :class:`NonFinite` for a NaN or infinite metric, a one-line error for one that is not a number.

    ``prefix`` is the metrics' TensorBoard section (``train``, a phase's name); ``agent`` names the
    agent, ``call`` the method that returned them (``update()``) and ``source`` the same in words
    ("the agent's update"), for the error lines. A metric is a real scalar: a Python or numpy
    number, or a 0-d array or tensor. A Python float takes the fast path (``value - value``);
    anything else is looked at once more closely (:func:`_metric_problem`).
    """
    if not isinstance(metrics, Mapping):
        raise GymlabError(
            f"agent '{agent}': {call} returned metrics that are not a mapping of names to numbers "
            f"(got {type(metrics).__name__}); return a dict like {{'loss': 0.1}}, or {{}} when nothing happened"
        )
    for key, value in metrics.items():
        if type(value) is not float or type(key) is not str:
            if not isinstance(key, str):
                raise GymlabError(
                    f"agent '{agent}': {call} returned metrics that are not a mapping of names to numbers "
                    f"(key {key!r} is a {type(key).__name__}); return a dict like {{'loss': 0.1}}"
                )
            problem = _metric_problem(value)
            if problem is not None:
                raise GymlabError(
                    f"agent '{agent}': {call} returned {prefix}/{key} = {problem}, not a number "
                    "(a metric is a Python or numpy number or a 0-d array or tensor; return a dict like "
                    "{'loss': 0.1}; text goes through ctx.text)"
                )
        if value - value:  # NaN for NaN or infinity; 0 for every finite number
            raise NonFinite(f"{prefix}/{key} is {value} (reported by {source})")


#: Largest magnitude of a metric: a Python int beyond it cannot become a float for TensorBoard.
_MAX_FLOAT = float(np.finfo(np.float64).max)


def _metric_problem(value: Any) -> str | None:
    """What ``value`` is, in words, when it is not a real scalar metric; None when it is one."""
    if isinstance(value, (bool, float, np.integer, np.floating)):
        return None
    if isinstance(value, int):
        return None if abs(value) <= _MAX_FLOAT else "an int too large for a float"
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            return f"an array of shape {value.shape} and dtype {value.dtype}"
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex() or value.dtype == torch.bool:
            return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        return None
    if isinstance(value, (str, bytes, complex)):
        return repr(value)[:80]
    return f"a {type(value).__name__}"


def _nonfinite(data: torch.Tensor | np.ndarray, name: str) -> str | None:
    """Where a float tensor or array holds NaN or infinity ("nan in NAME", "inf in NAME"); else None.

    Only float data is looked at: integer arrays and plain numbers in a state are settings or
    counters (an infinite gradient-norm limit is legitimate).
    """
    if isinstance(data, torch.Tensor):
        if (data.is_floating_point() or data.is_complex()) and not bool(torch.isfinite(data).all()):
            return f"{'nan' if bool(torch.isnan(data).any()) else 'inf'} in {name or 'a tensor'}"
        return None
    if data.dtype.kind in "fc" and not np.isfinite(data).all():
        return f"{'nan' if np.isnan(data).any() else 'inf'} in {name or 'an array'}"
    return None


#: How deep an agent's state may nest (dicts and lists in dicts...): deeper is refused before a save.
MAX_STATE_DEPTH = 100
_PLAIN_LEAVES = (str, int, float, bool, type(None), bytes)
_KEY_TYPES = (str, int, float, bool, type(None))


class _BadState(Exception):
    """Where the state holds what a checkpoint cannot keep, and what it is."""


def check_state(state: Any, agent: str) -> str | None:
    """Check an agent's ``state_dict()`` before it is saved: a one-line error for content a checkpoint cannot keep.

    The state must be a dict with a ``"policy"`` part (what eval and watch load), holding only tensors,
    numpy arrays and scalars of numbers, and plain data (str, int, float, bool, None, and lists, tuples
    and dicts of them), at most :data:`MAX_STATE_DEPTH` deep; anything else would be written, then
    refused when the run is evaluated or resumed. One walk, by container (an array or tensor is one step), which also
    finds the first NaN or infinity in float data ("nan in policy.q"), else None.
    """
    fix = "return tensors, numpy arrays and plain data only (see Agent.state_dict in gymlab/agent.py)"
    if not isinstance(state, dict):
        got = type(state).__name__
        raise GymlabError(
            f"agent '{agent}': state_dict() must return {{'policy': {{...}}, 'training': {{...}}}} (got {got}); {fix}"
        )
    if POLICY not in state:  # eval and watch load the policy part alone: without it the run could not be played
        keys = ", ".join(map(str, list(state)[:5])) or "none"
        raise GymlabError(
            f"agent '{agent}': state_dict() has no '{POLICY}' (its keys: {keys}): return {{'{POLICY}': {{what acting "
            "needs}, 'training': {the rest of an exact resume}}; gymlab eval and watch load the policy part alone"
        )
    try:
        return _walk_state(state, "state_dict()", "", 0)
    except _BadState as exc:
        raise GymlabError(f"agent '{agent}': {exc}, which a checkpoint cannot hold; {fix}") from None


def _walk_state(node: Any, path: str, name: str, depth: int) -> str | None:
    if isinstance(node, (torch.Tensor, np.ndarray, np.generic)):
        if not isinstance(node, torch.Tensor) and node.dtype.kind not in "biufc":
            raise _BadState(f"{path} is numpy data of dtype {node.dtype}")
        return _nonfinite(np.asarray(node) if isinstance(node, np.generic) else node, name)
    if isinstance(node, _PLAIN_LEAVES):
        return None
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        raise _BadState(f"{path} is {_kind(node)}")
    if depth >= MAX_STATE_DEPTH:
        raise _BadState(f"{path} nests deeper than {MAX_STATE_DEPTH} levels")
    for key, value in items:
        if isinstance(node, dict) and not isinstance(key, _KEY_TYPES):
            raise _BadState(f"{path} has a key that is a {type(key).__name__}")
        found = _walk_state(value, f"{path}[{key!r}]", f"{name}.{key}" if name else str(key), depth + 1)
        if found is not None:
            return found
    return None


def _kind(node: Any) -> str:
    """What a value a checkpoint cannot hold is, in words: "a function", "an object"."""
    if callable(node) and hasattr(node, "__code__"):
        return "a function"
    name = type(node).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
