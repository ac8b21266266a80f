"""The model store's side of the split loaders: diffusion-model files (UNETLoader) and text-encoder files
(CLIPLoader / DualCLIPLoader / TripleCLIPLoader), each one store entry so that the store's budget loads and
drops (CPU) or offloads (CUDA) every component on its own: a multi-GB text encoder is not kept beside the
diffusion model when the budget does not hold both.

Refs: MODEL -> ``ModelKey(file, 'family_dm', dtype, device)`` whose ``get()`` is a ``FlowDenoiser``;
text encoder -> ``ModelKey(file, 'family_te', ...)`` whose ``get()`` is a ``TextEncoderModule``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint as ck
from ..refs import FileId, ModelKey, ModelRef
from . import registry, text_encoders
from .common import FamilyPlan

#: UNETLoader weight_dtype -> storage dtype name (None: the store's dtype)
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn",
                 "fp8_e5m2": "float8_e5m2"}


class TextEncoderModule(torch.nn.Module):
    """One loaded text encoder: ``model`` (transformers), ``kind`` ('clip_l'|'clip_g'|'t5'|'qwen3'), ``tokenizer``."""

    def __init__(self, model, kind: str, tokenizer):
        super().__init__()
        self.model, self.kind, self.tokenizer = model, kind, tokenizer


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


def _cache(store) -> dict:
    if not hasattr(store, "_family_sources"):
        store._family_sources = {}
    return store._family_sources


def source(store, path: Path, role: str):
    """(FileId, header, plan) for a diffusion-model (role 'dm': FamilyPlan) or text-encoder file (role 'te':
    (kind, prefix, config)); headers only, cached by file identity."""
    fid = FileId.of(path)
    c = _cache(store)
    if (fid, role) not in c:
        store._refuse_pickle(path)
        if path.suffix.lower() in ck.PICKLE_SUFFIXES:
            raise ck.CheckpointError(f"{path.name}: split loaders read .safetensors files only")
        header = ck.read_header(path)
        if role == "dm":
            plan = registry.detect(header.shapes, path.name)
        else:
            kind, prefix = text_encoders.detect(header.shapes, path.name)
            stripped = {k[len(prefix):]: v for k, v in header.shapes.items() if k.startswith(prefix)}
            plan = (kind, prefix, text_encoders.config(kind, stripped))
        c[(fid, role)] = (header, plan)
    return (fid, *c[(fid, role)])


def load_diffusion_model(store, path: Path, name: str, weight_dtype: str = "default") -> ModelRef:
    """MODEL ref for a diffusion-model file; raises UnknownModelFile for files of no known family."""
    fid, header, plan = source(store, path, "dm")
    dt = WEIGHT_DTYPES.get(weight_dtype)
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r}: expected one of {list(WEIGHT_DTYPES)}")
    dt = dt or store.dtype
    s = plan.sampling
    info = (("arch", plan.family), ("family", plan.family), ("name", name),
            ("model_sampling", (s.kind, s.shift, s.multiplier)), ("prediction_type", "flow"),
            ("scaling_factor", plan.latent.scale), ("shift_factor", plan.latent.shift),
            ("latent_channels", plan.latent.channels), ("variant", plan.extra.get("variant", "")))
    return ModelRef("MODEL", ModelKey(fid, "family_dm", dt, store.device), info, store=store)


def load_text_encoder(store, path: Path) -> tuple[str, ModelRef]:
    """(kind, ref) for one text-encoder file."""
    fid, header, (kind, _, _) = source(store, path, "te")
    if kind in text_encoders.TOKENIZER_SOURCES:  # fail at load, not at the first prompt
        dirs = text_encoders.tokenizer_dirs(kind, path, getattr(store.folders, "root", None))
        if not any((d / "tokenizer.json").is_file() for d in dirs):
            raise text_encoders.MissingTokenizer(kind, path.name, dirs)
    return kind, ModelRef("CLIP", ModelKey(fid, "family_te", store.dtype, store.device), (("kind", kind),), store=store)


def _fp8_linears(module, storage: torch.dtype):
    """Keep every block Linear weight in ``storage`` (fp8) and up-cast it per call to the input's dtype (the weights
    stay 1 byte per parameter in memory; compute runs in the activations' dtype)."""
    import torch.nn.functional as F

    for name, m in module.named_modules():
        # embedders and the output head stay in the compute dtype (diffusers casts inputs to their dtype)
        if isinstance(m, torch.nn.Linear) and not any(w in name for w in ("embed", "final", "norm_out", "proj_out")):
            m.weight.data = m.weight.data.to(storage)
            m.forward = (lambda lin: lambda x: F.linear(x, lin.weight.to(x.dtype),
                                                        None if lin.bias is None else lin.bias.to(x.dtype)))(m)
    return module


def build(store, key: ModelKey):
    """Build the live module for a 'family_dm' / 'family_te' key (called by the store under its lock)."""
    path = Path(key.file.path)
    if FileId.of(path) != key.file:
        raise ck.CheckpointError(f"{path.name} changed on disk since it was selected; load it again")
    fp8 = key.dtype.startswith("float8")
    dt = torch.float32 if fp8 and store.dtype == "float32" else getattr(torch, store.dtype if fp8 else key.dtype)
    if key.component == "family_dm":
        _, header, plan = source(store, path, "dm")
        keys = [k for k in header.tensors if k.startswith(plan.prefix)]
        sd = {k[len(plan.prefix):]: v for k, v in ck.load_tensors(header, keys, dt).items()}
        m = registry.build(plan, sd)
        if fp8:
            _fp8_linears(m, getattr(torch, key.dtype))
        return m.to(key.device)
    _, header, (kind, prefix, cfg) = source(store, path, "te")
    keys = [k for k in header.tensors if k.startswith(prefix)]
    sd = {k[len(prefix):]: v for k, v in ck.load_tensors(header, keys, dt).items()}
    model = text_encoders.build(kind, cfg, sd).to(key.device)
    if kind in ("clip_l", "clip_g"):
        tok = store.tokenizer("<|endoftext|>" if kind == "clip_l" else "!")
    else:
        tok = text_encoders.load_tokenizer(kind, path, getattr(store.folders, "root", None))
    return TextEncoderModule(model, kind, tok)


def plan_of(ref: ModelRef) -> FamilyPlan:
    """The FamilyPlan behind a MODEL ref of a split diffusion model."""
    return source(ref.store, Path(ref.key.file.path), "dm")[2]
