"""Small HTTP helpers shared by the route modules: JSON in and out, 4xx errors, the service holder."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .jsontext import dumps, finite

__all__ = ["JSON", "dumps", "error", "read_body", "read_json", "qint", "Service", "svc", "lone_surrogate_at"]


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = dumps(content)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (say, echoed in an error): JSON can escape it as \udXXX
            return json.dumps(finite(content), ensure_ascii=True, separators=(",", ":"), allow_nan=False,
                              default=str).encode("ascii")


def error(status: int, message: str, **extra) -> JSON:
    return JSON({"error": message, **extra}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    n = request.headers.get("content-length")
    if n is not None:
        try:
            if int(n) > limit:
                raise HTTPException(413, f"body larger than {limit} bytes")
        except ValueError:
            raise HTTPException(400, "bad Content-Length")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, *, allow_empty: bool = False) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        if allow_empty:
            return None
        raise HTTPException(400, "empty body; expected JSON")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise HTTPException(400, f"invalid JSON: {str(e)[:200]}")
    if _SURROGATE_ESCAPE.search(raw):  # rare: only an escape can spell a lone surrogate in valid UTF-8
        where = lone_surrogate_at(value)
        if where is not None:
            raise HTTPException(400, {"type": "invalid_text", "message": "text holds a lone UTF-16 surrogate, "
                                      "which is not a character and cannot be stored or written to files",
                                      "details": where, "extra_info": {"path": where}})
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(value: Any, root: str = "$") -> str | None:
    """The JSON path (``$.prompt["3"].inputs.text``) of the first key or string holding a lone
    surrogate (``"\\ud800"`` decodes to one), or None. Iterative: nesting depth costs no stack."""
    stack = [(value, root)]
    while stack:
        v, path = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return path
        elif isinstance(v, dict):
            for k, x in v.items():
                p = f"{path}[{json.dumps(k)}]" if not str(k).isidentifier() else f"{path}.{k}"
                if isinstance(k, str) and _SURROGATE.search(k):
                    return p + " (the key)"
                stack.append((x, p))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{path}[{i}]") for i, x in enumerate(v))
    return None


def qint(request: Request, name: str, default: int | None, lo: int = 0, hi: int = 10**9) -> int | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        return max(lo, min(hi, int(v)))
    except ValueError:
        raise HTTPException(400, f"query parameter {name!r} must be an integer")


@dataclass
class Service:
    """Everything a route needs, hung on ``app.state.svc``."""

    config: Any
    registry: Any
    env: Any
    executor: Any
    store: Any
    hub: Any
    worker: Any = None


def svc(request) -> Service:
    return request.app.state.svc
