"""Typed execution events, named and shaped like ComfyUI's websocket messages.

The executor emits ``Event(type, data)``; adapters (server.py, cli.py) decide how to deliver them.
ComfyUI's types: execution_start, execution_cached, executing, progress, executed,
execution_success, execution_error, execution_interrupted. Loom adds ``node_done`` (per-node
duration and cache reason) and ``warning`` (a node's non-fatal problem: prompt_id, node, class_type, message);
ComfyUI clients never see them. Events are delivered in order; the one
sequence number is the server hub's per-prompt websocket ``seq`` (it also numbers the messages it
synthesizes, such as ``progress_state``). A progress event may carry ``preview``: a zero-argument callable
returning a PIL image, evaluated only by a consumer that wants it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

HISTORY_TYPES = frozenset({"execution_start", "execution_cached", "execution_success", "execution_error",
                           "execution_interrupted"})


@dataclass(slots=True)
class Event:
    type: str
    data: dict
    preview: Callable[[], Any] | None = field(default=None, repr=False)

    def to_message(self) -> dict:
        """The ComfyUI websocket message ``{"type", "data"}``."""
        return {"type": self.type, "data": self.data}


def now_ms() -> int:
    return int(time.time() * 1000)


EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """A sink that drops everything."""
