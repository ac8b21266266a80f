"""diffusers/transformers -> original Stable Diffusion (LDM) single-file checkpoint, and back.

Loom's own converter (written from the LDM layout, not copied from any script). Key layout written:
  model.diffusion_model.*                      UNet (input_blocks / middle_block / output_blocks / time_embed / out)
  first_stage_model.*                          VAE (encoder / decoder / quant_conv / post_quant_conv; attention q/k/v/
                                               proj_out as 1x1 convs)
  cond_stage_model.transformer.text_model.*    CLIP text model (embeddings / encoder.layers / final_layer_norm)

`load_checkpoint` goes the other way, inferring every config value from tensor shapes (the same contract Loom's
engine loader follows) and using diffusers' own LDM->diffusers conversion functions; it is what
bench/quality.py --backend diffusers and the tests use.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _resnet_unet(sd, src: str, dst: str, out: dict):
    for k, v in sd.items():
        if k.startswith(src + "."):
            rest = k[len(src) + 1:]
            for a, b in _RESNET_UNET:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            out[dst + "." + rest] = v


def _copy_prefix(sd, src: str, dst: str, out: dict):
    for k, v in sd.items():
        if k.startswith(src + "."):
            out[dst + k[len(src):]] = v


def unet_to_ldm(sd: dict, config) -> dict:
    """diffusers UNet2DConditionModel state dict -> LDM UNetModel keys (without prefix)."""
    cfg = dict(config)
    lpb = cfg["layers_per_block"]
    n = len(cfg["block_out_channels"])
    out = {}
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in simple.items():
        _copy_prefix(sd, a, b, out)
    idx = 1
    for b in range(n):
        for j in range(lpb):
            _resnet_unet(sd, f"down_blocks.{b}.resnets.{j}", f"input_blocks.{idx}.0", out)
            _copy_prefix(sd, f"down_blocks.{b}.attentions.{j}", f"input_blocks.{idx}.1", out)
            idx += 1
        if f"down_blocks.{b}.downsamplers.0.conv.weight" in sd:
            _copy_prefix(sd, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", out)
            idx += 1
    _resnet_unet(sd, "mid_block.resnets.0", "middle_block.0", out)
    _copy_prefix(sd, "mid_block.attentions.0", "middle_block.1", out)
    _resnet_unet(sd, "mid_block.resnets.1", "middle_block.2", out)
    idx = 0
    for b in range(n):
        has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
        for j in range(lpb + 1):
            _resnet_unet(sd, f"up_blocks.{b}.resnets.{j}", f"output_blocks.{idx}.0", out)
            if has_attn:
                _copy_prefix(sd, f"up_blocks.{b}.attentions.{j}", f"output_blocks.{idx}.1", out)
            if j == lpb and f"up_blocks.{b}.upsamplers.0.conv.weight" in sd:
                _copy_prefix(sd, f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{idx}.{2 if has_attn else 1}.conv",
                             out)
            idx += 1
    if len(out) != len(sd):
        missing = sorted(set(sd) - _unet_sources(sd, out))
        raise ValueError(f"UNet conversion left {len(sd) - len(out)} tensors unmapped, e.g. {missing[:5]}")
    return out


def _unet_sources(sd, out):  # only for the error message
    vals = {id(v) for v in out.values()}
    return {k for k, v in sd.items() if id(v) in vals}


def _vae_attn(sd, src: str, dst: str, out: dict):
    names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for a, b in names.items():
        for s in ("weight", "bias"):
            k = f"{src}.{a}.{s}"
            if k in sd:
                v = sd[k]
                if s == "weight" and a != "group_norm" and v.ndim == 2:
                    v = v[:, :, None, None]  # linear -> 1x1 conv
                out[f"{dst}.{b}.{s}"] = v


def _vae_resnet(sd, src: str, dst: str, out: dict):
    for k, v in sd.items():
        if k.startswith(src + "."):
            out[dst + "." + k[len(src) + 1:].replace("conv_shortcut", "nin_shortcut")] = v


def vae_to_ldm(sd: dict, config) -> dict:
    cfg = dict(config)
    n = len(cfg["block_out_channels"])
    out = {}
    for part in ("encoder", "decoder"):
        _copy_prefix(sd, f"{part}.conv_in", f"{part}.conv_in", out)
        _copy_prefix(sd, f"{part}.conv_out", f"{part}.conv_out", out)
        _copy_prefix(sd, f"{part}.conv_norm_out", f"{part}.norm_out", out)
        _vae_resnet(sd, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", out)
        _vae_resnet(sd, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", out)
        _vae_attn(sd, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", out)
    for i in range(n):
        j = 0
        while f"encoder.down_blocks.{i}.resnets.{j}.conv1.weight" in sd:
            _vae_resnet(sd, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", out)
            j += 1
        _copy_prefix(sd, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", out)
        bid = n - 1 - i  # LDM numbers decoder levels from the lowest resolution up... in reverse
        j = 0
        while f"decoder.up_blocks.{i}.resnets.{j}.conv1.weight" in sd:
            _vae_resnet(sd, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{bid}.block.{j}", out)
            j += 1
        _copy_prefix(sd, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{bid}.upsample.conv", out)
    for k in ("quant_conv", "post_quant_conv"):
        _copy_prefix(sd, k, k, out)
    if len(out) != len(sd):
        raise ValueError(f"VAE conversion mapped {len(out)} of {len(sd)} tensors")
    return out


def clip_to_ldm(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        k = k[len("text_model."):] if k.startswith("text_model.") else k  # transformers 4 layout
        out[k] = v
    return out


def to_ldm_state_dict(unet, vae, text_encoder) -> dict:
    sd = {}
    sd.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    sd.update({CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    return sd


def save_checkpoint(unet, vae, text_encoder, path, dtype=torch.float16, metadata: dict | None = None) -> dict:
    from safetensors.torch import save_file
    sd = {k: v.detach().to(dtype).contiguous() for k, v in to_ldm_state_dict(unet, vae, text_encoder).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return sd


# ------------------------------------------------------------------ LDM -> diffusers (shape inference)
def infer_unet_config(sd: dict) -> dict:
    """diffusers UNet2DConditionModel config from LDM UNet keys (no prefix)."""
    ch = sd["input_blocks.0.0.weight"].shape[0]
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    out_ch = sd["out.2.weight"].shape[0]
    nin = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    downs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    levels = len(downs) + 1
    lpb = (nin - 1 - len(downs)) // levels
    chans, attn = [], []
    idx = 1
    for b in range(levels):
        chans.append(sd[f"input_blocks.{idx}.0.out_layers.3.weight"].shape[0])
        attn.append(f"input_blocks.{idx}.1.proj_in.weight" in sd)
        idx += lpb + (1 if b < levels - 1 else 0)
    ctx = next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    use_linear = sd[next(k for k in sd if k.endswith("proj_in.weight"))].ndim == 2
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.search(r"input_blocks\.\d+\.1\.transformer_blocks\.(\d+)\.", k)))
    return dict(
        sample_size=8, in_channels=in_ch, out_channels=out_ch, layers_per_block=lpb, block_out_channels=tuple(chans),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=ctx, attention_head_dim=8,
        use_linear_projection=use_linear, transformer_layers_per_block=depth,
    )


def infer_vae_config(sd: dict) -> dict:
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    lpb = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    chans = tuple(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels))
    return dict(in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
                latent_channels=sd["post_quant_conv.weight"].shape[0], layers_per_block=lpb,
                block_out_channels=chans, down_block_types=("DownEncoderBlock2D",) * levels,
                up_block_types=("UpDecoderBlock2D",) * levels, sample_size=64, scaling_factor=0.18215)


def infer_clip_config(sd: dict) -> dict:
    hidden = sd["embeddings.token_embedding.weight"].shape[1]
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    return dict(vocab_size=sd["embeddings.token_embedding.weight"].shape[0], hidden_size=hidden,
                intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0], num_hidden_layers=layers,
                num_attention_heads=max(1, hidden // 64),
                max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
                hidden_act="quick_gelu", projection_dim=hidden, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)


def split(sd: dict) -> tuple[dict, dict, dict]:
    u = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    va = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    c = {k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    return u, va, c


def from_ldm_state_dict(sd: dict, dtype=torch.float32):
    """Build (unet, vae, text_encoder) from an LDM-layout state dict, with diffusers' own LDM->diffusers conversion
    for the UNet and VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel
    sd = {k: v.to(dtype) for k, v in sd.items()}
    u, va, c = split(sd)
    ucfg, vcfg, ccfg = infer_unet_config(u), infer_vae_config(va), infer_clip_config(c)
    unet = UNet2DConditionModel(**ucfg)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, unet.config), strict=True)
    vae = AutoencoderKL(**vcfg)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vae.config), strict=True)
    te = CLIPTextModel(CLIPTextConfig(**ccfg))
    csd = convert_ldm_clip_checkpoint(sd)  # strips cond_stage_model.transformer. -> text_model.*
    csd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in csd.items()}
    missing, unexpected = te.load_state_dict(csd, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"CLIP load: missing {missing[:5]} unexpected {unexpected[:5]}")
    return unet.eval(), vae.eval(), te.eval()


def load_checkpoint(path, dtype=torch.float32):
    from safetensors.torch import load_file
    return from_ldm_state_dict(load_file(str(path)), dtype)


def export_from_work(work: Path, out: Path, dtype=torch.float16, use_ema: bool = True, extra_meta: dict | None = None):
    """Write the single-file checkpoint from the trainer's work files (latest UNet checkpoint)."""
    from .train_unet import build_text_encoder, build_unet, load_folded_vae
    st = torch.load(work / "unet_ckpt.pt", weights_only=False)
    unet = build_unet(st["unet_config"])
    te = build_text_encoder(st["text_config"])
    unet.load_state_dict(st["ema_unet" if use_ema else "unet"])
    te.load_state_dict(st["ema_te" if use_ema else "te"])
    vae = load_folded_vae(work)
    meta = {"loom.model": "loom-shapes-64", "loom.arch": "sd1", "loom.step": st["step"],
            "loom.train_seconds": round(st["elapsed"]), "loom.ema": use_ema, "loom.dtype": str(dtype)}
    meta.update(extra_meta or {})
    sd = save_checkpoint(unet.eval(), vae, te.eval(), out, dtype=dtype, metadata=meta)
    return st, len(sd)


def main(argv=None):
    ap = argparse.ArgumentParser(description="export Loom's trained model to an SD1 (LDM layout) safetensors file")
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--out", default="models/checkpoints/loom-shapes-64.safetensors")
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    a = ap.parse_args(argv)
    st, n = export_from_work(Path(a.work), Path(a.out), torch.float32 if a.fp32 else torch.float16, not a.raw)
    print(f"wrote {a.out}: {n} tensors, step {st['step']}, {os.path.getsize(a.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
