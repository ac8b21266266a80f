"""Split files of the transformer families: diffusion models ('family_dm', socket MODEL: SD3, FLUX.1, Z-Image;
family detected from the tensors) and standalone text encoders ('family_te', socket CLIP: CLIP-L/G, T5, Qwen3).
Each file is its own store entry, so the budget keeps, drops or offloads every component on its own.
Plans and builds live in ``modelstore.families``; the ModelKey dtype of an fp8 diffusion model reads
``float8_e4m3fn+float32`` (storage + compute dtype)."""
from __future__ import annotations

from typing import Any

from ..refs import ModelKey, module_nbytes
from ..sources import Source
from ..tensorfile import CheckpointError
from .base import BuildContext


def _header(src: Source):
    if src.header is None or src.kind != "safetensors":
        raise CheckpointError(f"{src.path.name}: split loaders read single .safetensors files")
    return src.header


class DiffusionModelFiles:
    components = ("family_dm",)
    socket = "MODEL"
    folder = "diffusion_models"

    def plan(self, src: Source, ctx: BuildContext):
        from ..families import registry

        return ctx.sources.plan(src, "family_dm", lambda s: registry.detect(_header(s).shapes, s.path.name))

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        p = self.plan(src, ctx)
        s = p.sampling
        return (("arch", p.family), ("family", p.family), ("model_sampling", (s.kind, s.shift, s.multiplier)),
                ("prediction_type", "flow"), ("scaling_factor", p.latent.scale), ("shift_factor", p.latent.shift),
                ("latent_channels", p.latent.channels), ("variant", p.extra.get("variant", ""))) + p.latent_meta()

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        import torch

        from ..families import registry
        from ..families.common import dequantize_scaled_fp8
        from ..families.store import fp8_linears

        src = ctx.sources.current(key.file)
        plan = self.plan(src, ctx)
        storage, _, compute = key.dtype.partition("+")
        dt = getattr(torch, compute or storage)
        keys = [k for k in src.header.tensors if k.startswith(plan.prefix)]
        sd = {k[len(plan.prefix):]: v for k, v in ctx.sources.tensors(src, keys, dt).items()}
        m = registry.build(plan, dequantize_scaled_fp8(sd))
        if compute:
            fp8_linears(m, getattr(torch, storage))
        return m.to(key.device)

    def patch(self, key: ModelKey, base: Any, lora_state: dict, strength: float, ctx: BuildContext) -> Any:
        from ..families.lora import patch_model

        return patch_model(base, lora_state, strength, getattr(lora_state, "name", "LoRA"))

    def nbytes(self, value: Any) -> int:
        return _own_bytes(value, value)


class TextEncoderFiles:
    components = ("family_te",)
    socket = "CLIP"
    folder = "text_encoders"

    def plan(self, src: Source, ctx: BuildContext):
        from ..families import text_encoders as te

        def make(s):
            shapes = _header(s).shapes
            kind, prefix = te.detect(shapes, s.path.name)
            return kind, prefix, te.config(kind, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)})
        return ctx.sources.plan(src, "family_te", make)

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        return (("kind", self.plan(src, ctx)[0]),)

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        from ..families import text_encoders as te
        from ..families.common import dequantize_scaled_fp8
        from ..families.store import TextEncoderModule

        src = ctx.sources.current(key.file)
        kind, prefix, cfg = self.plan(src, ctx)
        keys = [k for k in src.header.tensors if k.startswith(prefix) and te.loads(kind, k[len(prefix):])]
        sd = {k[len(prefix):]: v for k, v in ctx.sources.tensors(src, keys, ctx.torch_dtype(key)).items()}
        model = te.build(kind, cfg, dequantize_scaled_fp8(sd)).to(key.device)
        if kind in ("clip_l", "clip_g"):
            tok = ctx.tokenizer("<|endoftext|>" if kind == "clip_l" else "!")
        else:  # the folder found when the file was selected (see families.store.load_text_encoder)
            folder = ctx.sources.plan(src, "family_te_tokenizer", lambda s: None)
            tok = te.load_tokenizer(kind, src.path, None, folder)
        return TextEncoderModule(model, kind, tok)

    def patch(self, key: ModelKey, base: Any, lora_state: dict, strength: float, ctx: BuildContext) -> Any:
        return _patch_text_encoder(base, lora_state, strength)

    def nbytes(self, value: Any) -> int:
        return _own_bytes(value, value.model)


#: text-encoder kind -> the LoRA component its keys use (kohya lora_te1_/lora_te_ and text_encoder. = CLIP-L,
#: lora_te2_ and text_encoder_2. = CLIP-G as in SD3 LoRAs); T5 and Qwen3 LoRAs are not applied
TE_LORA_COMPONENT = {"clip_l": "te1", "clip_g": "te2"}


def _patch_text_encoder(base, lora_state: dict, strength: float):
    """A TextEncoderModule whose transformers model is LoRA-patched (``modelstore.lora.apply_lora``)."""
    from ..families.store import TextEncoderModule
    from ..lora import apply_lora

    comp = TE_LORA_COMPONENT.get(base.kind)
    if comp is None:
        raise CheckpointError(f"{getattr(lora_state, 'name', 'LoRA')}: LoRA on a {base.kind} text encoder is not "
                              "supported (CLIP-L and CLIP-G are)")
    model = apply_lora(base.model, lora_state, strength, comp)
    out = TextEncoderModule(model, base.kind, base.tokenizer)
    out._loom_own_bytes = model._loom_own_bytes
    out._loom_lora_unmatched = model._loom_lora_unmatched
    out._loom_lora_applied = model._loom_lora_applied
    return out


def _own_bytes(value, whole) -> int:
    """Bytes a value owns: a LoRA-patched copy only its new tensors, a built one all of ``whole``."""
    own = getattr(value, "_loom_own_bytes", None)
    return module_nbytes(whole) if own is None else own


LOADERS = [DiffusionModelFiles(), TextEncoderFiles()]


class TransformerCheckpoints:
    """Family 'transformer': all-in-one SD3 / FLUX.1 / Z-Image checkpoints (see modelstore.families.checkpoint).
    Priority above the SD fallback, which would otherwise claim any ``model.diffusion_model.`` file."""
    name = "transformer"
    priority = 10

    def claims(self, src: Source) -> bool:
        from ..families.checkpoint import claims

        return src.kind == "safetensors" and claims(src.header.shapes)

    def plan(self, src: Source):
        from ..families.checkpoint import plan

        return plan(src.header.shapes, src.path.name)

    def build(self, component: str, src: Source, plan, key: ModelKey, ctx: BuildContext) -> Any:
        import torch

        from ..build import build_vae
        from ..families import registry, text_encoders as te
        from ..families.checkpoint import tokenizer_folder
        from ..families.store import TextEncoderBundle, TextEncoderModule

        dt = getattr(torch, key.dtype)
        names = list(src.header.tensors)
        if component == "unet":
            p = "model.diffusion_model."
            sd = {k[len(p):]: v for k, v in ctx.sources.tensors(src, [k for k in names if k.startswith(p)], dt).items()}
            return registry.build(plan.dm, sd).to(key.device)
        if component == "vae":
            vp = plan.vae_prefix
            keys = [k for k in names if k.startswith(vp + "encoder.") or k.startswith(vp + "decoder.")
                    or k.startswith(vp + "quant_conv.") or k.startswith(vp + "post_quant_conv.")]
            return build_vae(plan.vae, ctx.sources.tensors(src, keys, dt, key.device), key.device)
        mods = []
        for kind, prefix, cfg in plan.text_encoders:
            sd = {k[len(prefix):]: v for k, v in
                  ctx.sources.tensors(src, [k for k in names if k.startswith(prefix)], dt).items()}
            model = te.build(kind, cfg, sd).to(key.device)
            if kind in ("clip_l", "clip_g"):
                tok = ctx.tokenizer("<|endoftext|>" if kind == "clip_l" else "!")
            else:
                tok = te.load_tokenizer(kind, src.path, None, tokenizer_folder(kind, src.path))
            mods.append(TextEncoderModule(model, kind, tok))
        return TextEncoderBundle(dict(plan.info())["clip_type"], tuple(mods))

    def patch(self, component: str, base: Any, lora_state: dict, strength: float) -> Any:
        from ..families.lora import patch_model
        from ..families.store import TextEncoderBundle

        if component == "unet":
            return patch_model(base, lora_state, strength, getattr(lora_state, "name", "LoRA"))
        if component != "clip":
            raise CheckpointError(f"LoRA cannot patch a checkpoint's {component}")
        mods = [(_patch_text_encoder(m, lora_state, strength) if m.kind in TE_LORA_COMPONENT else m)
                for m in base.encoders]
        out = TextEncoderBundle(base.clip_type, tuple(mods))
        out._loom_own_bytes = sum(getattr(m, "_loom_own_bytes", 0) for m in mods)
        out._loom_lora_unmatched = [k for m in mods for k in getattr(m, "_loom_lora_unmatched", [])]
        return out


FAMILIES = [TransformerCheckpoints()]


class SDUNetFiles:
    """UNet-only files of the SD family ('sd_unet', UNETLoader): SD1/SD2/SDXL UNets in the LDM layout, with or
    without the ``model.diffusion_model.`` prefix; prediction type from a sidecar yaml or metadata as for
    checkpoints."""
    components = ("sd_unet",)
    socket = "MODEL"
    folder = "diffusion_models"

    def plan(self, src: Source, ctx: BuildContext):
        from dataclasses import replace

        from ..plan import plan_checkpoint

        def make(s):
            h = _header(s)
            p = "model.diffusion_model."
            if not any(k.startswith(p) for k in h.tensors):
                h = replace(h, tensors={p + k: v for k, v in h.tensors.items()})
            return h, plan_checkpoint(h)
        return ctx.sources.plan(src, "sd_unet", make)

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        return self.plan(src, ctx)[1].info()

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        from ..build import build_unet
        from ..convert import ldm_unet_module_map
        from ..plan import component_keys
        from ..tensorfile import load_tensors

        src = ctx.sources.current(key.file)
        header, plan = self.plan(src, ctx)
        keys = component_keys(header, plan, "unet")
        m = build_unet(plan.unet, load_tensors(header, keys, ctx.torch_dtype(key), key.device), key.device)
        m._loom_ldm_names = ldm_unet_module_map(keys, plan.unet)
        return m

    def patch(self, key: ModelKey, base: Any, lora_state: dict, strength: float, ctx: BuildContext) -> Any:
        from ..lora import apply_lora

        return apply_lora(base, lora_state, strength, "unet")

    def nbytes(self, value: Any) -> int:
        return _own_bytes(value, value)


LOADERS.append(SDUNetFiles())
