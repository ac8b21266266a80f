"""Stable Diffusion architecture detection and component config inference from tensor shapes alone.

Architecture rules (what shapes cannot tell):
- ``sd1``: UNet ``attention_head_dim=8`` (= 8 heads per level), CLIP heads = hidden/64, ``quick_gelu``.
- ``sd2``: UNet head dim 64 (heads = channels/64), OpenCLIP text encoder, ``gelu``, the last resblock is dropped
  (SD2 conditions on the penultimate layer; same as diffusers and ComfyUI's default).
- ``sdxl``: UNet head dim 64, ``text_time`` added embedding (time embed dim 256); CLIP-L (``quick_gelu``,
  penultimate layer used by the sampler) + OpenCLIP-G with projection (``gelu``).
- Prediction type: ``epsilon`` unless a hint says ``v``: a sidecar ``<name>.yaml`` with
  ``parameterization: "v"``, safetensors ``__metadata__`` (``modelspec.prediction_type``/``prediction_type`` =
  ``v``/``v_prediction``, or kohya's ``ss_v_parameterization`` = ``true``), or a ``v_pred`` key in the file.
- VAE scaling factor 0.18215 (sd1/sd2), 0.13025 (sdxl).
"""
from __future__ import annotations

import re

from .tensorfile import CheckpointError, Header

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SCALING_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


# ---------------------------------------------------------------------------------------------- detection
def key_indices(shapes, prefix: str) -> list[int]:
    """Sorted distinct integers that directly follow ``prefix`` in the keys."""
    out = set()
    for k in shapes:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return sorted(out)


def freeze_config(cfg: dict) -> tuple:
    """A diffusers config dict as sorted (name, value) pairs, lists made tuples: hashable, for frozen plans."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()))


def thaw_config(pairs: tuple) -> dict:
    """The config dict back from ``freeze_config``'s pairs (tuples made lists again), as model kwargs."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pairs}


def detect_arch(shapes) -> str:
    """'sd1' | 'sd2' | 'sdxl' from the keys: the text encoder layout first, then UNet hints."""
    if any(k.startswith(SDXL_CLIP_G_PREFIX) for k in shapes) or UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        return "sdxl"
    if SD2_CLIP_PREFIX + "token_embedding.weight" in shapes:
        return "sd2"
    if SD1_CLIP_PREFIX + "embeddings.token_embedding.weight" in shapes:
        return "sd1"
    proj = [v for k, v in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if not proj:
        raise CheckpointError("no Stable Diffusion UNet found (no model.diffusion_model.*proj_in keys)")
    return "sd2" if len(proj[0]) == 2 else "sd1"


def detect_prediction_type(header: Header) -> str:
    """'epsilon' or 'v_prediction' from a sidecar yaml, safetensors metadata or a ``v_pred`` key."""
    m = header.metadata
    for key in ("modelspec.prediction_type", "prediction_type"):
        if m.get(key, "").strip().lower() in ("v", "v_prediction", "v-prediction"):
            return "v_prediction"
    if m.get("ss_v_parameterization", "").strip().lower() == "true" or "v_pred" in header.tensors:
        return "v_prediction"
    yaml = header.path.with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text(errors="replace")
        if re.search(r"""^\s*parameterization\s*:\s*["']?v["']?\s*(#.*)?$""", text, re.M):
            return "v_prediction"
    return "epsilon"


# ----------------------------------------------------------------------------------------- config inference
def infer_unet_config(shapes, arch: str, prefix: str = UNET_PREFIX) -> dict:
    """diffusers ``UNet2DConditionModel`` config from LDM UNet key shapes (levels, channels, attention...)."""
    P = prefix

    def shp(k):
        if P + k not in shapes:
            raise CheckpointError(f"UNet key {P + k} missing: cannot infer the UNet config")
        return shapes[P + k]

    conv_in = shp("input_blocks.0.0.weight")
    n_in = len(key_indices(shapes, P + "input_blocks."))
    n_down = sum(1 for i in range(n_in) if P + f"input_blocks.{i}.0.op.weight" in shapes)
    levels = n_down + 1
    lpb, rem = divmod(n_in - 1 - n_down, levels)
    if rem or lpb < 1:
        raise CheckpointError(f"UNet has {n_in} input blocks and {n_down} downsamplers: not an SD layout")
    chans, attn, depth = [], [], []
    for lvl in range(levels):
        first = 1 + lvl * (lpb + 1)
        chans.append(shp(f"input_blocks.{first}.0.out_layers.3.weight")[0])
        has = P + f"input_blocks.{first}.1.proj_in.weight" in shapes
        attn.append(has)
        depth.append(len(key_indices(shapes, P + f"input_blocks.{first}.1.transformer_blocks.")) if has else 1)
    if P + "middle_block.1.proj_in.weight" not in shapes:
        raise CheckpointError("UNet middle block without attention is not supported")
    mid_depth = len(key_indices(shapes, P + "middle_block.1.transformer_blocks."))
    if not attn[-1]:
        depth[-1] = mid_depth
    elif depth[-1] != mid_depth:
        raise CheckpointError(f"UNet mid transformer depth {mid_depth} != last level depth {depth[-1]}")
    proj_in = shp("middle_block.1.proj_in.weight")
    ctx = shp("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    temb = shp("time_embed.0.weight")[0]
    if temb != 4 * chans[0]:
        raise CheckpointError(f"UNet time embedding {temb} != 4 x {chans[0]} channels")
    if arch == "sd1":
        heads: int | list[int] = 8
    else:
        if any(c % 64 for c in chans):
            raise CheckpointError(f"{arch} UNet channels {chans} are not multiples of the head dim 64")
        heads = [c // 64 for c in chans]
    cfg = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[arch],
        "in_channels": conv_in[1],
        "out_channels": shp("out.2.weight")[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": chans,
        "layers_per_block": lpb,
        "cross_attention_dim": ctx,
        "attention_head_dim": heads,
        "use_linear_projection": len(proj_in) == 2,
        "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
    }
    if P + "label_emb.0.0.weight" in shapes:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=shp("label_emb.0.0.weight")[1])
    return cfg


def vae_prefix(shapes) -> str:
    """Key prefix of the LDM VAE in ``shapes`` ('first_stage_model.', 'vae.' or '' for standalone files)."""
    for p in VAE_PREFIXES + ("",):
        if p + "encoder.conv_in.weight" in shapes:
            return p
    raise CheckpointError("no VAE (encoder.conv_in.weight) found")


def infer_vae_config(shapes, prefix: str, scaling_factor: float) -> dict:
    """diffusers ``AutoencoderKL`` config from LDM VAE key shapes."""
    P = prefix
    levels = key_indices(shapes, P + "encoder.down.")
    if not levels:
        raise CheckpointError("VAE has no encoder.down.* blocks")
    chans = [shapes[P + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    return {
        "in_channels": shapes[P + "encoder.conv_in.weight"][1],
        "out_channels": shapes[P + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * len(chans),
        "up_block_types": ["UpDecoderBlock2D"] * len(chans),
        "block_out_channels": chans,
        "layers_per_block": len(key_indices(shapes, P + "encoder.down.0.block.")),
        "latent_channels": shapes[P + "decoder.conv_in.weight"][1],
        "sample_size": 512,
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": P + "encoder.mid.attn_1.q.weight" in shapes,
        "use_quant_conv": P + "quant_conv.weight" in shapes,
        "use_post_quant_conv": P + "post_quant_conv.weight" in shapes,
    }


def infer_clip_config(shapes, prefix: str, act: str = "quick_gelu") -> dict:
    """transformers ``CLIPTextConfig`` kwargs from HF-layout CLIP keys under ``prefix`` (ends 'text_model.')."""
    tok = shapes[prefix + "embeddings.token_embedding.weight"]
    hidden = tok[1]
    if hidden % 64:
        raise CheckpointError(f"CLIP hidden size {hidden} is not a multiple of the head dim 64")
    return dict(vocab_size=tok[0], hidden_size=hidden, num_attention_heads=hidden // 64,
                intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
                num_hidden_layers=len(key_indices(shapes, prefix + "encoder.layers.")),
                max_position_embeddings=shapes[prefix + "embeddings.position_embedding.weight"][0],
                hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def infer_openclip_config(shapes, prefix: str, drop_last: bool) -> dict:
    """``CLIPTextConfig`` kwargs from OpenCLIP keys (``token_embedding``, ``transformer.resblocks.N``)."""
    tok = shapes[prefix + "token_embedding.weight"]
    hidden = tok[1]
    if hidden % 64:
        raise CheckpointError(f"OpenCLIP width {hidden} is not a multiple of the head dim 64")
    n = len(key_indices(shapes, prefix + "transformer.resblocks."))
    proj = shapes.get(prefix + "text_projection")
    return dict(vocab_size=tok[0], hidden_size=hidden, num_attention_heads=hidden // 64,
                intermediate_size=shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
                num_hidden_layers=n - 1 if drop_last else n,
                max_position_embeddings=shapes[prefix + "positional_embedding"][0],
                projection_dim=proj[1] if proj is not None else hidden,
                hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0)


def scheduler_config(prediction_type: str) -> dict:
    """SD1/2/XL training scheduler: scaled_linear 0.00085..0.012, 1000 steps (diffusers kwargs)."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": prediction_type, "set_alpha_to_one": False,
            "steps_offset": 1, "clip_sample": False, "skip_prk_steps": True, "timestep_spacing": "leading"}

