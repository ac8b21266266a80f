"""Small HTTP helpers shared by the route modules: JSON in and out, 4xx errors, the service holder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

_enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(v: Any) -> str:
    try:
        return _enc(v)
    except ValueError:  # NaN / inf somewhere in a node's ui: JSON has no spelling for them
        return json.dumps(v, ensure_ascii=False, default=str).replace("NaN", "null").replace(
            "-Infinity", "null").replace("Infinity", "null")
    except TypeError:
        return json.dumps(v, ensure_ascii=False, default=str)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


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
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise HTTPException(400, f"invalid JSON: {str(e)[:200]}")


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
