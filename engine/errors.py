"""Structured errors in ComfyUI's shape.

A validation problem is an ``ErrorItem`` ``{type, message, details, extra_info}``; a failed prompt
is ``WorkflowError`` carrying the top-level error and ``node_errors``::

    {"error": {"type", "message", "details", "extra_info"},
     "node_errors": {id: {"errors": [item...], "dependent_outputs": [ids], "class_type": str}}}
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from .events import now_ms


@dataclass
class ErrorItem:
    type: str
    message: str
    details: str = ""
    extra_info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"type": self.type, "message": self.message, "details": self.details,
                "extra_info": self.extra_info}


def input_error(type: str, message: str, input_name: str, details: str = "", *,
                received: Any = None, config: Any = None, **extra) -> ErrorItem:
    info = {"input_name": input_name, **extra}
    if config is not None:
        info["input_config"] = config
    if received is not None:
        info["received_value"] = _jsonable(received)
    return ErrorItem(type, message, details, info)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "..."
    return repr(v)[:200]


class WorkflowError(Exception):
    """A workflow that cannot run: malformed, or every output failed validation."""

    def __init__(self, type: str, message: str, details: str = "", node_errors: dict | None = None,
                 extra_info: dict | None = None):
        super().__init__(f"{message}: {details}" if details else message)
        self.error = ErrorItem(type, message, details, extra_info or {})
        self.node_errors = node_errors or {}

    def to_dict(self) -> dict:
        return {"error": self.error.to_dict(), "node_errors": self.node_errors}


# -- envelopes: every error body Loom sends or prints is built here --------------------------------

def envelope(type: str, message: str, details: str = "", node_errors: dict | None = None,
             extra_info: dict | None = None) -> dict:
    """ComfyUI's rejected-prompt body ``{"error": {type, message, details, extra_info}, "node_errors"}``."""
    return {"error": ErrorItem(type, message, details, extra_info or {}).to_dict(), "node_errors": node_errors or {}}


def partial_validation(node_errors: dict) -> dict:
    """The envelope for a workflow some of whose outputs failed validation (the others still run)."""
    return envelope("prompt_outputs_failed_validation", "Some outputs failed validation", "", node_errors)


def internal_error(e: BaseException, where: str = "validation") -> dict:
    """The envelope for a bug in Loom itself (an exception escaping ``where``): not the workflow's
    fault, so servers answer it with HTTP 500 and log the traceback."""
    return envelope("internal_error", f"Internal error in Loom during {where} (a bug in Loom, not in the "
                    "workflow)", f"{type_name(e)}: {e}"[:500], None,
                    {"exception_type": type_name(e), "traceback": traceback.format_tb(e.__traceback__)})


def execution_error(prompt_id: str, exc: BaseException, node_id: str | None = None, node_type: str | None = None,
                    executed: list[str] | None = None, current_inputs: dict | None = None,
                    current_outputs: list[str] | None = None) -> dict:
    """ComfyUI's ``execution_error`` event data for ``exc`` raised in node ``node_id`` (None when the
    prompt failed outside any node)."""
    return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type, "executed": list(executed or ()),
            "exception_message": f"{exc}\n", "exception_type": type_name(exc),
            "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": current_inputs or {},
            "current_outputs": list(current_outputs or ()), "timestamp": now_ms()}


def type_name(e: BaseException) -> str:
    """``ValueError`` for builtins, ``module.Class`` otherwise (as ComfyUI reports exception types)."""
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class Interrupted(Exception):
    """Raised inside a node when the run was cancelled."""


class InputMutated(RuntimeError):
    """A node changed an input value in place; cached values are immutable by contract."""
