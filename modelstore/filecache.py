"""Small objects built from one file (style models, hypernetworks, embeddings), cached by the file's identity.

The key is (path, size, mtime), so an edited or replaced file is read again. The pickle policy is checked before
the cache, on every call: a pickle file loaded once for a caller that allows pickle is never handed to one that
does not. Bounded by a count (these objects are small); when full, the cache starts over.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Generic, TypeVar

from .tensorfile import PICKLE_SUFFIXES, PickleRefused

T = TypeVar("T")


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def unreadable(path: Path, e: BaseException) -> str:
    """The message for a file that the safetensors / pickle reader refused (truncated, empty, not that format):
    the file's name and the reader's first line, never a traceback."""
    detail = str(e).strip().splitlines()
    return (f"{path.name}: cannot be read as a {'pickle' if is_pickle(path) else 'safetensors'} file "
            f"({type(e).__name__}: {detail[0][:200] if detail else 'no detail'})")


class FileCache(Generic[T]):
    def __init__(self, max_items: int, refused: type[Exception] = PickleRefused):
        self.max_items = max_items
        self.refused = refused  # the error a refused pickle file raises (callers keep their own types)
        self._items: dict[tuple, T] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, allow_pickle: bool, build: Callable[[Path], T]) -> T:
        """``build(path)``'s result for this version of the file, built at most once per version."""
        path = Path(path)
        if is_pickle(path) and not allow_pickle:
            raise self.refused(f"{path.name} is a pickle file (can run code when loaded); convert it to "
                               ".safetensors or allow pickle files")
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = build(path)  # outside the lock: building may take a while and may raise
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items.clear()
            self._items[key] = value
        return value
