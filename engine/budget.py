"""Run-time checks before a node runs: linked values inside the input's declared range, and the
memory its outputs will take inside the configured budget.

Validation checks constants only; a value that arrives through a link (a PrimitiveInt of 100000 into
a width declared max 16384) used to reach the node unchecked. ``check_linked`` applies the same
rule at run time and raises ``LinkedValueError`` carrying validation's own error item.

Nodes that create tensors declare ``estimate_bytes(**inputs)`` (see engine.node.Node): the bytes of
the outputs they are about to allocate, computed from the same arguments ``run`` gets (shapes of
linked tensors, constant sizes). ``check_memory`` refuses a node whose estimate exceeds the budget
before it allocates anything, and ``precheck`` refuses a whole run up front when a node whose inputs
are all constants (an EmptyLatentImage of 16384x16384x64) cannot fit. The budget bounds one node's
outputs; it is not a model of the whole process (models live in the model store's own budget).
"""
from __future__ import annotations

import os
from typing import Any

from .errors import ErrorItem
from .node import Node
from .validate import coerce
from .workflow import Link

GiB = 1024**3


def default_budget() -> int:
    """The machine's physical memory in bytes (8 GiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def tensor_bytes(*shape: int, itemsize: int = 4) -> int:
    """Bytes of a dense tensor of ``shape`` (float32 unless ``itemsize`` says otherwise)."""
    n = itemsize
    for d in shape:
        n *= max(0, int(d))
    return n


def fmt_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 1024**2:.1f} MiB"


class LinkedValueError(ValueError):
    """A value that arrived through a link is outside the consuming input's declared range."""

    def __init__(self, class_type: str, input_name: str, item: ErrorItem):
        super().__init__(f"{item.message} (input '{input_name}' of {class_type}, value from a link)")
        self.error_item = item


class MemoryBudgetExceeded(MemoryError):
    """A node's outputs would not fit the memory budget; raised before it allocates them."""

    def __init__(self, class_type: str, needed: int, budget: int, node_id: str | None = None):
        who = f"node {node_id} ({class_type})" if node_id else class_type
        super().__init__(f"{who} would allocate {fmt_bytes(needed)} ({needed} bytes) for its outputs; the memory "
                         f"budget is {fmt_bytes(budget)} ({budget} bytes). Use smaller sizes or batches, or raise "
                         "the budget (loom serve --memory-mb)")
        self.error_item = ErrorItem("memory_budget_exceeded", "Outputs would not fit the memory budget", str(self),
                                    {"needed_bytes": needed, "budget_bytes": budget})
        self.needed, self.budget = needed, budget


def check_linked(cls, linked: dict[str, Any]) -> None:
    """Raise LinkedValueError when a linked INT/FLOAT is outside its input's declared min/max (or not a
    number of that type); other linked values (tensors, models) pass untouched."""
    for name, value in linked.items():
        inp = cls.input(name)
        if inp is None or inp.type not in ("INT", "FLOAT"):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) and inp.type == "FLOAT":
            continue  # a value of another kind is the node's business (types were checked at validation)
        _, err = coerce(inp, value, None, {})
        if err is not None:
            raise LinkedValueError(cls.class_type, name, err)


def estimate(cls, inputs: dict[str, Any]) -> int | None:
    """The node's own output estimate for these arguments; None when it declares none or cannot tell."""
    if cls.estimate_bytes.__func__ is _BASE:
        return None
    try:
        n = cls.estimate_bytes(**inputs)
    except Exception:  # an estimate must never be what fails a node
        return None
    return int(n) if isinstance(n, (int, float)) and n == n else None


def check_memory(cls, inputs: dict[str, Any], budget: int | None, node_id: str | None = None) -> None:
    if budget is None:
        return
    n = estimate(cls, inputs)
    if n is not None and n > budget:
        raise MemoryBudgetExceeded(cls.class_type, n, budget, node_id)


def precheck(nodes: dict, classes: dict, order: list[str], budget: int | None) -> tuple[str, MemoryBudgetExceeded] | None:
    """(node id, error) for the first node in ``order`` whose inputs are all constants and whose outputs
    would not fit ``budget``; None when none."""
    if budget is None:
        return None
    for nid in order:
        cls = classes[nid]
        if cls.estimate_bytes.__func__ is _BASE:
            continue
        inputs = nodes[nid].inputs
        if any(type(v) is Link for v in inputs.values()):
            continue
        n = estimate(cls, dict(inputs))
        if n is not None and n > budget:
            return nid, MemoryBudgetExceeded(cls.class_type, n, budget, nid)
    return None


_BASE = Node.estimate_bytes.__func__
