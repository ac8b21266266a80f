"""Model files as the store reads them: identity, safetensors/pickle headers and plans, cached by file identity;
pickle refused unless allowed; tensor reads cast as they are read (one transient copy of a tensor at most).

torch-free at import (``tensorfile`` imports torch inside its readers)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .refs import FileId
from .tensorfile import (PICKLE_SUFFIXES, CheckpointError, Header, PickleRefused, header_from_state_dict,
                         load_pickle_state_dict, load_tensors, read_header)


@dataclass(frozen=True)
class Source:
    """One model file or diffusers folder as read: ``kind`` 'safetensors'|'pickle'|'diffusers'; ``header`` holds
    tensor names, dtypes and shapes (None for diffusers folders)."""
    fid: FileId
    kind: str
    header: Header | None

    @property
    def path(self) -> Path:
        return Path(self.fid.path)


class Sources:
    """Headers and plans cached by ``FileId`` (a changed file is a new entry), plus tensor reads."""

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle
        self._lock = threading.RLock()
        self._sources: dict[FileId, Source] = {}
        self._plans: dict[tuple[FileId, str], Any] = {}

    def refuse_pickle(self, path: Path) -> None:
        if path.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            raise PickleRefused(f"{path.name}: pickle files can run arbitrary code when loaded; convert it to "
                                ".safetensors, or construct ModelStore(allow_pickle=True) (then loaded with "
                                "torch.load(weights_only=True))")

    def open(self, path: str | Path) -> Source:
        """The ``Source`` of a file or diffusers folder; reads its header only (pickle: the whole file, once)."""
        path = Path(path)
        fid = FileId.of(path)
        with self._lock:
            src = self._sources.get(fid)
            if src is None:
                if path.is_dir():
                    src = Source(fid, "diffusers", None)
                else:
                    self.refuse_pickle(path)
                    if path.suffix.lower() in PICKLE_SUFFIXES:
                        src = Source(fid, "pickle", header_from_state_dict(path, load_pickle_state_dict(path)))
                    else:
                        src = Source(fid, "safetensors", read_header(path))
                self._sources[fid] = src
            return src

    def current(self, fid: FileId) -> Source:
        """The ``Source`` of ``fid``, refusing a file that changed on disk since it was selected."""
        path = Path(fid.path)
        if FileId.of(path) != fid:
            raise CheckpointError(f"{path.name} changed on disk since it was selected; load it again")
        return self.open(path)

    def plan(self, src: Source, role: str, make: Callable[[Source], Any]) -> Any:
        """``make(src)`` cached per (file, role): what a kind infers from a header (configs, architecture)."""
        with self._lock:
            key = (src.fid, role)
            if key not in self._plans:
                self._plans[key] = make(src)
            return self._plans[key]

    def tensors(self, src: Source, keys, dtype=None, device=None) -> dict:
        """``{name: tensor}`` for ``keys``, floating tensors cast to ``dtype`` and moved to ``device`` one by one."""
        if src.kind == "pickle":
            sd = load_pickle_state_dict(src.path)
            out = {}
            for k in keys:
                t = sd.pop(k)
                out[k] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).to(device or "cpu")
            return out
        if src.header is None:
            raise CheckpointError(f"{src.path.name}: a diffusers folder has no single-file tensors")
        return load_tensors(src.header, list(keys), dtype, device)

    def clear(self) -> None:
        with self._lock:
            self._sources.clear()
            self._plans.clear()
