"""Websocket clients and event delivery (runs on the event loop only).

Targeting follows ComfyUI: ``status`` goes to everyone; execution events go to the socket whose
sid is the prompt's ``client_id`` (and are not sent when there is none); ``progress``,
``progress_state``, previews and ``execution_interrupted`` are broadcast when there is no
client_id (the end marker ``executing {node: null}`` is then broadcast too, as ComfyUI's worker
does). Loom additions: every prompt message carries a per-prompt ``seq`` (top level, beside
``type`` and ``data``) and is kept in a bounded replay buffer (GET /prompt/{id}/events?after=N);
``progress_state`` carries only the node that changed (the frontend replaces its map with what it
receives, so the running node still shows its progress while traffic stays linear in the graph);
``?format=msgpack`` switches a socket to msgpack binary frames; Loom's ``node_done`` and ``warning`` events go
only to sockets that ask for them (``?events=loom`` or feature flag ``loom_events``).
"""
from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections import OrderedDict

import msgpack

# ComfyUI sends ``json.dumps(message)``: ASCII-escaped, with ", " and ": " separators. Clients match
# message prefixes such as '{"type": "progress_state"', so the byte form is part of the protocol.
_enc = json.JSONEncoder().encode

BROADCAST_IF_NO_CLIENT = frozenset({"progress", "progress_state", "execution_interrupted"})
LOOM_ONLY = frozenset({"node_done", "warning"})
SERVER_FLAGS = {"supports_preview_metadata": True}


class Client:
    __slots__ = ("ws", "sid", "msgpack", "loom", "flags", "queue", "task", "closed", "sent_bytes", "_first")

    def __init__(self, ws, sid: str, fmt_msgpack: bool, loom: bool):
        self.ws = ws
        self.sid = sid
        self.msgpack = fmt_msgpack
        self.loom = loom
        self.flags: dict = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.closed = False
        self.sent_bytes = 0
        self._first = True

    @property
    def wants_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


class Message:
    """One logical message, encoded at most once per wire format and shared by every recipient."""

    __slots__ = ("obj", "_json", "_mp")

    def __init__(self, obj: dict):
        self.obj = obj
        self._json: str | None = None
        self._mp: bytes | None = None

    def for_client(self, c: Client) -> str | bytes:
        if c.msgpack:
            if self._mp is None:
                self._mp = msgpack.packb(self.obj, use_bin_type=True, default=str)
            return self._mp
        if self._json is None:
            self._json = _enc(self.obj)
        return self._json


class RunState:
    """What a reconnecting client needs about the running prompt."""

    __slots__ = ("prompt_id", "client_id", "last_node", "node_state", "seq")

    def __init__(self, prompt_id: str, client_id: str | None):
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.last_node: str | None = None
        self.node_state: dict | None = None
        self.seq = 0


class Hub:
    def __init__(self, *, queue_limit: int = 200_000, replay_prompts: int = 32, replay_events: int = 200_000,
                 max_upload: int = 100 * 1024 * 1024):
        self.clients: dict[str, Client] = {}
        self.queue_limit = queue_limit
        self.replay_prompts = replay_prompts
        self.replay_events = replay_events
        self.replay: OrderedDict[str, list] = OrderedDict()  # prompt_id -> [[seq, type, data], ...]
        self.replay_total = 0  # events held over all prompts; bounded by replay_events
        self.finished: set[str] = set()
        self.runs: dict[str, RunState] = {}
        self.current: RunState | None = None
        self.flags = {**SERVER_FLAGS, "max_upload_size": max_upload}
        self.remaining = 0

    # -- connections -----------------------------------------------------------------------------
    async def serve(self, ws, sid: str | None, fmt_msgpack: bool = False, loom: bool = False) -> None:
        sid = sid if sid and len(sid) <= 128 else uuid.uuid4().hex
        c = Client(ws, sid, fmt_msgpack, loom)
        self.clients[sid] = c  # a reconnect replaces the previous socket of this sid
        c.task = asyncio.create_task(self._writer(c))
        self._put(c, Message({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.remaining}},
                                                         "sid": sid}}))
        for run in list(self.runs.values()):  # several run at once on a worker pool
            if run.client_id != sid or run.last_node is None:
                continue
            self._put(c, Message({"type": "executing", "data": {"node": run.last_node,
                                                                "display_node": run.last_node}}))
            if run.node_state is not None:
                self._put(c, Message({"type": "progress_state", "seq": run.seq,
                                      "data": {"prompt_id": run.prompt_id, "nodes": {run.last_node: run.node_state}}}))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text is None and msg.get("bytes") is not None and c.msgpack:
                    try:
                        obj = msgpack.unpackb(msg["bytes"], raw=False)
                    except Exception:
                        obj = None
                else:
                    try:
                        obj = json.loads(text) if text and len(text) < 65536 else None
                    except (ValueError, RecursionError):  # 30,000 nested arrays fit in 64 KiB
                        obj = None
                first, c._first = c._first, False
                if first and isinstance(obj, dict) and obj.get("type") == "feature_flags" \
                        and isinstance(obj.get("data"), dict):
                    c.flags = obj["data"]
                    c.loom = c.loom or bool(c.flags.get("loom_events"))
                    self._put(c, Message({"type": "feature_flags", "data": self.flags}))
        finally:
            c.closed = True
            if self.clients.get(sid) is c:
                del self.clients[sid]
            c.task.cancel()

    async def _writer(self, c: Client) -> None:
        ws = c.ws
        try:
            while True:
                payload = await c.queue.get()
                if isinstance(payload, str):
                    await ws.send_text(payload)
                else:
                    await ws.send_bytes(payload)
                c.sent_bytes += len(payload)
        except asyncio.CancelledError:
            pass
        except Exception:
            c.closed = True

    def _put(self, c: Client, m: Message | bytes) -> None:
        if c.closed:
            return
        if c.queue.qsize() >= self.queue_limit:  # a client that cannot keep up is dropped, never waited for
            c.closed = True
            asyncio.ensure_future(_close(c.ws, 1013))
            return
        c.queue.put_nowait(m if isinstance(m, bytes) else m.for_client(c))

    # -- status ----------------------------------------------------------------------------------
    def status(self, remaining: int) -> None:
        self.remaining = remaining
        m = Message({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}})
        for c in list(self.clients.values()):
            self._put(c, m)

    # -- prompt events ---------------------------------------------------------------------------
    def begin(self, prompt_id: str, client_id: str | None) -> None:
        run = RunState(prompt_id, client_id)
        self.runs[prompt_id] = run
        self.current = run
        self.finished.discard(prompt_id)
        self.replay[prompt_id] = []
        self._evict(keep=prompt_id)

    def _evict(self, keep: str) -> None:
        """Drop the oldest replay buffers beyond the prompt count or the total event budget."""
        while len(self.replay) > 1 and (len(self.replay) > self.replay_prompts or self.replay_total > self.replay_events):
            old = next(iter(self.replay))
            if old == keep:
                break
            self.replay_total -= len(self.replay.pop(old))
            self.finished.discard(old)

    def end(self, prompt_id: str) -> None:
        """The prompt finished (history written): send ``executing {node: null}`` and forget its run state."""
        self.event(prompt_id, "executing", {"node": None, "prompt_id": prompt_id})
        self.runs.pop(prompt_id, None)
        if self.current is not None and self.current.prompt_id == prompt_id:
            self.current = None
        self.finished.add(prompt_id)

    def event(self, prompt_id: str, type: str, data: dict) -> None:
        """Translate one engine event into websocket messages (synthesizing progress_state)."""
        run = self.runs.get(prompt_id)
        if run is None:
            run = self.runs[prompt_id] = RunState(prompt_id, None)
        if type == "executing":
            node = data.get("node")
            if node is not None:
                run.last_node = node
                self._state(run, node, 0, 1, "running")
            self._send(run, type, data)
        elif type == "progress":
            self._send(run, type, data)
            self._state(run, data["node"], data["value"], data["max"], "running")
        elif type == "node_done":
            self._send(run, type, data)
            self._state(run, data["node"], 1, 1, "finished")
        elif type == "executed":
            self._send(run, type, data)
            if run.last_node != data.get("node"):  # a cached output node: it finished without running
                self._state(run, data["node"], 1, 1, "finished")
        elif type == "execution_error" and data.get("node_id"):
            self._state(run, data["node_id"], 0, 1, "error")
            self._send(run, type, data)
        else:
            self._send(run, type, data)

    def _state(self, run: RunState, node: str, value, mx, state: str) -> None:
        st = {"value": value, "max": mx, "state": state, "node_id": node, "prompt_id": run.prompt_id,
              "display_node_id": node, "parent_node_id": None, "real_node_id": node}
        run.node_state = st if state == "running" else None
        self._send(run, "progress_state", {"prompt_id": run.prompt_id, "nodes": {node: st}})

    def _send(self, run: RunState, type: str, data: dict) -> None:
        seq = run.seq
        run.seq += 1
        buf = self.replay.get(run.prompt_id)
        if buf is not None and len(buf) < self.replay_events:
            buf.append([seq, type, data])
            self.replay_total += 1
            if self.replay_total > self.replay_events and len(self.replay) > 1:
                self._evict(keep=run.prompt_id)
        m = Message({"type": type, "data": data, "seq": seq})
        cid = run.client_id
        if type in LOOM_ONLY:
            c = self.clients.get(cid) if cid else None
            if c is not None and c.loom:
                self._put(c, m)
            return
        if cid:
            c = self.clients.get(cid)
            if c is not None:
                self._put(c, m)
        elif type in BROADCAST_IF_NO_CLIENT or (type == "executing" and data.get("node") is None):
            for c in list(self.clients.values()):
                self._put(c, m)

    def preview(self, prompt_id: str, node: str, jpeg: bytes) -> None:
        """A binary preview: type 4 with metadata for clients that support it, else type 1 (JPEG)."""
        run = self.runs.get(prompt_id)
        if run is None:
            return
        cid = run.client_id
        targets = [self.clients[cid]] if cid and cid in self.clients else ([] if cid else list(self.clients.values()))
        legacy = meta_frame = None
        for c in targets:
            if c.msgpack:
                self._put(c, msgpack.packb({"type": "preview", "data": {"prompt_id": prompt_id, "node_id": node,
                                                                        "image_type": "image/jpeg", "image": jpeg}}))
            elif c.wants_metadata:
                if meta_frame is None:
                    meta = _enc({"node_id": node, "display_node_id": node, "parent_node_id": None,
                                 "real_node_id": node, "prompt_id": prompt_id, "image_type": "image/jpeg"}).encode()
                    meta_frame = struct.pack(">II", 4, len(meta)) + meta + jpeg
                self._put(c, meta_frame)
            else:
                if legacy is None:
                    legacy = struct.pack(">II", 1, 1) + jpeg
                self._put(c, legacy)

    def events_after(self, prompt_id: str, after: int) -> tuple[list, bool] | None:
        buf = self.replay.get(prompt_id)
        if buf is None:
            return None
        # seq values are dense from 0, so the index is the seq (unless the buffer overflowed)
        start = max(0, after + 1)
        out = buf[start:] if start < len(buf) and buf[start][0] == start else [e for e in buf if e[0] > after]
        return out, prompt_id in self.finished

    async def close_all(self) -> None:
        for c in list(self.clients.values()):
            await _close(c.ws, 1001)


async def _close(ws, code: int) -> None:
    try:
        await ws.close(code)
    except Exception:
        pass
