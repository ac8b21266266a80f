"""Python client for a Loom (or ComfyUI) server, and ``run_remote`` behind ``loom run --server URL``.

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
import sys
import uuid
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


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
            targets: list[str] | None = None) -> dict:
        """Submit and follow one prompt to its end; returns its history entry (with ``prompt_id``)."""
        return asyncio.run(self._run(prompt, on_event or (lambda m: None), extra_data, targets))

    async def _run(self, prompt, on_event, extra_data, targets) -> dict:
        import websockets

        ws = await websockets.connect(self._ws_url(), max_size=None)
        pid = None
        try:
            await ws.recv()  # status with our sid
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(None, lambda: self.submit(prompt, extra_data, targets))
            pid = res["prompt_id"]
            if res.get("node_errors"):
                on_event({"type": "node_errors", "data": res["node_errors"]})
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


# -- loom run --server ------------------------------------------------------------------------------
def _load_prompt(path: str) -> tuple[dict, dict]:
    from engine.workflow import load

    registry = None
    try:
        from nodes import default_registry
        registry = default_registry()
    except Exception:
        pass
    wf = load(path, registry)
    return json.loads(json.dumps(wf.prompt)), dict(wf.extra_data)


class _Progress:
    def __init__(self, as_json: bool, stream=None):
        self.json = as_json
        self._stream = stream
        self.classes: dict[str, str] = {}

    def __call__(self, m: dict) -> None:
        t, d = m.get("type"), m.get("data") or {}
        if self.json:
            print(json.dumps({"type": t, "data": d}, default=str), flush=True)
            return
        s = self._stream or sys.stderr
        if t == "executing" and d.get("node") is not None:
            print(f"  node {d['node']} ({self.classes.get(d['node'], '?')})", file=s, flush=True)
        elif t == "progress":
            print(f"\r    step {d['value']}/{d['max']}", end="\n" if d["value"] == d["max"] else "", file=s, flush=True)
        elif t == "execution_cached" and d.get("nodes"):
            print(f"  cached: {', '.join(map(str, d['nodes']))}", file=s)
        elif t == "executed":
            for img in (d.get("output") or {}).get("images") or ():
                print(f"  output: {img.get('subfolder') + '/' if img.get('subfolder') else ''}{img['filename']} "
                      f"[{img.get('type', 'output')}]", file=s)
        elif t == "execution_error":
            print(f"  error in node {d.get('node_id')} ({d.get('node_type')}): "
                  f"{d.get('exception_type')}: {str(d.get('exception_message', '')).strip()}", file=s)
        elif t == "execution_interrupted":
            print("  interrupted", file=s)
        elif t == "node_errors":
            for nid, e in d.items():
                for err in e.get("errors", []):
                    print(f"  skipped output {nid}: {err.get('message')}: {err.get('details')}", file=s)


def run_remote(url: str, workflow_paths: list[str], sets: list[str] | None = None, as_json: bool = False,
               token: str | None = None) -> int:
    """Submit each workflow to a running server in turn and show progress; returns an exit code
    (0 ok, 1 a node failed, 2 invalid workflow or unreachable server, 130 interrupted)."""
    from cli import parse_sets
    from engine.errors import WorkflowError

    try:
        parsed_sets = parse_sets(sets)
    except ValueError as e:
        print(f"loom run: {e}", file=sys.stderr)
        return EXIT_INVALID
    worst = EXIT_OK
    try:
        client = LoomClient(url, token=token)
    except Exception as e:
        print(f"loom run: bad server URL {url!r}: {e}", file=sys.stderr)
        return EXIT_INVALID
    with client:
        for path in workflow_paths:
            try:
                prompt, extra = _load_prompt(path)
            except WorkflowError as e:
                print(f"{path}: {e}", file=sys.stderr)
                worst = max(worst, EXIT_INVALID)
                continue
            for nid, name, value in parsed_sets:
                node = prompt.get(nid)
                if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
                    node["inputs"][name] = value
            show = _Progress(as_json)
            show.classes = {k: v.get("class_type", "?") for k, v in prompt.items() if isinstance(v, dict)}
            if not as_json:
                print(f"{path}:", file=sys.stderr)
            try:
                entry = client.run(prompt, on_event=show, extra_data=extra)
            except PromptRejected as e:
                if as_json:
                    print(json.dumps({"type": "rejected", "data": e.body}), flush=True)
                else:
                    print(f"  rejected: {e}", file=sys.stderr)
                    for nid, ne in (e.body.get("node_errors") or {}).items():
                        for err in ne.get("errors", []):
                            print(f"    node {nid}: {err.get('message')}: {err.get('details')}", file=sys.stderr)
                worst = max(worst, EXIT_INVALID)
                continue
            except KeyboardInterrupt:
                print("  interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            except (httpx.HTTPError, OSError) as e:
                print(f"loom run: cannot reach {client.base}: {e}", file=sys.stderr)
                return EXIT_INVALID
            status = (entry.get("status") or {})
            msgs = [m[0] for m in status.get("messages") or ()]
            if status.get("completed"):
                code = EXIT_OK
            elif "execution_interrupted" in msgs:
                code = EXIT_INTERRUPTED
            else:
                code = EXIT_FAILED
            if as_json:
                print(json.dumps({"type": "result", "data": {"prompt_id": entry.get("prompt_id"),
                                                             "status": status.get("status_str"),
                                                             "outputs": entry.get("outputs")}}), flush=True)
            worst = max(worst, code) if code != EXIT_INTERRUPTED else EXIT_INTERRUPTED
            if code == EXIT_INTERRUPTED:
                return code
    return worst
