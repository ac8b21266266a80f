"""Handles to models in a ``ModelStore``: file identity, store keys, hashable refs, and the CLIP bundle.

Torch-free at import: nodes and outputs hold these (~64 bytes each), never the modules themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol


class RefSource(Protocol):
    """What a ref needs from its store (declared here so refs never import the store: no import loop)."""

    def get(self, ref: "ModelRef") -> Any: ...

    def using(self, *refs: "ModelRef") -> Any:
        """Context manager: pin ``refs`` while the block runs, yielding their live values."""


@dataclass(frozen=True)
class FileId:
    """Identity of a model file: resolved path, size (bytes) and mtime (ns). A changed file is a new model."""
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "FileId":
        p = Path(path).resolve()
        st = (p / "model_index.json").stat() if p.is_dir() else p.stat()
        return cls(str(p), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ModelKey:
    """Store key: file, component (the name of the kind loader that builds it: 'unet'|'vae'|'clip' of a checkpoint,
    'vaefile' = standalone VAE file, 'upscale', 'taesd', ... see ``modelstore.kinds``), dtype/device names and
    patches (tuple of (FileId, strength), applied in order by the kind loader's ``patch``)."""
    file: FileId
    component: str
    dtype: str
    device: str
    patches: tuple = ()


@dataclass(frozen=True)
class ModelRef:
    """A cheap, hashable handle to a model in a store. ``kind`` is the socket type it feeds ('MODEL'|'CLIP'|'VAE'|'UPSCALE_MODEL' ...).
    ``info``/``options`` are tuples of (name, value) pairs; the store is not part of equality."""
    kind: str
    key: ModelKey
    info: tuple = ()
    options: tuple = ()
    store: RefSource | None = field(default=None, compare=False, hash=False, repr=False)

    def get(self) -> Any:
        """The live module (reloaded if it was dropped; moved back if it was offloaded)."""
        return self.store.get(self)

    @property
    def meta(self) -> dict:
        return dict(self.info)

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def with_options(self, **kw) -> "ModelRef":
        """A ref to the same module carrying extra options (e.g. ``clip_skip=-2``); options never change
        the loaded weights."""
        return replace(self, options=tuple(sorted({**dict(self.options), **kw}.items())))

    def __loom_nbytes__(self) -> int:
        return 64


@dataclass
class TextEncoders:
    """What a CLIP ref's ``get()`` returns. ``encoders[i]`` pairs with ``tokenizers[i]`` (77 tokens).
    sd1: one CLIPTextModel, use ``last_hidden_state``. sd2: one CLIPTextModel whose last layer was already
    dropped (penultimate of OpenCLIP-H), use ``last_hidden_state``. sdxl: CLIP-L CLIPTextModel +
    CLIPTextModelWithProjection (G); use ``hidden_states[-2]`` of both (no final norm), concatenated on the
    feature axis, and G's ``text_embeds`` as pooled output."""
    arch: str
    encoders: tuple
    tokenizers: tuple


def module_nbytes(value: Any) -> int:
    """Bytes of parameters+buffers (unique storages) of a module or TextEncoders."""
    mods = value.encoders if isinstance(value, TextEncoders) else (value,)
    seen, total = set(), 0
    for m in mods:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total
