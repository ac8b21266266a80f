"""What the model store keeps where: live values per ``ModelKey``, resident bytes per place, the LRU budget
(offload to CPU on CUDA stores, drop on CPU stores), pins, freeing, and the CUDA out-of-memory guard.

``Residency`` owns its state and its lock; it never builds anything (``ModelStore`` asks its ``Loader`` for a
value on a miss and hands it to ``admit``). torch is imported lazily (only ``free`` and the OOM guard need it).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .devices import OutOfMemory
from .refs import ModelKey, TextEncoders

log = logging.getLogger("loom.models")


@dataclass
class Entry:
    """One resident value: ``nbytes`` counted against the budget of ``where`` ('device'|'offloaded')."""
    value: Any
    nbytes: int
    where: str
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


def move(value: Any, device: str) -> None:
    """Move a module (or every module of a ``TextEncoders``/value with ``.modules_to_move``) to ``device``."""
    if isinstance(value, TextEncoders):
        mods = value.encoders
    else:
        mods = getattr(value, "modules_to_move", None) or (value,)
    for m in mods:
        m.to(device)


class Residency:
    """Entries keyed by ``ModelKey`` (least recently used first) under a byte budget.

    ``budget``: bytes resident on ``device``; beyond it the least recently used unpinned entries are offloaded to
    ``offload_to`` (bounded by ``offload_budget``) when it is set (CUDA stores), else dropped. Thread-safe: every
    method takes ``lock`` (re-entrant; ``ModelStore`` holds it across a miss so one key is built once)."""

    def __init__(self, device: str, budget: int, offload_to: str | None = None, offload_budget: int | None = None):
        self.device = device
        self.budget = budget
        self.offload_to = offload_to
        self.offload_budget = offload_budget if offload_budget is not None else budget
        self.lock = threading.RLock()
        self.stats = {"loads": 0, "hits": 0, "offloads": 0, "drops": 0, "load_seconds": 0.0}
        self._entries: OrderedDict[ModelKey, Entry] = OrderedDict()

    # -- lookups and admission ----------------------------------------------------------------------
    def lookup(self, key: ModelKey) -> Any | None:
        """The live value for ``key`` on the device (moved back if it was offloaded), or None on a miss."""
        with self.lock:
            e = self._entries.get(key)
            if e is None:
                return None
            self.stats["hits"] += 1
            if e.where == "offloaded":
                move(e.value, self.device)
                e.where = "device"
            self._touch(key, e)
            return e.value

    def admit(self, key: ModelKey, value: Any, nbytes: int, seconds: float = 0.0) -> Any:
        """Record a freshly built value (``nbytes`` it owns) and enforce the budget, keeping ``key``. Then the heap
        is trimmed: what building left behind (and what the budget dropped) leaves the process's RSS."""
        with self.lock:
            e = self._entries[key] = Entry(value, int(nbytes), "device")
            self.stats["loads"] += 1
            self.stats["load_seconds"] += seconds
            self._touch(key, e)
        trim_heap()
        return value

    def pin(self, key: ModelKey, delta: int) -> None:
        """Add ``delta`` (+1/-1) pins to a resident key: pinned entries are never offloaded or dropped."""
        with self.lock:
            if key in self._entries:
                self._entries[key].pins += delta

    def _touch(self, key: ModelKey, e: Entry) -> None:
        self._entries.move_to_end(key)
        e.last_used = time.monotonic()
        self._enforce(keep=key)

    # -- memory -------------------------------------------------------------------------------------
    def resident_bytes(self, where: str = "device") -> int:
        with self.lock:
            return sum(e.nbytes for e in self._entries.values() if e.where == where)

    def loaded(self) -> list[tuple[ModelKey, str, int]]:
        """(key, 'device'|'offloaded', nbytes) for every entry, least recently used first."""
        with self.lock:
            return [(k, e.where, e.nbytes) for k, e in self._entries.items()]

    def free(self, keep_pinned: bool = True) -> None:
        """Offload (CUDA) or drop (CPU) every unpinned entry, then release allocator caches."""
        with self.lock:
            for k, e in list(self._entries.items()):
                if not (keep_pinned and e.pins):
                    self._evict(k, e)
        empty_caches()

    def clear(self) -> None:
        """Drop every entry, pinned ones too."""
        with self.lock:
            self._entries.clear()
        empty_caches()

    def _enforce(self, keep: ModelKey) -> None:
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

    def _evict(self, k: ModelKey, e: Entry) -> None:
        if self.offload_to and e.where == "device":
            move(e.value, self.offload_to)
            e.where = "offloaded"
            self.stats["offloads"] += 1
        elif e.where == "device" or not self.offload_to:
            del self._entries[k]
            self.stats["drops"] += 1

    # -- OOM handling -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def oom_guard(self, what: str = "this step"):
        """On ``torch.cuda.OutOfMemoryError``: free caches and offload idle models, then raise ``OutOfMemory``
        with a clear message. Use ``retry_on_oom`` to retry once instead."""
        import torch

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
        import torch

        try:
            return fn(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            log.warning("CUDA OOM in %s: offloading idle models and retrying once", what)
            self.free()
        with self.oom_guard(what):
            return fn(*args, **kwargs)


def empty_caches() -> None:
    """Collect garbage (so dropped modules release their tensors now), hand freed heap memory back to the system
    and empty the CUDA allocator cache."""
    import gc

    gc.collect()
    trim_heap()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_libc = None


def trim_heap() -> None:
    """``malloc_trim(0)`` on glibc: return the free pages of the C heap to the system. Without it, memory freed
    by a dropped model or by load-time temporaries stays in the process's RSS (glibc keeps freed chunks below
    its adaptive mmap threshold, up to 32 MiB each). A no-op elsewhere."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else False
            _libc = lib if lib and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
