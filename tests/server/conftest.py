"""A real Loom server on a loopback port (uvicorn in a thread), driven by httpx and websockets."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from . import stubs


class LiveServer:
    def __init__(self, tmp: Path, registry=None, start_timeout: float = 20.0, **cfg):
        import uvicorn

        from server import create_app
        from service.config import Config

        self.config = Config(base_dir=tmp, **cfg)
        self.app = create_app(self.config, registry=registry or stubs.registry())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        from service.serving import uvicorn_config

        self.server = uvicorn.Server(uvicorn_config(self.app, self.config, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > self.start_timeout or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    @property
    def svc(self):
        return self.app.state.svc

    def client(self, **kw):
        import httpx

        return httpx.Client(base_url=self.url, timeout=20, **kw)


@pytest.fixture
def live(tmp_path):
    with LiveServer(tmp_path) as s:
        yield s


@pytest.fixture
def make_server(tmp_path):
    started = []

    def make(**cfg):
        s = LiveServer(cfg.pop("base", tmp_path), **cfg).__enter__()
        started.append(s)
        return s

    yield make
    for s in started:
        s.__exit__(None, None, None)


def run(coro):
    return asyncio.run(coro)


async def collect(ws, until, timeout=20.0):
    """Receive messages until ``until(msg)`` is true; returns (json messages, binary frames)."""
    msgs, bins = [], []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"waited {timeout}s; got {[m['type'] for m in msgs][-20:]}")
        raw = await asyncio.wait_for(ws.recv(), left)
        if isinstance(raw, bytes):
            bins.append(raw)
            continue
        m = json.loads(raw)
        msgs.append(m)
        if until(m):
            return msgs, bins


def done_for(pid):
    return lambda m: m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid


IMAGE_WF = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0x112233}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
}
