"""What a ``ModelStore`` keeps where: resident bytes per place, the LRU budget (offload to CPU on CUDA stores,
drop on CPU stores), freeing, and the CUDA out-of-memory guard. A mixin of ``ModelStore``: it uses the store's
``_entries`` (``ModelKey`` -> ``_Entry``, least recently used first), ``_lock``, ``stats``, ``budget``,
``offload_budget``, ``offload_to``, ``device`` and ``_sources`` (dropped by ``unload_all``)."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .devices import OutOfMemory
from .refs import ModelKey, TextEncoders

log = logging.getLogger("loom.models")


@dataclass
class _Entry:
    value: Any
    nbytes: int
    where: str          # 'device' | 'offloaded'
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


class Residency:
    """Memory bookkeeping and OOM handling of ``ModelStore`` (see the module docstring)."""

    # -- memory -------------------------------------------------------------------------------------
    def resident_bytes(self, where: str = "device") -> int:
        return sum(e.nbytes for e in self._entries.values() if e.where == where)

    def loaded(self) -> list[tuple[ModelKey, str, int]]:
        """(key, 'device'|'offloaded', nbytes) for every entry, least recently used first."""
        with self._lock:
            return [(k, e.where, e.nbytes) for k, e in self._entries.items()]

    def free(self, keep_pinned: bool = True) -> None:
        """Offload (CUDA) or drop (CPU) every unpinned model, then release allocator caches."""
        with self._lock:
            for k, e in list(self._entries.items()):
                if not (keep_pinned and e.pins):
                    self._evict(k, e)
            self._empty_caches()

    def unload_all(self) -> None:
        """Drop every model (pinned ones too) and the cached file headers."""
        with self._lock:
            self._entries.clear()
            self._sources.clear()
            self._empty_caches()

    def _enforce_budget(self, keep: ModelKey) -> None:
        for k, e in list(self._entries.items()):
            if self.resident_bytes("device") <= self.budget:
                break
            if k != keep and e.pins == 0 and e.where == "device":
                self._evict(k, e)
        for k, e in list(self._entries.items()):
            if self.resident_bytes("offloaded") <= self.offload_budget:
                break
            if e.where == "offloaded" and e.pins == 0:
                del self._entries[k]
                self.stats["drops"] += 1

    def _evict(self, k: ModelKey, e: _Entry) -> None:
        if self.offload_to and e.where == "device":
            self._move(e.value, self.offload_to)
            e.where = "offloaded"
            self.stats["offloads"] += 1
        elif e.where == "device" or not self.offload_to:
            del self._entries[k]
            self.stats["drops"] += 1

    def _move(self, value: Any, device: str) -> None:
        for m in (value.encoders if isinstance(value, TextEncoders) else (value,)):
            m.to(device)

    def _empty_caches(self) -> None:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- OOM handling -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def oom_guard(self, what: str = "this step"):
        """On ``torch.cuda.OutOfMemoryError``: free caches and offload idle models, then raise ``OutOfMemory``
        with a clear message. Use ``retry_on_oom`` to retry once instead."""
        try:
            yield
        except torch.cuda.OutOfMemoryError as err:
            self.free()
            raise OutOfMemory(f"out of GPU memory in {what} (models resident: "
                              f"{self.resident_bytes() / 2**30:.2f} GiB, budget {self.budget / 2**30:.2f} GiB); "
                              "try a smaller batch/resolution or a lower budget") from err

    def retry_on_oom(self, fn: Callable, *args, what: str = "this step", **kwargs):
        """Call ``fn``; on CUDA OOM free + offload everything unpinned and call it once more, then raise
        ``OutOfMemory``. ``fn`` should fetch modules via refs inside, so the retry reloads what it needs."""
        try:
            return fn(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            log.warning("CUDA OOM in %s: offloading idle models and retrying once", what)
            self.free()
        with self.oom_guard(what):
            return fn(*args, **kwargs)
