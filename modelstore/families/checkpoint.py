"""All-in-one checkpoints of the transformer families (CheckpointLoaderSimple): the diffusion model under
``model.diffusion_model.``, text encoders under ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.`` and the VAE
under ``first_stage_model.`` or ``vae.`` (the layout of ComfyUI's SD3.5 / FLUX.1 checkpoint files). The CLIP
value is a ``TextEncoderBundle`` (encoded by nodes/family_encode.py with the loader type the family implies)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..tensorfile import CheckpointError
from . import registry, text_encoders
from .common import FamilyPlan

TE_PREFIX = "text_encoders.{}.transformer."
TE_NAMES = ("clip_l", "clip_g", "t5xxl")
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_TYPE = {"flux": "flux", "sd3": "sd3", "zimage": "lumina2", "qwen_image": "qwen_image"}


@dataclass
class CheckpointFamilyPlan:
    """Plan of an all-in-one checkpoint: the diffusion model's FamilyPlan, text encoders as
    (kind, prefix, config) triples, and the VAE prefix + AutoencoderKL config (None when absent)."""
    dm: FamilyPlan
    text_encoders: list = field(default_factory=list)
    vae_prefix: str = ""
    vae: dict | None = None

    @property
    def arch(self) -> str:
        return self.dm.family

    def info(self) -> tuple:
        p, s = self.dm, self.dm.sampling
        return (("arch", p.family), ("family", p.family), ("model_sampling", (s.kind, s.shift, s.multiplier)),
                ("prediction_type", "flow"), ("scaling_factor", p.latent.scale), ("shift_factor", p.latent.shift),
                ("latent_channels", p.latent.channels), ("variant", p.extra.get("variant", "")),
                ("clip_type", CLIP_TYPE[p.family])) + p.latent_meta()

    def components(self) -> dict[str, str]:
        out = {"MODEL": "unet"}
        if self.text_encoders:
            out["CLIP"] = "clip"
        if self.vae is not None:
            out["VAE"] = "vae"
        return out


def claims(shapes) -> bool:
    """True when the checkpoint's ``model.diffusion_model.`` tensors are a transformer family's."""
    p = "model.diffusion_model."
    sub = {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    return bool(sub) and any(mod.matches(sub) for mod, _ in registry.FAMILIES.values())


def plan(shapes, name: str) -> CheckpointFamilyPlan:
    from ..arch import infer_vae_config

    p = "model.diffusion_model."
    dm = registry.detect({k: v for k, v in shapes.items() if k.startswith(p)}, name)
    tes = []
    for te_name in TE_NAMES:
        pre = TE_PREFIX.format(te_name)
        sub = {k[len(pre):]: v for k, v in shapes.items() if k.startswith(pre)}
        if sub:
            kind, inner = text_encoders.detect(sub, f"{name}:{te_name}")
            s2 = {k[len(inner):]: v for k, v in sub.items() if k.startswith(inner)}
            tes.append((kind, pre + inner, text_encoders.config(kind, s2)))
    vp, vae = "", None
    for cand in VAE_PREFIXES:
        if cand + "encoder.conv_in.weight" in shapes:
            vp, vae = cand, infer_vae_config(shapes, cand, dm.latent.scale)
            break
    return CheckpointFamilyPlan(dm, tes, vp, vae)


def tokenizer_folder(kind: str, path: Path) -> Path:
    """Tokenizer folder for a T5/Qwen3 encoder inside checkpoint ``path``: beside it, or models/tokenizers/<kind>
    (the checkpoint's folder's parent taken as the models root)."""
    return text_encoders.find_tokenizer(kind, path, path.parent.parent)
