"""Checkpoint plans: everything known about a checkpoint, standalone VAE file or diffusers folder before any
weight is read (architecture, prediction type, component configs, which keys belong to which component)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .arch import (SCALING_FACTOR, scheduler_config, SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX,
                   UNET_PREFIX, key_indices, detect_arch, detect_prediction_type, infer_clip_config,
                   infer_openclip_config, infer_unet_config, infer_vae_config, vae_prefix)
from .tensorfile import CheckpointError, Header


@dataclass
class TextEncoderPlan:
    """How to build one text encoder: ``layout`` 'clip' (HF keys) or 'openclip'; ``projection`` says
    CLIPTextModelWithProjection; ``pad_token`` is the tokenizer's pad ('<|endoftext|>' or '!')."""
    layout: str
    prefix: str
    config: dict
    projection: bool = False
    pad_token: str = "<|endoftext|>"


@dataclass
class CheckpointPlan:
    """Everything known about a checkpoint without reading weights."""
    arch: str
    prediction_type: str
    unet: dict
    vae: dict | None
    vae_prefix: str
    text_encoders: list[TextEncoderPlan] = field(default_factory=list)
    scaling_factor: float = 0.18215

    @property
    def inpaint(self) -> bool:
        return self.unet["in_channels"] == 9

    def info(self) -> tuple:
        """(name, value) pairs the refs carry as ``meta`` (see ``modelstore.models``)."""
        return (("arch", self.arch), ("prediction_type", self.prediction_type),
                ("scaling_factor", self.scaling_factor), ("inpaint", self.inpaint),
                ("scheduler_config", tuple(sorted(scheduler_config(self.prediction_type).items()))))

    def components(self) -> dict[str, str]:
        """{'MODEL'|'CLIP'|'VAE': component} for the parts this checkpoint holds."""
        out = {"MODEL": "unet"}
        if self.text_encoders:
            out["CLIP"] = "clip"
        if self.vae:
            out["VAE"] = "vae"
        return out


def plan_checkpoint(header: Header) -> CheckpointPlan:
    """Detect the architecture and infer every component config from ``header`` shapes."""
    shapes = header.shapes
    arch = detect_arch(shapes)
    sf = SCALING_FACTOR[arch]
    unet = infer_unet_config(shapes, arch)
    try:
        vp = vae_prefix(shapes)
        vae = infer_vae_config(shapes, vp, sf)
    except CheckpointError:
        vp, vae = "", None
    tes = []
    if arch == "sd1" and SD1_CLIP_PREFIX + "embeddings.token_embedding.weight" in shapes:
        tes.append(TextEncoderPlan("clip", SD1_CLIP_PREFIX, infer_clip_config(shapes, SD1_CLIP_PREFIX)))
    elif arch == "sd2" and SD2_CLIP_PREFIX + "token_embedding.weight" in shapes:
        tes.append(TextEncoderPlan("openclip", SD2_CLIP_PREFIX, infer_openclip_config(shapes, SD2_CLIP_PREFIX, True),
                                   pad_token="!"))
    elif arch == "sdxl":
        if SDXL_CLIP_L_PREFIX + "embeddings.token_embedding.weight" in shapes:
            tes.append(TextEncoderPlan("clip", SDXL_CLIP_L_PREFIX, infer_clip_config(shapes, SDXL_CLIP_L_PREFIX)))
        if SDXL_CLIP_G_PREFIX + "token_embedding.weight" in shapes:
            tes.append(TextEncoderPlan("openclip", SDXL_CLIP_G_PREFIX,
                                       infer_openclip_config(shapes, SDXL_CLIP_G_PREFIX, False), True, "!"))
        refiner_g = "conditioner.embedders.0.model."  # the SDXL refiner conditions on OpenCLIP-G alone
        if refiner_g + "token_embedding.weight" in shapes:
            tes.append(TextEncoderPlan("openclip", refiner_g, infer_openclip_config(shapes, refiner_g, False), True, "!"))
    return CheckpointPlan(arch, detect_prediction_type(header), unet, vae, vp, tes, sf)


def component_keys(header: Header, plan: CheckpointPlan, component: str, index: int = 0) -> list[str]:
    """The file keys one component needs: 'unet', 'vae' or 'clip' (text encoder ``index``)."""
    if component == "unet":
        p = UNET_PREFIX
    elif component == "vae":
        p = plan.vae_prefix
        return [k for k in header.tensors if k.startswith(p + "encoder.") or k.startswith(p + "decoder.")
                or k.startswith(p + "quant_conv.") or k.startswith(p + "post_quant_conv.")]
    else:
        p = plan.text_encoders[index].prefix
    return [k for k in header.tensors if k.startswith(p)]



# ----------------------------------------------------------------------------- standalone VAE files
def vae_file_plan(header: Header) -> tuple[str, dict]:
    """('ldm'|'diffusers', AutoencoderKL config) for a standalone VAE file (scaling factor 0.18215: shapes
    can't tell an SDXL VAE apart; latents are scaled by the MODEL's factor, see models.py)."""
    shapes = header.shapes
    if any(k.startswith("encoder.down_blocks.") for k in shapes):
        levels = key_indices(shapes, "encoder.down_blocks.")
        mid_attn = any(k.startswith("encoder.mid_block.attentions.0.") for k in shapes)
        return "diffusers", {
            "in_channels": shapes["encoder.conv_in.weight"][1],
            "out_channels": shapes["decoder.conv_out.weight"][0],
            "down_block_types": ["DownEncoderBlock2D"] * len(levels),
            "up_block_types": ["UpDecoderBlock2D"] * len(levels),
            "block_out_channels": [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in levels],
            "layers_per_block": len(key_indices(shapes, "encoder.down_blocks.0.resnets.")),
            "latent_channels": shapes["decoder.conv_in.weight"][1], "sample_size": 512,
            "scaling_factor": 0.18215, "mid_block_add_attention": mid_attn,
            "use_quant_conv": "quant_conv.weight" in shapes, "use_post_quant_conv": "post_quant_conv.weight" in shapes}
    return "ldm", infer_vae_config(shapes, vae_prefix(shapes), 0.18215)



# ------------------------------------------------------------------------------------- diffusers folders
def plan_diffusers_folder(path: str | Path) -> CheckpointPlan:
    """A CheckpointPlan for a diffusers folder (model_index.json); configs come from its json files.
    Text encoder plans use layout 'diffusers' with ``prefix`` = subfolder name."""
    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    ucfg = json.loads((path / "unet" / "config.json").read_text())
    if ucfg.get("addition_embed_type") == "text_time":
        arch = "sdxl"
    elif ucfg.get("use_linear_projection") or ucfg.get("cross_attention_dim") == 1024:
        arch = "sd2"
    else:
        arch = "sd1"
    sched = path / "scheduler" / "scheduler_config.json"
    pred = json.loads(sched.read_text()).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    vae_json = path / "vae" / "config.json"
    vae = json.loads(vae_json.read_text()) if vae_json.is_file() else None
    tes = [TextEncoderPlan("diffusers", sub, {}, projection=index[sub][1] == "CLIPTextModelWithProjection")
           for sub in ("text_encoder", "text_encoder_2") if (index.get(sub) or [None])[0]]
    sf = (vae or {}).get("scaling_factor", SCALING_FACTOR[arch])
    return CheckpointPlan(arch, pred, ucfg, vae, "vae", tes, sf)

