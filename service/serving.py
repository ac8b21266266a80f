"""How uvicorn serves the app: slow-client limits and log hygiene.

- Request heads must complete within ``head_timeout_s`` (default 30 s) of a connection opening, or of
  the previous response on a keep-alive connection; otherwise the connection is closed. uvicorn has
  no such timeout (its keep-alive timer stops at the first byte), so 300 connections trickling one
  header line each held their sockets forever (slowloris).
- At most ``max_connections`` connections (HTTP and websocket) are open at once; one more is answered
  503 and closed at once, before it costs a request. The default stays well under the process's file
  limit, so accept() never runs out of descriptors.
- Identical log lines are rate-limited (``RepeatFilter``): a burst, then one line per window saying
  how many were dropped. Without it an accept() error logged a traceback per try: 82 MB a minute.
- Access tokens are redacted from every log line (``?token=...`` in uvicorn's access log and in its
  websocket lines).
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("loom.server")

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
         b"content-length: 28\r\n\r\ntoo many connections; retry\n")


def default_max_connections() -> int:
    """Half the descriptors the process may open (at most 1,000; at least 32)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 4096
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(32, min(1000, (soft - 64) // 2))


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline and a connection cap (set per server by
    ``protocol_class``)."""

    head_timeout_s: float = 30.0
    max_connections: int = 1000

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = None
        if len(self.connections) > self.max_connections:
            log.warning("connection refused: %d connections open (the limit is %d)", len(self.connections) - 1,
                        self.max_connections)
            transport.write(_BUSY)
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head arrived (or the socket switched)
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the next head on this keep-alive connection has the same deadline

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _cancel_head_timer(self) -> None:
        t = getattr(self, "_head_timer", None)
        if t is not None:
            t.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        log.info("closing a connection whose request head did not arrive within %.0f s", self.head_timeout_s)
        self.transport.close()


def protocol_class(head_timeout_s: float, max_connections: int) -> type[GuardedH11]:
    return type("LoomH11", (GuardedH11,), {"head_timeout_s": float(head_timeout_s),
                                           "max_connections": int(max_connections)})


# -- logging -----------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"((?:[?&;]|%3[fF]|%26)(?:token|access_token|loom_token)=)[^&\s\"';]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replace the value of ``token=`` (query strings, URLs) with ``[redacted]`` in a record's message and in
    each of its string arguments, keeping the arguments' shape (uvicorn's access formatter unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token" in record.msg.lower():
            record.msg = _redact(record.msg)
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token" in a.lower() for a in args):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict) and any(isinstance(a, str) and "token" in a.lower() for a in args.values()):
            record.args = {k: _redact(a) if isinstance(a, str) else a for k, a in args.items()}
        return True


def _redact(text: str) -> str:
    return _TOKEN.sub(r"\1[redacted]", text)


class RepeatFilter(logging.Filter):
    """Let ``burst`` identical lines (same logger, level, message template and exception type) through per
    ``window_s``; drop the rest and report the count on the next line let through."""

    def __init__(self, burst: int = 5, window_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._seen: dict[tuple, list] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        key = (record.name, record.levelno, str(record.msg)[:500], exc)
        now = self.clock()
        st = self._seen.get(key)
        if st is None or now - st[0] >= self.window_s:
            dropped = st[2] if st else 0
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.getMessage()} [{dropped} identical lines dropped in the last " \
                             f"{self.window_s:.0f} s]"
                record.args = None
            return True
        st[1] += 1
        if st[1] <= self.burst:
            return True
        st[2] += 1
        return False


_INSTALLED: dict[int, logging.Filter] = {}


def install_log_filters(handlers: bool = False) -> None:
    """Token redaction on uvicorn's loggers (where access and websocket lines are made); with ``handlers``,
    also redaction and repeat limiting on every handler of the root, uvicorn and asyncio loggers, so lines
    from any logger that reach them are covered (``loom serve`` does this once logging is configured;
    tests leave their capture handlers alone). Idempotent."""
    redact = _INSTALLED.setdefault(0, RedactTokens())
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        lg = logging.getLogger(name)
        if redact not in lg.filters:
            lg.addFilter(redact)
    if not handlers:
        return
    repeat = _INSTALLED.setdefault(1, RepeatFilter())
    for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error", "asyncio"):
        for h in logging.getLogger(name).handlers:
            if redact not in h.filters:
                h.addFilter(redact)
            if repeat not in h.filters:
                h.addFilter(repeat)


def uvicorn_config(app, config, **kw: Any):
    """A ``uvicorn.Config`` for ``app`` with Loom's limits (``config``: service.config.Config)."""
    import uvicorn

    kw.setdefault("ws", "websockets-sansio")
    kw.setdefault("ws_max_size", 1 << 20)
    max_conn = config.max_connections or default_max_connections()
    c = uvicorn.Config(app, http=protocol_class(config.head_timeout_s, max_conn), **kw)
    install_log_filters()  # after uvicorn configured its loggers
    return c
