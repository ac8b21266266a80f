"""The split loaders' entry points into the model store: refs for diffusion-model files (UNETLoader) and
text-encoder files (CLIPLoader / DualCLIPLoader / TripleCLIPLoader), the CLIP value those loaders return, the
built text-encoder value, and fp8 weight storage. The store builds the values through ``modelstore.kinds.families``
(one store entry per file: the budget keeps, drops or offloads each component on its own).

Refs: MODEL -> ``ModelKey(file, 'family_dm', dtype, device)`` whose ``get()`` is a ``FlowDenoiser``;
text encoder -> ``ModelKey(file, 'family_te', ...)`` whose ``get()`` is a ``TextEncoderModule``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from ..refs import ModelKey, ModelRef
from . import text_encoders

#: UNETLoader weight_dtype -> storage dtype name (None: the store's dtype)
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn",
                 "fp8_e5m2": "float8_e5m2"}


def _module_base():
    import torch

    return torch.nn.Module


class TextEncoderModule(_module_base()):
    """One loaded text encoder: ``model`` (transformers), ``kind`` ('clip_l'|'clip_g'|'t5'|'qwen3'), ``tokenizer``."""

    def __init__(self, model, kind: str, tokenizer):
        super().__init__()
        self.model, self.kind, self.tokenizer = model, kind, tokenizer


class TextEncoderBundle(_module_base()):
    """CLIP value of an all-in-one checkpoint: ``clip_type`` (the loader type its family implies) and its
    ``TextEncoderModule``s (``encoders``), one store entry for the checkpoint's 'clip' component."""

    def __init__(self, clip_type: str, modules):
        super().__init__()
        import torch

        self.clip_type = clip_type
        self.encoders = torch.nn.ModuleList(modules)


@dataclass(frozen=True)
class FamilyClip:
    """The CLIP value of the split loaders: ComfyUI's loader ``type`` and one ref per text-encoder file
    (``(kind, ref)`` pairs, in file order). Hashable and small; the store is not part of equality."""
    type: str
    encoders: tuple
    options: tuple = ()
    store: object = field(default=None, compare=False, hash=False, repr=False)

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.encoders)

    def ref(self, kind: str) -> ModelRef | None:
        return next((r for k, r in self.encoders if k == kind), None)

    def option(self, name, default=None):
        return dict(self.options).get(name, default)

    def with_options(self, **kw) -> "FamilyClip":
        return FamilyClip(self.type, self.encoders, tuple(sorted({**dict(self.options), **kw}.items())), self.store)

    def __loom_nbytes__(self) -> int:
        return 64


def load_diffusion_model(store, path: Path, name: str, weight_dtype: str = "default") -> ModelRef:
    """MODEL ref for a diffusion-model file (header read now: UnknownModelFile for files of no known family)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r}: expected one of {list(WEIGHT_DTYPES)}")
    from .common import is_ldm_unet

    header = store.loader.sources.open(path).header
    if header is not None and is_ldm_unet(header.shapes):  # an SD1/SD2/SDXL UNet on its own
        if WEIGHT_DTYPES[weight_dtype]:
            raise ValueError("fp8 weight storage is implemented for the transformer families (SD3, FLUX.1, "
                             "Z-Image); load SD UNets with weight_dtype 'default'")
        src, info = store.loader.describe("sd_unet", path)
        return ModelRef("MODEL", ModelKey(src.fid, "sd_unet", store.dtype, store.device), (("name", name),) + info,
                        store=store)
    src, info = store.loader.describe("family_dm", path)
    storage = WEIGHT_DTYPES[weight_dtype]
    dt = f"{storage}+{store.dtype}" if storage else store.dtype
    return ModelRef("MODEL", ModelKey(src.fid, "family_dm", dt, store.device), (("name", name),) + info, store=store)


def load_text_encoder(store, path: Path) -> tuple[str, ModelRef]:
    """(kind, ref) for one text-encoder file; a T5/Qwen3 file without its tokenizer fails here (MissingTokenizer)."""
    src, info = store.loader.describe("family_te", path)
    kind = dict(info)["kind"]
    if kind in text_encoders.TOKENIZER_SOURCES:
        folder = text_encoders.find_tokenizer(kind, path, getattr(store.folders, "root", None))
        store.loader.sources.plan(src, "family_te_tokenizer", lambda s: folder)
    return kind, ModelRef("CLIP", ModelKey(src.fid, "family_te", store.dtype, store.device), info, store=store)


@functools.cache
def _upcast_linear_class():
    import torch
    import torch.nn.functional as F

    class UpcastLinear(torch.nn.Linear):
        """A Linear whose (fp8) weight is up-cast per call to the input's dtype. A class, not a per-instance
        closure, so copies of the module (LoRA patches share-clone modules) use their own weight."""

        def forward(self, x):
            return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    return UpcastLinear


def fp8_linears(module, storage):
    """Keep every block Linear weight in ``storage`` (fp8) and up-cast it per call to the input's dtype (the weights
    stay 1 byte per parameter in memory; compute runs in the activations' dtype)."""
    import torch

    cls = _upcast_linear_class()
    for name, m in module.named_modules():
        # embedders and the output head stay in the compute dtype (diffusers casts inputs to their dtype)
        if type(m) is torch.nn.Linear and not any(w in name for w in ("embed", "final", "norm_out", "proj_out")):
            m.weight.data = m.weight.data.to(storage)
            m.__class__ = cls
    return module
