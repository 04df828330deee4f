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

from gymlab.errors import GymlabError


class NonFinite(Exception):
    """A NaN or infinite number from the agent (a metric, or a tensor of its state): stop without saving."""


def check_metrics(metrics: Mapping[str, Any], prefix: str, agent: str, call: str, source: str) -> None:
    """Raise :class:`NonFinite` for a NaN or infinite metric, a one-line error for one that is not a number.

    ``prefix`` is the metrics' TensorBoard section (``train``, a phase's name); ``agent`` names the
    agent, ``call`` the method that returned them (``update()``) and ``source`` the same in words
    ("the agent's update"), for the error lines.
    """
    for key, value in metrics.items():
        try:
            bad = value - value  # NaN for NaN or infinity; 0 for every finite number
        except TypeError:
            raise GymlabError(
                f"agent '{agent}': {call} returned {prefix}/{key} = {value!r}, not a number "
                "(text goes through ctx.text)"
            ) from None
        if bad:
            raise NonFinite(f"{prefix}/{key} is {value} (reported by {source})")


def nonfinite_tensor(state: Any, name: str = "") -> str | None:
    """Where a nested state (dicts, lists, tensors, arrays) holds NaN or infinity, e.g. "nan in policy.q"; else None.

    Only float tensors and arrays are looked at: plain numbers in a state are settings or
    counters (an infinite gradient-norm limit is legitimate).
    """
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            return f"{'nan' if bool(torch.isnan(state).any()) else 'inf'} in {name or 'a tensor'}"
        return None
    if isinstance(state, np.ndarray):
        if state.dtype.kind in "fc" and not np.isfinite(state).all():
            return f"{'nan' if np.isnan(state).any() else 'inf'} in {name or 'an array'}"
        return None
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = nonfinite_tensor(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None
