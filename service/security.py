"""Safe by default: Host and Origin checks, token auth, body-size limits (one ASGI middleware).

- Host: when bound to loopback, the Host header must name a loopback host (defeats DNS rebinding).
- Origin: a request or websocket upgrade that carries an Origin must come from this server's own
  origin (or one listed in ``allowed_origins``); ``Origin: null`` is refused, and so is a
  state-changing request marked ``Sec-Fetch-Site: cross-site``.
- Token: with a token configured, every request needs it as ``Authorization: Bearer``,
  ``X-Loom-Token``, the ``loom_token`` cookie or ``?token=``. Opening ``/?token=...`` in a browser
  sets the cookie (HttpOnly, SameSite=Strict) and redirects, so the frontend works unchanged.
- Body size: Content-Length above the limit is refused with 413 before the body is read; routes
  also count the bytes they read (service.http.read_body).
"""
from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from .config import is_loopback_host

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _split_host(value: str, default_port: int | None) -> tuple[str, int | None]:
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if not host:
            host, port = port, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return host, -1


def _origin_tuple(origin: str) -> tuple[str, str, int | None] | None:
    try:
        u = urlsplit(origin)
        if u.scheme not in ("http", "https") or not u.hostname:
            return None
        return u.scheme, u.hostname.lower(), u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return None


class Guard:
    def __init__(self, app, config):
        self.app = app
        self.config = config
        self.allowed = {t for t in (_origin_tuple(o) for o in config.allowed_origins) if t}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        problem = self.check(scope, headers)
        if problem is not None:
            return await self.refuse(scope, receive, send, *problem)
        if self.config.token and scope["type"] == "http" and scope.get("method") == "GET":
            # /?token=... in a browser: set the cookie and drop the token from the URL
            q = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in q and hmac.compare_digest(q["token"].encode(), self.config.token.encode()) \
                    and "text/html" in headers.get("accept", ""):
                rest = urlencode({k: v for k, v in q.items() if k != "token"})
                loc = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
                cookie = f"loom_token={self.config.token}; HttpOnly; SameSite=Strict; Path=/"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", loc.encode("latin-1")), (b"set-cookie", cookie.encode()),
                                        (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        return await self.app(scope, receive, send)

    def check(self, scope, headers) -> tuple[int, str] | None:
        cfg = self.config
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        host_hdr = headers.get("host", "")
        host, port = _split_host(host_hdr, 443 if scheme == "https" else 80)
        if cfg.loopback and not is_loopback_host(host):
            return 403, "Host header must name a loopback address on a loopback-bound server"
        origin = headers.get("origin")
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        if origin is not None:
            if origin.strip().lower() == "null":
                return 403, "requests from an opaque origin (Origin: null) are refused"
            o = _origin_tuple(origin)
            if o is None:
                return 403, "malformed Origin"
            same = o[0] == scheme and o[1] == host and o[2] == port
            if not same and o not in self.allowed:
                return 403, "cross-origin request refused"
        if method not in SAFE_METHODS and headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site request refused"
        if cfg.token and not self.authorized(scope, headers):
            return 401, "a token is required (Authorization: Bearer, X-Loom-Token, cookie, or ?token=)"
        if scope["type"] == "http":
            n = headers.get("content-length")
            if n is not None:
                try:
                    size = int(n)
                except ValueError:
                    return 400, "bad Content-Length"
                path = scope["path"]
                limit = cfg.max_upload_bytes + 65536 if ("/upload/" in path or "/userdata/" in path) \
                    else cfg.max_json_bytes
                if size > limit:
                    return 413, f"body larger than {limit} bytes"
        return None

    def authorized(self, scope, headers) -> bool:
        tok = self.config.token.encode()
        cands = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            cands.append(auth[7:].strip())
        if "x-loom-token" in headers:
            cands.append(headers["x-loom-token"])
        if "cookie" in headers:
            try:
                c = SimpleCookie(headers["cookie"])
                if "loom_token" in c:
                    cands.append(c["loom_token"].value)
            except Exception:
                pass
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if k == "token":
                cands.append(v)
        return any(hmac.compare_digest(c.encode(), tok) for c in cands)

    async def refuse(self, scope, receive, send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            # closing before accept makes the server answer the handshake with HTTP 403
            msg = await receive()
            if msg.get("type") == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
