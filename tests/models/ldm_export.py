"""Test helper: diffusers modules -> original (LDM) single-file key layout.

Written independently from engine/checkpoint.py (which goes the other way) so round trips test something.
Generic in the number of levels and ``layers_per_block``. Tensors are shared, not copied (except the VAE
attention 1x1-conv reshape and the OpenCLIP q/k/v concatenation).
"""
from __future__ import annotations

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _sub(name: str, pairs) -> str:
    for a, b in pairs:
        name = name.replace(a, b)
    return name


def unet_to_ldm(unet) -> dict:
    """``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` keys."""
    cfg = unet.config
    lpb = cfg.layers_per_block
    out = {}
    for k, v in unet.state_dict().items():
        p = k.split(".")
        if p[0] in ("time_embedding", "add_embedding"):
            base = {"time_embedding": "time_embed", "add_embedding": "label_emb.0"}[p[0]]
            new = f"{base}.{ {'linear_1': 0, 'linear_2': 2}[p[1]] }.{p[2]}"
        elif p[0] in ("conv_in", "conv_norm_out", "conv_out"):
            new = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}[p[0]] + "." + p[1]
        elif p[0] == "down_blocks":
            lvl, kind = int(p[1]), p[2]
            if kind == "downsamplers":
                new = f"input_blocks.{(lvl + 1) * (lpb + 1)}.0.op." + ".".join(p[5:])
            else:
                idx = 1 + lvl * (lpb + 1) + int(p[3])
                rest = ".".join(p[4:])
                new = (f"input_blocks.{idx}.0.{_sub(rest, _RESNET)}" if kind == "resnets"
                       else f"input_blocks.{idx}.1.{rest}")
        elif p[0] == "mid_block":
            idx = {"resnets": 2 * int(p[2]), "attentions": 1}[p[1]]
            rest = ".".join(p[3:])
            new = f"middle_block.{idx}." + (_sub(rest, _RESNET) if p[1] == "resnets" else rest)
        elif p[0] == "up_blocks":
            lvl, kind = int(p[1]), p[2]
            if kind == "upsamplers":
                has_attn = cfg.up_block_types[lvl].startswith("CrossAttn")
                new = f"output_blocks.{lvl * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv." + p[-1]
            else:
                idx = lvl * (lpb + 1) + int(p[3])
                rest = ".".join(p[4:])
                new = (f"output_blocks.{idx}.0.{_sub(rest, _RESNET)}" if kind == "resnets"
                       else f"output_blocks.{idx}.1.{rest}")
        else:
            raise KeyError(k)
        out["model.diffusion_model." + new] = v
    return out


_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def vae_to_ldm(vae, prefix: str = "first_stage_model.") -> dict:
    """``AutoencoderKL`` state dict -> LDM VAE keys (attention linears become 1x1 convs)."""
    n = len(vae.config.block_out_channels)
    out = {}
    for k, v in vae.state_dict().items():
        p = k.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            new = k
        elif p[1] == "down_blocks":
            if p[3] == "resnets":
                new = f"{p[0]}.down.{p[2]}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            else:
                new = f"{p[0]}.down.{p[2]}.downsample.conv.{p[-1]}"
        elif p[1] == "up_blocks":
            lvl = n - 1 - int(p[2])
            if p[3] == "resnets":
                new = f"{p[0]}.up.{lvl}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            else:
                new = f"{p[0]}.up.{lvl}.upsample.conv.{p[-1]}"
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                new = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
            else:
                new = f"{p[0]}.mid.attn_1." + _sub(".".join(p[4:]), _VAE_ATTN)
                if v.ndim == 2:
                    v = v[:, :, None, None]
        elif p[1] == "conv_norm_out":
            new = f"{p[0]}.norm_out.{p[2]}"
        else:
            new = k
        out[prefix + new] = v
    return out


def clip_to_ldm(te, prefix: str = "cond_stage_model.transformer.text_model.") -> dict:
    """transformers CLIPTextModel -> ``<prefix>embeddings.*`` etc. (HF layout, SD1 / SDXL CLIP-L)."""
    out = {}
    for k, v in te.state_dict().items():
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        if not k.startswith("text_projection"):
            out[prefix + k] = v
    return out


def clip_to_openclip(te, prefix: str, extra_layer: bool) -> dict:
    """transformers CLIP text model -> OpenCLIP keys. ``extra_layer`` appends one random resblock (SD2
    checkpoints carry a last layer the loader drops). ``text_projection`` [hidden, proj] is always written."""
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te.state_dict().items()}
    hidden = te.config.hidden_size
    out = {prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["final_layer_norm.weight"], prefix + "ln_final.bias": sd["final_layer_norm.bias"],
           prefix + "text_projection": (sd["text_projection.weight"].T.contiguous() if "text_projection.weight" in sd
                                        else torch.randn(hidden, hidden))}
    n = te.config.num_hidden_layers
    for i in range(n + (1 if extra_layer else 0)):
        src = i if i < n else n - 1
        L, R = f"encoder.layers.{src}.", f"{prefix}transformer.resblocks.{i}."
        noise = (lambda t: t + 0.01 * torch.randn_like(t)) if i >= n else (lambda t: t)
        for kind in ("weight", "bias"):
            out[R + f"attn.in_proj_{kind}"] = noise(torch.cat([sd[L + f"self_attn.{q}_proj.{kind}"] for q in "qkv"]))
            out[R + f"attn.out_proj.{kind}"] = noise(sd[L + f"self_attn.out_proj.{kind}"])
            out[R + f"ln_1.{kind}"] = noise(sd[L + f"layer_norm1.{kind}"])
            out[R + f"ln_2.{kind}"] = noise(sd[L + f"layer_norm2.{kind}"])
            out[R + f"mlp.c_fc.{kind}"] = noise(sd[L + f"mlp.fc1.{kind}"])
            out[R + f"mlp.c_proj.{kind}"] = noise(sd[L + f"mlp.fc2.{kind}"])
    return out
