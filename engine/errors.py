"""Structured errors in ComfyUI's shape.

A validation problem is an ``ErrorItem`` ``{type, message, details, extra_info}``; a failed prompt
is ``WorkflowError`` carrying the top-level error and ``node_errors``::

    {"error": {"type", "message", "details", "extra_info"},
     "node_errors": {id: {"errors": [item...], "dependent_outputs": [ids], "class_type": str}}}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


class Interrupted(Exception):
    """Raised inside a node when the run was cancelled."""


class InputMutated(RuntimeError):
    """A node changed an input value in place; cached values are immutable by contract."""
