"""The Stable Diffusion family (sd1, sd2, sdxl): LDM single-file checkpoints and diffusers folders, built as
diffusers ``UNet2DConditionModel``/``AutoencoderKL`` and transformers CLIP text encoders (see ``modelstore.arch``
for the detection rules and ``modelstore.plan`` for what is inferred from shapes)."""
from __future__ import annotations

from typing import Any

from ..arch import UNET_PREFIX
from ..build import build_text_encoder, build_unet, build_vae, use_sdpa
from ..convert import ldm_unet_module_map
from ..lora import apply_lora
from ..plan import CheckpointPlan, component_keys, plan_checkpoint, plan_diffusers_folder
from ..refs import ModelKey, TextEncoders
from ..sources import Source
from .base import BuildContext


class StableDiffusion:
    """Family 'sd': the fallback for any checkpoint with an LDM UNet (``model.diffusion_model.``), and diffusers
    folders whose ``unet/`` is a ``UNet2DConditionModel``."""
    name = "sd"
    priority = 0

    def claims(self, src: Source) -> bool:
        if src.kind == "diffusers":
            return (src.path / "unet" / "config.json").is_file()
        return any(k.startswith(UNET_PREFIX) for k in src.header.tensors)

    def plan(self, src: Source) -> CheckpointPlan:
        return plan_diffusers_folder(src.path) if src.kind == "diffusers" else plan_checkpoint(src.header)

    def build(self, component: str, src: Source, plan: CheckpointPlan, key: ModelKey, ctx: BuildContext) -> Any:
        dt, dev = ctx.torch_dtype(key), key.device
        if src.kind == "diffusers":
            return _build_diffusers(src, plan, component, dt, dev, ctx)
        header = src.header
        if component == "clip":
            encs = tuple(build_text_encoder(tp, ctx.sources.tensors(src, component_keys(header, plan, "clip", i), dt, dev),
                                            dev) for i, tp in enumerate(plan.text_encoders))
            return TextEncoders(plan.arch, encs, tuple(ctx.tokenizer(tp.pad_token) for tp in plan.text_encoders))
        keys = component_keys(header, plan, component)
        if component == "unet":
            m = build_unet(plan.unet, ctx.sources.tensors(src, keys, dt, dev), dev)
            m._loom_ldm_names = ldm_unet_module_map(keys, plan.unet)
        else:
            m = build_vae(plan.vae, ctx.sources.tensors(src, keys, dt, dev), dev)
        return _layout(m, ctx)

    def patch(self, component: str, base: Any, lora_state: dict, strength: float) -> Any:
        if component == "unet":
            return apply_lora(base, lora_state, strength, "unet")
        encs = tuple(apply_lora(te, lora_state, strength, f"te{i + 1}") for i, te in enumerate(base.encoders))
        out = TextEncoders(base.arch, encs, base.tokenizers)
        out._loom_own_bytes = sum(e._loom_own_bytes for e in encs)
        return out


def _layout(m, ctx: BuildContext):
    if ctx.channels_last:
        import torch

        m.to(memory_format=torch.channels_last)
    return m


def _build_diffusers(src: Source, plan: CheckpointPlan, comp: str, dt, dev, ctx: BuildContext) -> Any:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = src.path
    if comp in ("unet", "vae"):
        cls = UNet2DConditionModel if comp == "unet" else AutoencoderKL
        m = cls.from_pretrained(path, subfolder=comp, torch_dtype=dt, local_files_only=True).to(dev)
        use_sdpa(m)
        return _layout(m, ctx).requires_grad_(False).eval()
    encs, toks = [], []
    for tp in plan.text_encoders:
        cls = CLIPTextModelWithProjection if tp.projection else CLIPTextModel
        encs.append(cls.from_pretrained(path / tp.prefix, torch_dtype=dt, local_files_only=True)
                    .to(dev).requires_grad_(False).eval())
        tdir = path / tp.prefix.replace("text_encoder", "tokenizer")
        toks.append(ctx.tokenizer(folder=str(tdir)) if tdir.is_dir() else ctx.tokenizer(tp.pad_token))
    return TextEncoders(plan.arch, tuple(encs), tuple(toks))


FAMILIES = [StableDiffusion()]
