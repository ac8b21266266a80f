"""Issue 9, connections and logs: slow request heads, the connection cap, repeated log lines, the budgets of
`loom serve`, tokens redacted from logs. Each test failed on the code before its fix."""
from __future__ import annotations

import time

import websockets

from .conftest import run


# -- 9. slow request heads, connection cap, repeated log lines ---------------------------------------------------
def _socket_closed_within(sock, seconds: float, trickle: bytes | None = None) -> bool:
    """True when the server closes ``sock`` within ``seconds`` (sending ``trickle`` every 0.2 s meanwhile)."""
    import socket

    sock.settimeout(0.2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_slow_request_heads_are_closed(make_server):
    """Item 9: a connection trickling header lines is closed once its head is late; so is an idle one, and an
    idle keep-alive connection after a response. A normal request is unaffected."""
    import socket

    srv = make_server(head_timeout_s=1.0)
    slow = socket.create_connection(("127.0.0.1", srv.port))
    slow.sendall(b"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    idle = socket.create_connection(("127.0.0.1", srv.port))
    assert _socket_closed_within(slow, 6.0, trickle=b"X-Slow: 1\r\n")
    assert _socket_closed_within(idle, 3.0)
    ka = socket.create_connection(("127.0.0.1", srv.port))
    ka.sendall(b"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    ka.settimeout(5)
    assert ka.recv(4096).startswith(b"HTTP/1.1 200")
    assert _socket_closed_within(ka, 4.0, trickle=b"X")  # the next head on a keep-alive connection is late too
    with srv.client() as c:
        assert c.get("/prompt").status_code == 200
    for s in (slow, idle, ka):
        s.close()


def test_connections_are_capped(make_server):
    """Item 9: beyond max_connections a new connection gets a 503 and is closed; slots free up again."""
    import socket

    srv = make_server(head_timeout_s=1.5, max_connections=8)
    held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", srv.port))
    extra.settimeout(5)
    assert extra.recv(4096).startswith(b"HTTP/1.1 503")
    time.sleep(2.5)  # the idle ones missed their head deadline and were closed
    with srv.client() as c:
        assert c.get("/prompt").status_code == 200
    for s in held + [extra]:
        s.close()


def test_identical_log_lines_are_rate_limited():
    """Item 9: 10,000 identical accept() tracebacks become a burst and one summary line per window."""
    import logging

    from service.serving import RepeatFilter

    now = [0.0]
    got = []

    class H(logging.Handler):
        def emit(self, record):
            got.append(self.format(record))

    h = H()
    h.addFilter(RepeatFilter(burst=5, window_s=60, clock=lambda: now[0]))
    lg = logging.getLogger("test.repeat")
    lg.addHandler(h)
    lg.propagate = False
    try:
        for i in range(10_000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                lg.error("socket.accept() out of system resource", exc_info=True)
        lg.error("another line")
        now[0] = 61.0
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            lg.error("socket.accept() out of system resource", exc_info=True)
    finally:
        lg.removeHandler(h)
    assert len(got) == 5 + 1 + 1
    assert "9995 identical lines dropped" in got[-1].splitlines()[0] and got[5].startswith("another line")


# -- 10. loom serve sets the cache and memory budgets --------------------------------------------------------
def test_serve_options_for_cache_and_memory_budgets(make_server):
    """Item 10: `loom serve --cache-mb` (was fixed at 2 GiB) and `--memory-mb`."""
    import server

    cfg = server.config_from_args(server.parse_args(["--cache-mb", "64", "--memory-mb", "512"]))
    assert cfg.cache_bytes == 64 << 20 and cfg.memory_budget_bytes == 512 << 20
    srv = make_server(cache_bytes=64 << 20, memory_budget_bytes=512 << 20)
    assert srv.svc.executor.cache.budget == 64 << 20
    assert srv.svc.executor.memory_budget == 512 << 20


# -- 12. the access token never reaches a log line ----------------------------------------------------------------
def test_token_is_redacted_from_logs(make_server, tmp_path):
    """Item 12: `?token=` appeared in uvicorn's access log (HTTP) and websocket lines."""
    import logging

    srv = make_server(token="s3cret-tok", base=tmp_path / "tok")
    lines = []

    from uvicorn.logging import AccessFormatter, DefaultFormatter

    fmts = {"uvicorn.access": AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'),
            "uvicorn.error": DefaultFormatter("%(message)s")}

    class H(logging.Handler):
        def emit(self, record):  # uvicorn's own formatters: the access one unpacks the record's arguments
            lines.append(fmts[record.name].format(record))

    h = H()
    loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(h)
    try:
        with srv.client() as c:
            assert c.get("/prompt", params={"token": "s3cret-tok", "x": "1"}).status_code == 200
            assert c.get("/prompt?a=1&token=s3cret-tok").status_code == 200

        async def ws():
            w = await websockets.connect(srv.ws_url + "?clientId=z&token=s3cret-tok")
            await w.recv()
            await w.close()
        run(ws())
        time.sleep(0.3)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.removeHandler(h)
            lg.setLevel(lv)
    assert lines and any("/prompt" in x for x in lines) and any("WebSocket" in x or "/ws" in x for x in lines)
    assert not [x for x in lines if "s3cret-tok" in x], lines
    assert any("token=[redacted]" in x for x in lines)
