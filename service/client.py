"""A plain Python client for a Loom (or ComfyUI) server: HTTP calls and one prompt followed on the
websocket. No printing, no exit codes (``loom run --server URL`` in cli.py does those).

    c = LoomClient("http://127.0.0.1:8188")
    entry = c.run(prompt, on_event=print)      # submit, follow the websocket, return the history entry
    png = c.view(entry["outputs"]["9"]["images"][0])

The websocket is opened (with our clientId) before the prompt is submitted, so no event is missed;
if it drops, the client reconnects with the same clientId and fills the gap from
``GET /prompt/{id}/events?after=seq``. A token comes from the URL (``?token=``) or ``LOOM_TOKEN``.
"""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

class PromptRejected(Exception):
    """The server refused the prompt (HTTP 400): ``body`` is ComfyUI's {error, node_errors}."""

    def __init__(self, body: Any):
        self.body = body
        err = body.get("error") if isinstance(body, dict) else body
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        details = err.get("details", "") if isinstance(err, dict) else ""
        super().__init__(f"{msg}: {details}" if details else msg)


class LoomClient:
    def __init__(self, url: str, token: str | None = None, client_id: str | None = None, timeout: float = 60.0):
        parts = urlsplit(url if "://" in url else "http://" + url)
        q = dict(parse_qsl(parts.query))
        self.token = token or q.pop("token", None) or os.environ.get("LOOM_TOKEN")
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.client_id = client_id or uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.base, timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plain HTTP --------------------------------------------------------------------------------
    def submit(self, prompt: dict, extra_data: dict | None = None, targets: list[str] | None = None,
               front: bool = False) -> dict:
        body: dict = {"prompt": prompt, "client_id": self.client_id, "extra_data": extra_data or {}}
        if targets:
            body["partial_execution_targets"] = targets
        if front:
            body["front"] = True
        r = self.http.post("/prompt", json=body)
        if r.status_code == 400:
            raise PromptRejected(r.json())
        r.raise_for_status()
        return r.json()

    def history(self, prompt_id: str) -> dict | None:
        return self.http.get(f"/history/{prompt_id}").json().get(prompt_id)

    def queue(self) -> dict:
        return self.http.get("/queue").json()

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.http.post("/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def events(self, prompt_id: str, after: int = -1) -> dict:
        return self.http.get(f"/prompt/{prompt_id}/events", params={"after": after}).json()

    def view(self, image: dict) -> bytes:
        r = self.http.get("/view", params={"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                           "type": image.get("type", "output")})
        r.raise_for_status()
        return r.content

    def upload_image(self, path: str, subfolder: str = "", overwrite: bool = False) -> dict:
        with open(path, "rb") as f:
            r = self.http.post("/upload/image", files={"image": (os.path.basename(path), f)},
                               data={"subfolder": subfolder, "overwrite": "true" if overwrite else "false"})
        r.raise_for_status()
        return r.json()

    # -- websocket ---------------------------------------------------------------------------------
    def _ws_url(self) -> str:
        p = urlsplit(self.base)
        q = {"clientId": self.client_id}
        if self.token:
            q["token"] = self.token
        return urlunsplit(("wss" if p.scheme == "https" else "ws", p.netloc, p.path + "/ws", urlencode(q), ""))

    def run(self, prompt: dict, on_event: Callable[[dict], None] | None = None, extra_data: dict | None = None,
            targets: list[str] | None = None, on_submit: Callable[[dict], None] | None = None) -> dict:
        """Submit and follow one prompt to its end; returns its history entry (with ``prompt_id``).
        ``on_event`` gets every websocket message of the prompt; ``on_submit`` the POST /prompt answer
        (``prompt_id``, ``number``, ``node_errors`` of outputs that will not run)."""
        return asyncio.run(self._run(prompt, on_event or (lambda m: None), extra_data, targets,
                                     on_submit or (lambda r: None)))

    async def _run(self, prompt, on_event, extra_data, targets, on_submit) -> dict:
        import websockets

        ws = await websockets.connect(self._ws_url(), max_size=None)
        pid = None
        try:
            await ws.recv()  # status with our sid
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(None, lambda: self.submit(prompt, extra_data, targets))
            pid = res["prompt_id"]
            on_submit(res)
            last_seq = -1
            while True:
                try:
                    raw = await ws.recv()
                except websockets.ConnectionClosed:
                    ws = await websockets.connect(self._ws_url(), max_size=None)
                    await ws.recv()
                    missed = await loop.run_in_executor(None, self.events, pid, last_seq)
                    for e in missed.get("events", []):
                        last_seq = max(last_seq, e["seq"])
                        on_event({"type": e["type"], "data": e["data"], "seq": e["seq"]})
                    if missed.get("done"):
                        break
                    continue
                if isinstance(raw, bytes):
                    continue  # preview frames
                m = json.loads(raw)
                d = m.get("data") or {}
                if d.get("prompt_id") not in (None, pid):
                    continue
                if "seq" in m:
                    if m["seq"] <= last_seq:
                        continue
                    last_seq = m["seq"]
                on_event(m)
                if m.get("type") == "executing" and d.get("node") is None and d.get("prompt_id") == pid:
                    break
        except (KeyboardInterrupt, asyncio.CancelledError):
            if pid is not None:
                self.interrupt(pid)
            raise
        finally:
            await ws.close()
        entry = await asyncio.get_running_loop().run_in_executor(None, self.history, pid) or {}
        return {"prompt_id": pid, **entry}
