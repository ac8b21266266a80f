"""Model folder resolution: ComfyUI folder names under a models root, plus extra search paths.

No torch here. Two public pieces:

- ``confine(root, relpath) -> Path``: the one path-confinement helper (also used by the server and the image
  nodes). It resolves a client-supplied *relative* name inside ``root`` and refuses absolute paths, drive
  letters, ``..`` components, NUL bytes and anything whose resolved path (symlinks followed) leaves ``root``.
- ``ModelFolders``: lists model files per kind (``checkpoints``, ``vae``, ``loras`` ...) as sorted relative names
  with forward slashes, and resolves a name to a file, raising ``ModelNotFoundError`` (structured, lists what is
  available) when it is missing.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

#: File extensions ComfyUI accepts for model folders (lower case, with dot).
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
#: ComfyUI's folder names; the value is the extension set for that kind.
FOLDER_KINDS: dict[str, frozenset[str]] = {
    name: MODEL_EXTENSIONS
    for name in ("checkpoints", "vae", "loras", "upscale_models", "embeddings", "vae_approx", "clip",
                 "text_encoders", "unet", "diffusion_models", "controlnet", "clip_vision", "style_models",
                 "hypernetworks", "gligen", "photomaker", "diffusers")
}
#: Kinds whose entries may also be diffusers folders (a directory holding model_index.json).
DIFFUSERS_DIR_KINDS = frozenset({"checkpoints", "diffusers"})


class UnsafePathError(ValueError):
    """A client-supplied relative path was absolute, contained ``..``, or resolved outside its root."""


class ModelNotFoundError(FileNotFoundError):
    """A model name did not resolve. ``kind``, ``name`` and ``available`` (sorted relative names) are attributes;
    ``to_dict()`` gives a JSON-ready form for validation errors."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, list(available)
        shown = ", ".join(self.available[:20]) + (" ..." if len(self.available) > 20 else "")
        super().__init__(f"{kind} model {name!r} not found; available: [{shown}]")

    def to_dict(self) -> dict:
        return {"type": "model_not_found", "kind": self.kind, "name": self.name, "available": self.available}


def confine(root: str | os.PathLike, relpath: str | os.PathLike) -> Path:
    """Return the resolved absolute path of ``relpath`` inside ``root``.

    Raises UnsafePathError if ``relpath`` is empty, absolute (POSIX or Windows style), has a ``..`` component,
    contains NUL, or resolves (following symlinks, strictly for the existing prefix) outside ``root``.
    The target need not exist.
    """
    rel = os.fspath(relpath)
    if not rel or "\x00" in rel:
        raise UnsafePathError(f"invalid path {rel!r}")
    win = PureWindowsPath(rel)
    if PurePosixPath(rel).is_absolute() or win.is_absolute() or win.drive or rel.startswith(("/", "\\")):
        raise UnsafePathError(f"absolute paths are not allowed: {rel!r}")
    parts = rel.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"'..' is not allowed in {rel!r}")
    base = Path(root).resolve()
    target = (base / "/".join(p for p in parts if p not in ("", "."))).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{rel!r} escapes its folder")
    return target


class ModelFolders:
    """Model search paths per kind.

    ``ModelFolders(root, extra={"checkpoints": ["/data/ckpts"]})``: each kind searches ``root/<kind>`` first,
    then its extra paths in order. ``root`` may be None (extras only). Missing directories are skipped.
    """

    def __init__(self, root: str | os.PathLike | None = None,
                 extra: dict[str, list[str | os.PathLike]] | None = None):
        self.root = Path(root) if root is not None else None
        self.extra = {k: [Path(p) for p in v] for k, v in (extra or {}).items()}

    def add_path(self, kind: str, path: str | os.PathLike) -> None:
        """Append an extra search path for ``kind``."""
        self.extra.setdefault(kind, []).append(Path(path))

    def paths(self, kind: str) -> list[Path]:
        """Search roots for ``kind`` in priority order (existing or not)."""
        if kind not in FOLDER_KINDS and kind not in self.extra:
            raise KeyError(f"unknown model folder kind {kind!r}")
        out = [self.root / kind] if self.root is not None else []
        return out + self.extra.get(kind, [])

    def list(self, kind: str) -> list[str]:
        """Sorted, de-duplicated relative names (forward slashes) of model files of ``kind`` (and diffusers
        folders for checkpoints/diffusers). Entries that resolve outside their root are skipped."""
        exts = FOLDER_KINDS.get(kind, MODEL_EXTENSIONS)
        names: set[str] = set()
        for base in self.paths(kind):
            if not base.is_dir():
                continue
            rbase = base.resolve()
            seen: set[Path] = set()
            for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                d = Path(dirpath)
                rd = d.resolve()
                if (rbase != rd and rbase not in rd.parents) or rd in seen:  # escaped, or a symlink loop
                    dirnames[:] = []
                    continue
                seen.add(rd)
                if kind in DIFFUSERS_DIR_KINDS and "model_index.json" in filenames and d != base:
                    names.add(d.relative_to(base).as_posix())
                    dirnames[:] = []
                    continue
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                for f in filenames:
                    if Path(f).suffix.lower() in exts:
                        p = d / f
                        if rbase in p.resolve().parents:
                            names.add(p.relative_to(base).as_posix())
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """Absolute path of ``name`` (file or diffusers folder) in the first search path holding it.

        Raises UnsafePathError for unsafe names and ModelNotFoundError (with the available list) if absent."""
        for base in self.paths(kind):
            p = confine(base, name)
            if p.is_file() or (p.is_dir() and (p / "model_index.json").is_file()):
                return p
        raise ModelNotFoundError(kind, name, self.list(kind))
