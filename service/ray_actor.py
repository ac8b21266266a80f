"""One pool worker: a Ray actor holding its own executor (model store, output cache, device).

``RayPool`` wraps ``LoomActor`` with ``ray.remote`` (a threaded actor, so ``interrupt``, ``info`` and ``free``
answer while a prompt runs). ``run`` is a generator: Ray streams what it yields to the front door as it is
produced. Each yield is a batch (a list) of what became ready since the last one, so a fast node
costs one Ray object per batch, not per event:

- ``("event", prompt_id, type, data)``: an engine event, exactly as the in-process worker posts it;
- ``("preview", prompt_id, node, jpeg)``: a preview, evaluated and encoded off the sampling thread;
- ``("result", outcome, entry, files, info)``: last; ``files`` carries the output files as
  ``[(type, subfolder, filename, bytes)]`` when this worker does not share the front door's disk, and
  ``info`` is this worker's state after the prompt (resident models, loads).
"""
from __future__ import annotations

import importlib
import os
import queue
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.context import CancelToken, Env
from engine.errors import execution_error

from .devices import local_devices
from .worker import (PreviewEncoder, cancel_running, event_sink, failure_entry, free_models, resident_models,
                     run_prompt, wants_previews)

DONE = object()
FANOUT_KEY = "loom_fanout_prompt"  # extra_data of a fan-out part: the whole prompt


def load_registry(spec: str | None):
    """``None``/"default": Loom's node catalogue; "module:function": a registry factory (tests, add-ons)."""
    if not spec or spec == "default":
        from nodes import default_registry

        return default_registry()
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)()


class LoomActor:
    """``config``: models_dir, input_dir, output_dir, temp_dir (the front door's), marker (a file the front door
    put in its output folder: if this worker sees it, it writes there directly), registry (see
    ``load_registry``), budget_bytes (model store budget; None: the store's default), preview_interval_s,
    preview_size, preview_method (the server's default), cache_bytes (output cache budget),
    memory_budget_bytes (what nodes may allocate; None: RAM), torch_threads."""

    def __init__(self, worker_id: str, config: dict):
        from engine.cache import OutputCache
        from engine.executor import Executor

        self.id = worker_id
        self.config = config
        if config.get("torch_threads"):  # several CPU actors on one machine: one thread each, not all cores each
            import torch

            torch.set_num_threads(int(config["torch_threads"]))
        out, tmp = Path(config["output_dir"]), Path(config["temp_dir"])
        marker = config.get("marker")
        self.shared_disk = bool(marker) and (out / marker).exists()
        self._shared_dirs = (out, tmp)
        self._local_dirs: tuple[Path, Path] | None = None
        if not self.shared_disk:  # a machine of its own: write locally, ship the files back
            out, tmp = self._local()
        budget = config.get("budget_bytes")

        def store_factory(env):
            from engine.folders import ModelFolders
            from modelstore.models import ModelStore

            return ModelStore(ModelFolders(env.models_dir), budget_bytes=budget)

        env = Env(input_dir=Path(config["input_dir"]), output_dir=out, temp_dir=tmp,
                  models_dir=Path(config["models_dir"]), model_store_factory=store_factory)
        cache = OutputCache(config["cache_bytes"]) if config.get("cache_bytes") else None
        self.executor = Executor(load_registry(config.get("registry")), env, cache=cache,
                                 memory_budget=config.get("memory_budget_bytes"))
        self.interval = float(config.get("preview_interval_s", 0.1))
        self.preview_method = config.get("preview_method") or "none"  # the server's default
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._encoder = PreviewEncoder(self._queue.put, int(config.get("preview_size", 512)))
        self._run_lock = threading.Lock()
        self._current: tuple[str, CancelToken] | None = None
        self.done = 0
        self.last_error: str | None = None

    def _local(self) -> tuple[Path, Path]:
        if self._local_dirs is None:
            import tempfile

            base = Path(tempfile.mkdtemp(prefix=f"loom-{self.id}-"))
            self._local_dirs = (base / "output", base / "temp")
            for d in self._local_dirs:
                d.mkdir(parents=True, exist_ok=True)
        return self._local_dirs

    # -- state --------------------------------------------------------------------------------------
    def info(self) -> dict:
        env = self.executor.env
        loads = env.model_store().stats["loads"] if env.has_model_store else 0
        cur = self._current
        return {"id": self.id, "node": socket.gethostname(), "pid": os.getpid(), "devices": local_devices(),
                "resident_models": resident_models(self.executor), "busy_prompt": cur[0] if cur else None,
                "prompts_done": self.done, "last_error": self.last_error, "model_loads": loads,
                "shared_disk": self.shared_disk}

    def interrupt(self, prompt_id: str | None = None) -> bool:
        return cancel_running(self._current, prompt_id)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        with self._run_lock:  # between prompts, never under a running one
            free_models(self.executor, unload_models, free_memory)

    # -- a prompt -----------------------------------------------------------------------------------
    def run(self, item: Any, ship: bool | None = None):
        """Run one queued prompt (a ``service.store.Item``), yielding batches (see the module docstring).
        ``ship``: write outputs locally and send them back even on a shared disk (None: only when not shared)."""
        with self._run_lock:
            ship = not self.shared_disk if ship is None else bool(ship)
            env = self.executor.env
            env.output_dir, env.temp_dir = self._local() if ship else self._shared_dirs
            q = self._queue
            pid = item.id
            cancel = CancelToken()
            self._current = (pid, cancel)
            encoder = self._encoder if wants_previews(item.extra_data, self.preview_method) else None
            sink = event_sink(pid, q.put, encoder, self.interval)

            whole = item.extra_data.get(FANOUT_KEY)  # a fan-out part: PNGs and manifests record the whole prompt
            if whole is not None:
                item = replace(item, extra_data={k: v for k, v in item.extra_data.items() if k != FANOUT_KEY})

            def work():
                try:
                    v = None
                    if whole is not None:
                        try:
                            v = self.executor.prepare(item.prompt, item.outputs_to_execute or None)
                            v.workflow.prompt = whole
                        except Exception:  # run_prompt validates again and reports it
                            v = None
                    q.put(("result",) + run_prompt(self.executor, item, v, sink, cancel))
                except BaseException as e:  # run_prompt catches Exception; this is the last resort
                    q.put(("result", "error", failure_entry(execution_error(pid, e))))
                q.put(DONE)

            t = threading.Thread(target=work, name="loom-actor-run", daemon=True)
            t.start()
            try:
                while True:
                    batch = [q.get()]
                    while True:
                        try:
                            batch.append(q.get_nowait())
                        except queue.Empty:
                            break
                    if DONE in batch:
                        batch = batch[: batch.index(DONE)]
                        result = next(m for m in batch if m[0] == "result")
                        batch = [m for m in batch if m[0] != "result" and (m[0] != "preview" or m[1] == pid)]
                        if batch:
                            yield batch
                        outcome, entry = result[1], result[2]
                        entry.setdefault("loom", {})["worker"] = self.id
                        self.done += 1
                        if outcome == "error":
                            self.last_error = ((entry["loom"].get("error") or {}).get("exception_message")
                                               or "error")
                        files = self._files(entry.get("outputs") or {}) if ship else []
                        self._current = None
                        yield [("result", outcome, entry, files, self.info())]
                        return
                    yield [m for m in batch if m[0] != "preview" or m[1] == pid]
            finally:
                self._current = None
                t.join()

    def _files(self, outputs: dict) -> list[tuple[str, str, str, bytes]]:
        env = self.executor.env
        roots = {"output": env.output_dir, "temp": env.temp_dir}
        files = []
        for ui in outputs.values():
            for key in ("images", "video", "audio", "files"):
                for f in (ui or {}).get(key) or ():
                    if not isinstance(f, dict) or f.get("type") not in roots or "filename" not in f:
                        continue
                    p = roots[f["type"]] / (f.get("subfolder") or "") / f["filename"]
                    for q in (p, p.with_suffix(".manifest.json")):
                        if q.is_file():
                            files.append((f["type"], f.get("subfolder") or "", q.name, q.read_bytes()))
                            q.unlink()
        return files
