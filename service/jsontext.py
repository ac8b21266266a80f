"""JSON text for the wire and the database: non-finite floats become null structurally.

JSON has no spelling for NaN or ±Infinity. Python's encoder either writes the invalid tokens
``NaN``/``Infinity`` or (``allow_nan=False``) refuses the whole value. Both callers (HTTP bodies in
service.http and rows in service.store) want valid JSON with the same value everywhere else, so
non-finite floats are replaced by ``None`` in a copy of the value before encoding — strings are
never touched (a filename_prefix ``"NaN_Infinity"`` stays exactly that).
"""
from __future__ import annotations

import json
import math
from typing import Any

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def finite(v: Any) -> Any:
    """A copy of ``v`` (dicts, lists and tuples copied as dicts and lists) with every non-finite float at
    any depth replaced by None. Iterative, so deep values cannot overflow the stack. Only called when
    encoding found a non-finite float, so the copy costs nothing on the common path."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if not isinstance(v, (dict, list, tuple)):
        return v
    root: list = [v]
    stack = [(v, root, 0)]  # (original container, its copy's parent, key in that parent)
    while stack:
        c, parent, key = stack.pop()
        copy = dict(c) if isinstance(c, dict) else list(c)
        parent[key] = copy
        for k, x in (copy.items() if isinstance(copy, dict) else enumerate(copy)):
            if isinstance(x, float) and not math.isfinite(x):
                copy[k] = None
            elif isinstance(x, (dict, list, tuple)):
                stack.append((x, copy, k))
    return root[0]


def dumps(v: Any) -> str:
    """Compact JSON (UTF-8 text, not ASCII-escaped); non-finite floats become null; objects JSON
    cannot hold are written as ``str(obj)``."""
    try:
        return _compact(v)
    except ValueError:  # a NaN/inf somewhere (rare): rebuild only the affected containers
        return json.dumps(finite(v), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except TypeError:
        return json.dumps(finite(v), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
