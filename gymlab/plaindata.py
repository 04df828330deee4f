"""What a config value may be: finite plain data, taken exactly as written or refused.

:func:`data_problem` finds a value that is not finite plain data (YAML's ``.inf``, a date, bytes);
:func:`coerced` finds where schema validation turned a value into another kind than the one written
(text into a number, a boolean into a number, a whole number into a float that is another number).
Each answers ``(key path, why)`` for :mod:`gymlab.config`'s one-line errors, or None.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

#: The value types a config may hold: what YAML's plain data becomes, and what survives the run folder's
#: config.yaml and the checkpoint unchanged (a date, a set or ``!!binary`` bytes would come back different).
PLAIN_TYPES = (str, int, float, bool, type(None))


def _nodes(value: Any, path: str) -> Iterator[tuple[Any, str]]:
    """Every value in ``value``, nested mappings and lists included, with its key path, depth first in order."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        yield item, where
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}.{i}") for i, v in reversed(list(enumerate(item))))


def data_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The first value in ``value`` (nested mappings and lists) that is not finite plain data: (key path, why)."""
    for item, where in _nodes(value, path):
        if isinstance(item, float) and not math.isfinite(item):
            return where, f"{item}: must be a finite number"
        if not isinstance(item, (*PLAIN_TYPES, Mapping, list, tuple)):
            return where, (
                f"a {type(item).__name__}: must be text, a number, a boolean, a list or a mapping (quote it as text)"
            )
    return None


def too_large(value: Any, path: str) -> tuple[str, str] | None:
    """The first whole number in ``value`` (validated: a float field holds a float) past 64 bits: (key path, why).

    numpy and torch take no larger size or count; past them, a setting ended in their traceback.
    """
    for item, where in _nodes(value, path):
        if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            return where, f"{item}: too large; whole numbers go from -2^63 to 2^63 - 1 ({2**63 - 1:,})"
    return None


def coerced(given: Any, made: Any, where: str) -> tuple[str, str] | None:
    """Where validation turned a value into another kind that it does not mean: (key path, why); else None.

    A boolean is never a number, text is never a number or a boolean, and a number is never a
    boolean; an integral float for a whole number (``steps: 1.0e5``) is exact and kept, and so is a whole
    number for a float when the float holds it exactly (``10**30`` would become another number). Lists
    and mappings are compared item by item.
    """
    if isinstance(given, bool):
        if not isinstance(made, bool):
            return where, f"{given}: a boolean is not {kind_of(made)}"
        return None
    if isinstance(given, str):
        if isinstance(made, (bool, int, float)):
            return where, f"{given!r}: text is not {kind_of(made)} (write the value unquoted)"
        return None
    if isinstance(given, (int, float)):
        if isinstance(made, bool):
            return where, f"{given}: a number is not a boolean (write true or false)"
        if isinstance(given, int) and isinstance(made, float) and made != given:  # 10**30 -> 1.0000000000000000199e30
            return where, f"{given}: a whole number that a float cannot hold exactly (write it as a float: {made!r})"
        return None
    return coerced_items(given, made, where)


def converts_itself(model: type[BaseModel], field: str) -> bool:
    """Whether a schema's field has its own before/plain/wrap validator: it states which values it converts.

    (DQN's ``save_replay`` takes ``true``/``false`` for ``always``/``never``, on purpose and documented.)
    """
    decorators = model.__pydantic_decorators__.field_validators.values()
    return any(field in d.info.fields and d.info.mode in ("before", "plain", "wrap") for d in decorators)


def coerced_items(given: Any, made: Any, where: str) -> tuple[str, str] | None:
    """:func:`coerced` for each item of a list or mapping ``given`` against what validation made of it."""
    pairs: list[tuple[Any, Any, str]] = []
    if isinstance(given, (list, tuple)) and isinstance(made, (list, tuple)) and len(given) == len(made):
        pairs = [(g, m, f"{where}.{i}") for i, (g, m) in enumerate(zip(given, made, strict=True))]
    elif isinstance(given, Mapping) and isinstance(made, (Mapping, BaseModel)):
        for key, g in given.items():
            if isinstance(made, BaseModel) and converts_itself(type(made), str(key)):
                continue
            m = made.get(key) if isinstance(made, Mapping) else getattr(made, str(key), None)
            pairs.append((g, m, f"{where}.{key}" if where else str(key)))
    for g, m, at in pairs:
        found = coerced(g, m, at)
        if found is not None:
            return found
    return None


def kind_of(value: Any) -> str:
    """A value's kind in words, for an error line."""
    if isinstance(value, bool):
        return "a boolean"
    return "a whole number" if isinstance(value, int) else "a number" if isinstance(value, float) else "a value"
