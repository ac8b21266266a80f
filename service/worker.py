"""The in-process worker: one engine thread that takes prompts from the durable queue, runs them and
writes history.

Its API is the one every worker pool implements (``service.ray_pool.RayPool`` too), and the only way the
routes reach a worker:

- ``submit(prompt_id, validated)``: a prompt just added to the store, with its validation (so it is not
  validated twice); wakes the worker.
- ``forget(prompt_ids)``: pending prompts deleted from the queue (``None``: all of them).
- ``interrupt(prompt_id=None) -> bool``, ``free(unload_models, free_memory)``: commands. ``free`` goes
  through a command queue that the worker thread drains between prompts, so no request is lost.
- ``workers() -> list[dict]``: what ``GET /api/loom/workers`` lists; ``start()``, ``stop()``.

Events cross to the event loop in batches (``LoopBridge``): the worker appends to a deque and schedules
one ``loop.call_soon_threadsafe`` flush per batch, so a 10,000-node prompt costs the loop a few wake-ups,
not tens of thousands. Previews are throttled per prompt; the preview callable (latent -> image) is
evaluated and JPEG-encoded on a separate thread with a one-slot mailbox (the newest frame wins), so
previews never slow the node that makes them.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from engine.context import CancelToken
from engine.errors import execution_error
from engine.events import Event

from .store import Item, Store

log = logging.getLogger("loom.server")


class LoopBridge:
    """The batched hand-off from worker threads to the hub on the event loop (thread-safe ``post``).

    Items: ("event", prompt_id, type, data), ("preview", prompt_id, node, jpeg), ("status", remaining),
    ("begin", prompt_id, client_id), ("end", prompt_id)."""

    def __init__(self, loop, hub):
        self.loop = loop
        self.hub = hub
        self._pending: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, item: tuple) -> None:
        with self._lock:
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _flush(self) -> None:
        with self._lock:
            items, self._pending = self._pending, deque()
            self._scheduled = False
        hub = self.hub
        for it in items:
            kind = it[0]
            try:
                if kind == "event":
                    hub.event(it[1], it[2], it[3])
                elif kind == "preview":
                    hub.preview(it[1], it[2], it[3])
                elif kind == "status":
                    hub.status(it[1])
                elif kind == "begin":
                    hub.begin(it[1], it[2])
                elif kind == "end":
                    hub.end(it[1])
            except Exception:
                log.exception("delivering %s failed", kind)


def cancel_running(current: tuple[str, CancelToken] | None, prompt_id: str | None) -> bool:
    """Cancels the running prompt ``current`` = (id, token) if there is one and it is ``prompt_id`` (None: any);
    True when something was cancelled. Shared by the in-process worker and the Ray actors."""
    if current is None or (prompt_id is not None and current[0] != prompt_id):
        return False
    current[1].cancel()
    return True


class PreviewEncoder:
    """Evaluates preview callables and encodes JPEGs off the sampling thread; drops frames it cannot keep up
    with (one slot, newest wins). ``post`` receives ("preview", prompt_id, node, jpeg)."""

    def __init__(self, post: Callable[[tuple], None], size: int = 512):
        self._post = post
        self._size = size
        self._slot: tuple | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._loop, name="loom-preview", daemon=True)
        self._t.start()

    def submit(self, prompt_id: str, node: str | None, make_image: Callable[[], Any]) -> None:
        with self._cv:
            self._slot = (prompt_id, node, make_image)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._slot is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                prompt_id, node, make_image = self._slot
                self._slot = None
            try:
                self._post(("preview", prompt_id, node, encode_preview(make_image(), self._size)))
            except Exception:
                log.debug("preview failed", exc_info=True)


def encode_preview(image: Any, size: int) -> bytes:
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        raise TypeError("preview must be a PIL image")
    img = image.convert("RGB")
    if img.size != (size, size) and max(img.size) != size:
        img = ImageOps.contain(img, (size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def event_sink(prompt_id: str, post: Callable[[tuple], None], encoder: PreviewEncoder | None,
               interval_s: float) -> Callable[[Event], None]:
    """The executor's sink for one prompt: events go to ``post``; at most one preview per ``interval_s`` goes
    to ``encoder`` (None: no previews), unevaluated."""
    last = [0.0]

    def sink(ev: Event) -> None:
        if encoder is not None and ev.preview is not None:
            t = time.monotonic()
            if t - last[0] >= interval_s:
                last[0] = t
                encoder.submit(prompt_id, ev.data.get("node"), ev.preview)
        post(("event", prompt_id, ev.type, ev.data))

    return sink


def run_prompt(executor, item: Item, validated, sink, cancel: CancelToken) -> tuple[str, dict]:
    """Run one queued prompt on ``executor``: (outcome, history entry). Never raises for a prompt's own
    failure; a failure outside the executor becomes an ``execution_error`` event and entry."""
    pid = item.id
    try:
        v = validated
        if v is None:  # queued before a restart, or run by a pool worker: validate here
            v = executor.prepare(item.prompt, item.outputs_to_execute or None)
        result = executor.run(v, prompt_id=pid, sink=sink, cancel=cancel, extra_data=item.extra_data)
        outcome = {"success": "success", "error": "error", "interrupted": "interrupted"}[result.status]
        return outcome, history_entry(result)
    except Exception as e:  # e.g. a WorkflowError: it no longer validates (nodes changed across a restart)
        entry = failure_entry(execution_error(pid, e))
    sink(Event("execution_error", entry["loom"]["error"]))
    return "error", entry


PREVIEW_METHODS = ("auto", "latent2rgb", "taesd")


def wants_previews(extra_data: dict, server_default: str = "none") -> bool:
    """ComfyUI's rule: live previews only when asked. A prompt asks with ``extra_data.preview_method``
    (the editor sends it when its setting is not "default"); otherwise the server's ``--preview-method``
    decides, and its default is none, so API clients get the saved images, not JPEG frames."""
    m = extra_data.get("preview_method")
    if m is None or m == "default":
        m = server_default
    return m in PREVIEW_METHODS


def free_models(executor, unload_models: bool, free_memory: bool) -> None:
    """What POST /free asks of one worker: drop the output cache and/or unload its models."""
    if free_memory:
        executor.free()
    if unload_models or free_memory:
        env = executor.env
        if getattr(env, "has_model_store", False):
            try:
                env.model_store().unload_all()
            except Exception:
                log.exception("unloading models failed")


def resident_models(executor) -> list[str]:
    """Names of the models this worker's store holds (none before it has one)."""
    env = executor.env
    if not getattr(env, "has_model_store", False):
        return []
    root = os.path.realpath(env.models_dir)
    try:
        paths = {os.path.realpath(k.file.path) for k, _where, _n in env.model_store().loaded()}
    except Exception:
        return []
    return sorted(os.path.relpath(p, root) if p.startswith(root + os.sep) else p for p in paths)


class Worker:
    """The in-process worker (see the module docstring for its API)."""

    def __init__(self, executor, store: Store, hub, loop, *, preview_interval_s: float = 0.1,
                 preview_size: int = 512, preview_method: str = "none"):
        self.executor = executor
        self.store = store
        self.hub = hub
        self.preview_interval = preview_interval_s
        self.preview_method = preview_method  # the server's default when a prompt does not ask
        self.bridge = LoopBridge(loop, hub)
        self._prepared: dict[str, Any] = {}  # prompt_id -> Validated, from POST /prompt
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self._current: tuple[str, CancelToken] | None = None
        self._done = 0
        self._last_error: str | None = None
        self._encoder = PreviewEncoder(self.bridge.post, preview_size)
        self._thread = threading.Thread(target=self._main, name="loom-worker", daemon=True)

    # -- the API (any thread) ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        cur = self._current
        if cur is not None:
            cur[1].cancel()
        self._wake.set()
        self._thread.join(timeout)
        self._encoder.stop()

    def submit(self, prompt_id: str, validated: Any = None) -> None:
        """A prompt was added to the store; ``validated`` spares validating it again."""
        if validated is not None:
            with self._lock:
                self._prepared[prompt_id] = validated
        self._wake.set()

    def forget(self, prompt_ids: Iterable[str] | None = None) -> None:
        """Pending prompts were deleted from the queue (``None``: all)."""
        with self._lock:
            if prompt_ids is None:
                self._prepared.clear()
            else:
                for pid in prompt_ids:
                    self._prepared.pop(pid, None)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        return cancel_running(self._current, prompt_id)

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        if unload_models or free_memory:
            self._commands.put(("free", bool(unload_models), bool(free_memory)))
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running_id(self) -> str | None:
        cur = self._current
        return cur[0] if cur else None

    def workers(self) -> list[dict]:
        from .devices import local_devices

        return [{"id": "local", "node": socket.gethostname(), "pid": os.getpid(), "alive": True,
                 "devices": local_devices(), "resident_models": resident_models(self.executor),
                 "busy_prompt": self.running_id, "prompts_done": self._done, "last_error": self._last_error}]

    # -- the thread --------------------------------------------------------------------------------
    def _main(self) -> None:
        while not self._stop:
            self._drain_commands()
            try:
                item = self.store.take_next()
            except Exception:
                log.exception("queue read failed")
                item = None
            if item is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(item)
            except Exception:  # never let one prompt kill the worker
                log.exception("prompt %s failed outside the executor", item.id)

    def _drain_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "free":
                free_models(self.executor, cmd[1], cmd[2])

    def _run(self, item: Item) -> None:
        pid = item.id
        post = self.bridge.post
        cancel = CancelToken()
        with self._lock:
            v = self._prepared.pop(pid, None)
        self._current = (pid, cancel)
        post(("status", self.store.remaining()))
        post(("begin", pid, item.extra_data.get("client_id")))
        try:
            encoder = self._encoder if wants_previews(item.extra_data, self.preview_method) else None
            sink = event_sink(pid, post, encoder, self.preview_interval)
            outcome, entry = run_prompt(self.executor, item, v, sink, cancel)
        finally:
            self._current = None
        entry.setdefault("loom", {})["worker"] = "local"
        if outcome == "error":
            self._last_error = ((entry.get("loom") or {}).get("error") or {}).get("exception_message")
        self._done += 1
        self.store.finish(pid, outcome, entry)
        post(("status", self.store.remaining()))
        post(("end", pid))


def history_entry(result) -> dict:
    outputs = {nid: ui for nid, ui in result.outputs.items() if ui}
    meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid} for nid in outputs}
    ok = result.status == "success"
    return {
        "outputs": outputs,
        "meta": meta,
        "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": result.messages},
        "loom": {"nodes": {nid: {"class_type": r.class_type, "status": r.status, "reason": r.reason,
                                 "duration_ms": round(r.duration_ms, 3)} for nid, r in result.nodes.items()},
                 "error": result.error, "node_errors": result.node_errors, "warnings": list(result.warnings)},
    }


def failure_entry(err: dict) -> dict:
    """The history entry of a prompt that failed outside any node (``err``: ``errors.execution_error``)."""
    return {"outputs": {}, "meta": {}, "status": {"status_str": "error", "completed": False,
                                                   "messages": [["execution_error", err]]},
            "loom": {"nodes": {}, "error": err, "node_errors": {}, "warnings": []}}
