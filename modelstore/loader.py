"""How the model store turns a ``ModelKey`` into a live value: it owns the file sources (headers and plans cached
by file identity), the kind loaders and checkpoint families gathered from ``modelstore.kinds``, and the CLIP
tokenizer cache. It keeps nothing once a value is built: residency is ``Residency``'s business."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from . import kinds
from .kinds.base import BuildContext, KindLoader
from .kinds.checkpoint import plan_of
from .lora import load_lora_file
from .refs import ModelKey
from .sources import Source, Sources
from .tensorfile import CheckpointError

TOKENIZER_DIR = Path(__file__).parent / "model_configs" / "clip_tokenizer"


class Loader:
    """Builds values for keys. ``pinned(key)`` is the store's: a context manager yielding another key's live value
    (pinned), used to build a patched copy from its base."""

    def __init__(self, device: str, allow_pickle: bool = False, channels_last: bool = False,
                 pinned: Callable[[ModelKey], contextlib.AbstractContextManager] | None = None):
        self.device = device
        self.sources = Sources(allow_pickle)
        self.channels_last = channels_last
        self.loaders, self.families = kinds.gather()
        self._pinned = pinned
        self._tokenizers: dict[tuple, Any] = {}
        self._tok_lock = threading.Lock()

    @property
    def allow_pickle(self) -> bool:
        return self.sources.allow_pickle

    def context(self) -> BuildContext:
        return BuildContext(self.sources, self.device, self.channels_last, self.tokenizer, self._pinned, self.families)

    def loader(self, component: str) -> KindLoader:
        try:
            return self.loaders[component]
        except KeyError:
            raise CheckpointError(f"no loader for model component {component!r} (known: "
                                  f"{', '.join(sorted(self.loaders))})") from None

    # -- header-only -----------------------------------------------------------------------------------
    def checkpoint(self, path: Path):
        """(source, family, plan) of a checkpoint file or diffusers folder (headers only)."""
        src = self.sources.open(path)
        fam, plan = plan_of(src, self.context())
        return src, fam, plan

    def describe(self, component: str, path: Path) -> tuple[Source, tuple]:
        """(source, info pairs) of a file for ``component`` (headers only; raises for files it cannot load)."""
        src = self.sources.open(path)
        try:
            return src, tuple(self.loader(component).describe(src, self.context()) or ())
        except CheckpointError as e:  # a plan's refusal is worded for the layout: say which file
            raise _named(e, path) from None
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:  # a plan read a header that
            # lacks what its layout always has: the file is not that kind (never the plan's raw error text)
            raise CheckpointError(f"{path.name}: not a {component} file Loom can read (its tensors do not fit the "
                                  f"layout: {type(e).__name__} {str(e)[:200]})") from None

    # -- building --------------------------------------------------------------------------------------
    def build(self, key: ModelKey) -> tuple[Any, int]:
        """(value, bytes it owns) for ``key``; a key with patches is its base (pinned) patched by the last one."""
        kind = self.loader(key.component)
        ctx = self.context()
        if not key.patches:
            try:
                value = kind.build(key, ctx)
            except CheckpointError as e:  # raised where the file is out of sight: say which one
                raise _named(e, Path(key.file.path)) from None
            except KeyError as e:  # a converter reaching for a tensor the file lacks (header looked fine)
                raise CheckpointError(f"{Path(key.file.path).name}: cannot build its {key.component} model: tensor "
                                      f"{str(e)[:200]} is missing") from None
            return value, kind.nbytes(value)
        last = key.patches[-1]
        if hasattr(last, "apply"):  # a computed patch (modelstore.merge.MergePatch): its own rule on the base
            with ctx.pinned(replace(key, patches=key.patches[:-1])) as base:
                value = last.apply(base, ctx)
            return value, kind.nbytes(value)
        patch = getattr(kind, "patch", None)
        if patch is None:
            raise CheckpointError(f"model component {key.component!r} cannot be patched (LoRA)")
        lora_fid, strength = last
        with ctx.pinned(replace(key, patches=key.patches[:-1])) as base:
            value = patch(key, base, load_lora_file(lora_fid.path, self.allow_pickle), strength, ctx)
        return value, kind.nbytes(value)

    def tokenizer(self, pad_token: str = "<|endoftext|>", folder: str | None = None):
        """The CLIP BPE tokenizer (bundled files, or a diffusers folder's ``tokenizer*/``), cached."""
        from transformers import CLIPTokenizer

        key = (pad_token, folder)
        with self._tok_lock:
            if key not in self._tokenizers:
                src = folder or TOKENIZER_DIR
                self._tokenizers[key] = CLIPTokenizer.from_pretrained(src, local_files_only=True, pad_token=pad_token)
            return self._tokenizers[key]

    def clear(self) -> None:
        self.sources.clear()


def _named(e: CheckpointError, path: Path) -> CheckpointError:
    """``e``, prefixed with the file's name unless it already says it."""
    return e if path.name in str(e) else CheckpointError(f"{path.name}: {e}")
