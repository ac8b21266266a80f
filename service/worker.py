"""The one engine worker thread: takes prompts from the durable queue, runs them, writes history.

Events cross to the event loop in batches: the worker appends to a deque and schedules one
``loop.call_soon_threadsafe`` flush per batch, so a 10,000-node prompt costs the loop a few
wake-ups, not tens of thousands. Previews are throttled per prompt and JPEG-encoded on a separate
thread with a one-slot mailbox (the newest frame wins), so they never slow the node that makes them.
"""
from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from collections import deque
from typing import Any

from engine.context import CancelToken
from engine.errors import WorkflowError
from engine.events import Event, now_ms

from .store import Item, Store

log = logging.getLogger("loom.server")


class PreviewEncoder:
    """Encodes preview images off the worker thread; drops frames it cannot keep up with."""

    def __init__(self, post, size: int = 512):
        self._post = post
        self._size = size
        self._slot: tuple | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._loop, name="loom-preview", daemon=True)
        self._t.start()

    def submit(self, prompt_id: str, node: str, image: Any) -> None:
        with self._cv:
            self._slot = (prompt_id, node, image)
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
                prompt_id, node, image = self._slot
                self._slot = None
            try:
                self._post(("preview", prompt_id, node, encode_preview(image, self._size)))
            except Exception:
                log.debug("preview encoding failed", exc_info=True)


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


class Worker:
    def __init__(self, executor, store: Store, hub, loop, *, preview_interval_s: float = 0.1,
                 preview_size: int = 512, preview_method: str = "none"):
        self.executor = executor
        self.store = store
        self.hub = hub
        self.loop = loop
        self.prepared: dict[str, Any] = {}  # prompt_id -> Validated, filled by POST /prompt
        self.preview_interval = preview_interval_s
        self.preview_method = preview_method  # the server's default when a prompt does not ask
        self._pending: deque = deque()
        self._plock = threading.Lock()
        self._scheduled = False
        self._wake = threading.Event()
        self._stop = False
        self._current: tuple[str, CancelToken] | None = None
        self._flags: dict[str, bool] = {}
        self._last_preview = 0.0
        self._encoder = PreviewEncoder(self._post, preview_size)
        self._thread = threading.Thread(target=self._main, name="loom-worker", daemon=True)

    # -- control (any thread) ----------------------------------------------------------------------
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

    def wake(self) -> None:
        self._wake.set()

    @property
    def running_id(self) -> str | None:
        cur = self._current
        return cur[0] if cur else None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        cur = self._current
        if cur is None or (prompt_id is not None and cur[0] != prompt_id):
            return False
        cur[1].cancel()
        return True

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        if unload_models:
            self._flags["unload_models"] = True
        if free_memory:
            self._flags["free_memory"] = True
        self._wake.set()

    # -- crossing to the loop ------------------------------------------------------------------------
    def _post(self, item: tuple) -> None:
        with self._plock:
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _flush(self) -> None:
        with self._plock:
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

    def _sink_for(self, prompt_id: str, previews: bool = True):
        post = self._post

        def sink(ev: Event) -> None:
            if previews and ev.preview is not None:
                t = time.monotonic()
                if t - self._last_preview >= self.preview_interval:
                    self._last_preview = t
                    try:
                        self._encoder.submit(prompt_id, ev.data.get("node"), ev.preview())
                    except Exception:
                        log.debug("preview callable failed", exc_info=True)
            post(("event", prompt_id, ev.type, ev.data))

        return sink

    # -- the thread --------------------------------------------------------------------------------
    def _main(self) -> None:
        while not self._stop:
            self._handle_flags()
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

    def _handle_flags(self) -> None:
        flags, self._flags = self._flags, {}
        if flags.get("free_memory"):
            self.executor.free()
        if flags.get("unload_models") or flags.get("free_memory"):
            env = self.executor.env
            if getattr(env, "has_model_store", False):
                try:
                    env.model_store().unload_all()
                except Exception:
                    log.exception("unloading models failed")

    def _run(self, item: Item) -> None:
        pid = item.id
        client_id = item.extra_data.get("client_id")
        cancel = CancelToken()
        self._current = (pid, cancel)
        self._post(("status", self.store.remaining()))
        self._post(("begin", pid, client_id))
        try:
            v = self.prepared.pop(pid, None)
            if v is None:  # queued before a restart: validate again
                v = self.executor.prepare(item.prompt, item.outputs_to_execute or None)
            previews = wants_previews(item.extra_data, self.preview_method)
            result = self.executor.run(v, prompt_id=pid, sink=self._sink_for(pid, previews), cancel=cancel,
                                       extra_data=item.extra_data)
            outcome = {"success": "success", "error": "error", "interrupted": "interrupted"}[result.status]
            entry = history_entry(result)
        except WorkflowError as e:  # it no longer validates (nodes changed across a restart)
            outcome, entry = "error", failure_entry(pid, "WorkflowError", str(e), [])
            self._post(("event", pid, "execution_error", entry["loom"]["error"]))
        except Exception as e:
            outcome, entry = "error", failure_entry(pid, type(e).__name__, str(e),
                                                    traceback.format_tb(e.__traceback__))
            self._post(("event", pid, "execution_error", entry["loom"]["error"]))
        finally:
            self._current = None
        self.store.finish(pid, outcome, entry)
        self._post(("status", self.store.remaining()))
        self._post(("end", pid))


PREVIEW_METHODS = ("auto", "latent2rgb", "taesd")


def wants_previews(extra_data: dict, server_default: str = "none") -> bool:
    """ComfyUI's rule: live previews only when asked. A prompt asks with ``extra_data.preview_method``
    (the editor sends it when its setting is not "default"); otherwise the server's ``--preview-method``
    decides, and its default is none — so API clients get the saved images, not JPEG frames."""
    m = extra_data.get("preview_method")
    if m is None or m == "default":
        m = server_default
    return m in PREVIEW_METHODS


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


def failure_entry(pid: str, etype: str, message: str, tb: list) -> dict:
    err = {"prompt_id": pid, "node_id": None, "node_type": None, "executed": [], "exception_message": message + "\n",
           "exception_type": etype, "traceback": tb, "current_inputs": {}, "current_outputs": [],
           "timestamp": now_ms()}
    return {"outputs": {}, "meta": {}, "status": {"status_str": "error", "completed": False,
                                                   "messages": [["execution_error", err]]},
            "loom": {"nodes": {}, "error": err, "node_errors": {}, "warnings": []}}
