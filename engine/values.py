"""Values that flow between nodes: byte sizes, isolation of containers, and in-place-mutation checks.

The engine never imports torch. Tensors are recognised by duck typing: ``nbytes`` for their size
and ``_version`` (torch's in-place modification counter) to detect a node that mutated an input.
"""
from __future__ import annotations

import dataclasses
from typing import Any

SMALL_OBJECT = 64  # bytes charged for a value whose size is unknown


_PLAIN = frozenset({int, float, bool, type(None)})


def nbytes(value: Any) -> int:
    """Approximate memory held by a value: tensors and arrays by ``nbytes``, containers summed.
    Objects may define ``__loom_nbytes__()`` (model references report a few bytes)."""
    if type(value) is tuple and all(type(v) in _PLAIN for v in value):  # the common small case
        return SMALL_OBJECT * (1 + len(value))
    total = 0
    stack = [value]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        sizer = getattr(type(v), "__loom_nbytes__", None)
        if sizer is not None:
            total += int(sizer(v))
        elif isinstance(v, (bytes, bytearray, str)):
            total += len(v)
        elif isinstance(v, dict):
            total += SMALL_OBJECT
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += SMALL_OBJECT
            stack.extend(v)
        elif hasattr(v, "nbytes") and not isinstance(v, type):
            try:
                total += int(v.nbytes)
            except (TypeError, ValueError):
                total += SMALL_OBJECT
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        else:
            total += SMALL_OBJECT
    return total


def isolate(value: Any) -> Any:
    """Give a consumer its own copies of plain containers (dict/list/set), sharing the leaves.

    Cheap (containers are small; tensors are shared) and enough to stop a node from corrupting a
    cached value by adding or replacing keys. In-place writes into shared tensors are caught by
    ``Versions`` instead.
    """
    t = type(value)
    if t in _PLAIN or t is str:
        return value
    if isinstance(value, dict):
        return {k: isolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [isolate(v) for v in value]
    if isinstance(value, set):
        return set(value)
    if isinstance(value, tuple) and any(isinstance(v, (dict, list, set, tuple)) for v in value):
        return tuple(isolate(v) for v in value)
    return value


class Versions:
    """Snapshot of the in-place modification counters of every tensor-like leaf in some values."""

    __slots__ = ("_items",)

    def __init__(self, values: dict[str, Any]):
        items = []
        for name, v in values.items():
            if type(v) in _PLAIN or type(v) is str:
                continue
            stack = [v]
            while stack:
                x = stack.pop()
                if isinstance(x, dict):
                    stack.extend(x.values())
                elif isinstance(x, (list, tuple)):
                    stack.extend(x)
                else:
                    ver = getattr(x, "_version", None)
                    if isinstance(ver, int):
                        items.append((name, x, ver))
                    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
                        stack.extend(getattr(x, f.name) for f in dataclasses.fields(x))
        self._items = items

    def mutated(self) -> list[str]:
        """Names of inputs whose tensors were written in place since the snapshot."""
        out: list[str] = []
        for name, x, ver in self._items:
            if x._version != ver and name not in out:
                out.append(name)
        return out
