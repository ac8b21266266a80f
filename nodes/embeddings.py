"""Textual-inversion embeddings in prompts: ``embedding:name`` (with or without the file extension; weighted as
``(embedding:name:1.2)``) is replaced by the embedding's vectors, one token each, for every text encoder they fit.

Files live in models/embeddings: ``name.safetensors`` (preferred), ``.pt``/``.bin`` (pickle: only when the
model store allows pickle, then ``torch.load(weights_only=True)``). Layouts: A1111 (``string_to_param: {'*'}``),
``emb_params``, SDXL (``clip_l``/``clip_g``), diffusers (one tensor named after its token). A missing file, a
refused pickle or vectors of the wrong width for an encoder give a warning naming the embedding (validation
warning for prompts typed in the node, run-time ``warning`` event always) and the word is left out, as ComfyUI
does; never silently.

The vectors enter the text encoder through a forward hook on its token embedding (``inject``): the prompt's
token ids carry a placeholder id (``EmbeddingToken``, an int that remembers its vector) and the hook puts the
vector in the placeholder's row. The hook is active for one encoder call of the calling thread only.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path

from modelstore.filecache import FileCache, is_pickle

log = logging.getLogger(__name__)
PREFIX = "embedding:"
EXTENSIONS = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")
PLACEHOLDER_ID = 0  # a plain token id ('!'), never EOS: the pooled output is read at the EOS position

_CACHE: FileCache = FileCache(64, refused=PermissionError)


class EmbeddingToken(int):
    """A token id standing for one embedding vector (``vector``: (D,) tensor)."""
    vector: torch.Tensor

    def __new__(cls, vector: torch.Tensor):
        t = super().__new__(cls, PLACEHOLDER_ID)
        t.vector = vector
        return t


def names_in(text: str) -> list[str]:
    """The embedding names a prompt mentions (``embedding:name``, trailing punctuation and ``:weight)`` removed)."""
    out = []
    for m in re.finditer(r"embedding:([^\s,()]+)", text):
        name = m.group(1)
        name = re.sub(r":[-+0-9.]+$", "", name)  # (embedding:name:1.2) -> name
        out.append(name.rstrip(".,;:"))
    return out


def find_file(folders, name: str) -> Path | None:
    """models/embeddings/<name> with or without extension (safetensors first); None when missing."""
    try:
        files = folders.list("embeddings")
    except (KeyError, OSError):
        return None
    want = name.replace("\\", "/")
    for cand in [want] + [want + ext for ext in EXTENSIONS]:
        if cand in files:
            try:
                return Path(folders.resolve("embeddings", cand))
            except Exception:  # a name escaping the folder is simply not found
                return None
    return None


def load_file(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Every tensor of an embedding file (nested A1111 dicts flattened), cached by path, size and mtime; a pickle
    file is refused (PermissionError) unless ``allow_pickle``, whatever an earlier caller was allowed."""
    return _CACHE.get(path, allow_pickle, _read)


def _read(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if is_pickle(path):
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file as st_load

        raw = st_load(str(path))
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix, v):
        if isinstance(v, torch.Tensor):
            if v.is_floating_point():
                flat[prefix] = v.detach().float()
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
    walk("", raw)
    return flat


def vectors_for(tensors: dict[str, torch.Tensor], width: int, arch: str, index: int) -> torch.Tensor | None:
    """(n, width) vectors for text encoder ``index`` of a CLIP of ``arch``, or None when none fits."""
    if arch == "sdxl" and ("clip_l" in tensors or "clip_g" in tensors):
        t = tensors.get("clip_l" if index == 0 else "clip_g")
        cands = [t] if t is not None else []
    else:
        preferred = [k for k in ("string_to_param.*", "emb_params") if k in tensors]
        cands = [tensors[k] for k in preferred] + [v for k, v in tensors.items() if k not in preferred]
    for t in cands:
        if t.ndim == 0 or t.numel() == 0:  # a scalar or an empty tensor holds no vectors
            continue
        t = t.reshape(1, -1) if t.ndim == 1 else t.reshape(-1, t.shape[-1])
        if t.shape[-1] == width:
            return t
    return None


class Resolver:
    """``embedding:name`` words -> lists of ``EmbeddingToken`` for one text encoder; problems go to ``warn``
    once per embedding and encoder."""

    def __init__(self, folders, allow_pickle: bool, width: int, arch: str, index: int, warn):
        self.folders, self.allow_pickle = folders, allow_pickle
        self.width, self.arch, self.index, self.warn = width, arch, index, warn
        self.reported: set = set()

    def _report(self, name: str, msg: str) -> None:
        if name not in self.reported:
            self.reported.add(name)
            self.warn(msg)

    def __call__(self, word: str) -> list[EmbeddingToken]:
        """The tokens for ``word`` (starting with 'embedding:'); [] when it is left out (after a warning)."""
        return self.split(word)[0]

    def split(self, word: str) -> tuple[list[EmbeddingToken], str]:
        """(the embedding's tokens, the trailing punctuation that is not part of its name): in
        ``embedding:name,`` the comma is prompt text, to be tokenized like any other."""
        name, rest = word[len(PREFIX):], ""
        path = find_file(self.folders, name)
        if path is None and name.rstrip(".,;:") != name:
            stripped = name.rstrip(".,;:")
            name, rest = stripped, name[len(stripped):]
            path = find_file(self.folders, name)
        if path is None:
            self._report(name, f"embedding '{name}' not found in models/embeddings; the word is ignored")
            return [], rest
        try:
            tensors = load_file(path, self.allow_pickle)
        except Exception as e:  # refused pickle, corrupt file: a warning, the prompt still encodes
            self._report(name, f"embedding '{name}' could not be loaded ({e}); the word is ignored")
            return [], rest
        vec = vectors_for(tensors, self.width, self.arch, self.index)
        if vec is None:
            widths = sorted({t.shape[-1] for t in tensors.values() if t.ndim and t.numel()})
            self._report(name, f"embedding '{name}' has vectors of width {widths}, but text encoder {self.index + 1} "
                               f"of this CLIP ({self.arch}) expects {self.width}; ignored for that encoder")
            return [], rest
        if not vec.isfinite().all():  # NaN vectors would turn the whole prompt's conditioning into NaN
            self._report(name, f"embedding '{name}' has NaN or infinite values; the word is ignored")
            return [], rest
        return [EmbeddingToken(v) for v in vec], rest


def resolver(clip_ref, index: int, encoder, warn) -> Resolver | None:
    """The resolver for text encoder ``index`` of ``clip_ref``'s store (None without a store)."""
    store = getattr(clip_ref, "store", None)
    folders = getattr(store, "folders", None)
    if folders is None:
        return None
    emb = _token_embedding(encoder)
    arch = clip_ref.meta.get("arch", "sd1") if hasattr(clip_ref, "meta") else "sd1"
    return Resolver(folders, bool(getattr(store, "allow_pickle", False)), emb.weight.shape[-1], arch, index,
                    warn or (lambda m: log.warning("%s", m)))


def _token_embedding(encoder) -> torch.nn.Embedding:
    """The embedding module the encoder's forward calls on its input ids: CLIP's token embedding, T5's encoder
    stack copy (transformers 5 does not share it with ``shared``), else ``get_input_embeddings()`` (Qwen)."""
    inner = getattr(encoder, "text_model", encoder)
    if hasattr(inner, "embeddings") and hasattr(inner.embeddings, "token_embedding"):
        return inner.embeddings.token_embedding
    stack = getattr(encoder, "encoder", None)
    if stack is not None and hasattr(stack, "embed_tokens"):
        return stack.embed_tokens
    return encoder.get_input_embeddings()


_ACTIVE = threading.local()


@contextlib.contextmanager
def inject(encoder, ids: torch.Tensor, windows: list):
    """While active, the encoder's token embedding returns the embedding vectors at the rows of ``windows`` that
    hold ``EmbeddingToken``s, for a call on exactly ``ids`` from this thread."""
    spots = [(r, c, tok.vector) for r, win in enumerate(windows) for c, (tok, _) in enumerate(win)
             if isinstance(tok, EmbeddingToken)]
    if not spots:
        yield
        return
    import torch

    module = _token_embedding(encoder)

    def hook(mod, args, out):
        want = getattr(_ACTIVE, "calls", {}).get(id(mod))
        if want is None or not args or args[0].shape != want.shape or not torch.equal(args[0], want):
            return None
        out = out.clone()
        for r, c, v in spots:
            out[r, c] = v.to(out.dtype).to(out.device)
        return out

    calls = getattr(_ACTIVE, "calls", None)
    if calls is None:
        calls = _ACTIVE.calls = {}
    calls[id(module)] = ids
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        calls.pop(id(module), None)


def validation_warnings(env, text) -> list[str]:
    """Warnings for the ``embedding:name`` words of a prompt typed in the node: missing files and pickle files the
    store will refuse. (Width mismatches need the CLIP and are reported when the prompt is encoded.)"""
    if not isinstance(text, str) or PREFIX not in text or env is None:
        return []
    folders = getattr(env, "folders", None)
    if folders is None:
        from engine.folders import ModelFolders

        folders = ModelFolders(env.models_dir)
    # the store decides pickle (validation never creates it): look at it only when it exists already
    store = getattr(env, "_models", None)
    allow_pickle = bool(getattr(store, "allow_pickle", False))
    out = []
    for name in dict.fromkeys(names_in(text)):
        path = find_file(folders, name)
        if path is None:
            out.append(f"embedding '{name}' not found in models/embeddings; the word will be ignored")
        elif is_pickle(path) and not allow_pickle:
            out.append(f"embedding '{name}' is a pickle file ({path.name}) and pickle files are not allowed; "
                       "the word will be ignored")
    return out
