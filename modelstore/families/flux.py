"""FLUX.1 dev / schnell: ``diffusers.FluxTransformer2DModel`` (19 double + 38 single blocks at full size) on the
16-channel "ae.safetensors" VAE, conditioned on T5-XXL tokens + CLIP-L's pooled output (DualCLIPLoader type flux);
dev embeds a guidance value (FluxGuidance / CLIPTextEncodeFlux), schnell has no ``guidance_in``.

File layout read (Black Forest Labs' original = ComfyUI's split file, optionally under ``model.diffusion_model.``):
``img_in``, ``txt_in``, ``time_in.{in,out}_layer``, ``vector_in.*``, ``guidance_in.*``,
``double_blocks.N.{img,txt}_{mod.lin,attn.qkv,attn.norm.{query,key}_norm.scale,attn.proj,mlp.0,mlp.2}``,
``single_blocks.N.{modulation.lin,linear1,linear2,norm.*_norm.scale}``, ``final_layer.{linear,adaLN_modulation.1}``.
diffusers' own converter hard-codes the full width (3072), so Loom converts with the width read from the file.

Rules shapes cannot tell: patch 2 (packed 2x2), RoPE axes split head_dim as 1/8, 7/16, 7/16 (16, 56, 56 for the
real 128), theta 10000. Model sampling: ComfyUI's Flux shift (exponential, mu 1.15 for dev, 1.0 for schnell),
timestep = sigma.
"""
from __future__ import annotations

import torch

from .common import FamilyPlan, FlowSampling, indices, need
from .denoiser import FlowDenoiser
from .latent_formats import FLUX

PROBE = ("double_blocks.0.img_attn.norm.key_norm.scale", "single_blocks.0.linear1.weight", "img_in.weight")


def matches(shapes) -> bool:
    return all(k in shapes for k in PROBE)


def plan(shapes, prefix: str) -> FamilyPlan:
    F = "FLUX"
    inner, in_ch = need(shapes, "img_in.weight", F)
    head = need(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", F)[0]
    guidance = "guidance_in.in_layer.weight" in shapes
    cfg = dict(patch_size=1, in_channels=in_ch, out_channels=None,
               num_layers=len(indices(shapes, "double_blocks.")), num_single_layers=len(indices(shapes, "single_blocks.")),
               attention_head_dim=head, num_attention_heads=inner // head,
               joint_attention_dim=need(shapes, "txt_in.weight", F)[1],
               pooled_projection_dim=need(shapes, "vector_in.in_layer.weight", F)[1], guidance_embeds=guidance,
               axes_dims_rope=(head // 8, 7 * head // 16, 7 * head // 16))
    mlp = need(shapes, "double_blocks.0.img_mlp.0.weight", F)[0]
    if mlp != 4 * inner:
        raise ValueError(f"FLUX: MLP width {mlp} is not 4 x {inner}")
    sampling = FlowSampling("flux", 1.15 if guidance else 1.0, 1.0)
    return FamilyPlan("flux", prefix, cfg, sampling, FLUX, {"variant": "dev" if guidance else "schnell"})


def _swap(w):
    shift, scale = w.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def convert(sd: dict, inner: int) -> dict:
    """BFL Flux keys (no prefix) -> diffusers ``FluxTransformer2DModel`` keys; q/k/v splits are views."""
    out = {}
    mv = lambda new, old: out.__setitem__(new, sd[old])
    for a, b in (("time_text_embed.timestep_embedder", "time_in"), ("time_text_embed.text_embedder", "vector_in"),
                 ("time_text_embed.guidance_embedder", "guidance_in")):
        if f"{b}.in_layer.weight" not in sd:
            continue
        for i, layer in ((1, "in_layer"), (2, "out_layer")):
            for p in ("weight", "bias"):
                mv(f"{a}.linear_{i}.{p}", f"{b}.{layer}.{p}")
    for p in ("weight", "bias"):
        mv(f"context_embedder.{p}", f"txt_in.{p}")
        mv(f"x_embedder.{p}", f"img_in.{p}")
        mv(f"proj_out.{p}", f"final_layer.linear.{p}")
        out[f"norm_out.linear.{p}"] = _swap(sd[f"final_layer.adaLN_modulation.1.{p}"])
    for i in indices(sd, "double_blocks."):
        o, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            mv(f"{o}norm1.linear.{p}", f"{d}img_mod.lin.{p}")
            mv(f"{o}norm1_context.linear.{p}", f"{d}txt_mod.lin.{p}")
            for n, t in zip(("to_q", "to_k", "to_v"), sd[f"{d}img_attn.qkv.{p}"].chunk(3, 0)):
                out[f"{o}attn.{n}.{p}"] = t
            for n, t in zip(("add_q_proj", "add_k_proj", "add_v_proj"), sd[f"{d}txt_attn.qkv.{p}"].chunk(3, 0)):
                out[f"{o}attn.{n}.{p}"] = t
            mv(f"{o}ff.net.0.proj.{p}", f"{d}img_mlp.0.{p}")
            mv(f"{o}ff.net.2.{p}", f"{d}img_mlp.2.{p}")
            mv(f"{o}ff_context.net.0.proj.{p}", f"{d}txt_mlp.0.{p}")
            mv(f"{o}ff_context.net.2.{p}", f"{d}txt_mlp.2.{p}")
            mv(f"{o}attn.to_out.0.{p}", f"{d}img_attn.proj.{p}")
            mv(f"{o}attn.to_add_out.{p}", f"{d}txt_attn.proj.{p}")
        mv(f"{o}attn.norm_q.weight", f"{d}img_attn.norm.query_norm.scale")
        mv(f"{o}attn.norm_k.weight", f"{d}img_attn.norm.key_norm.scale")
        mv(f"{o}attn.norm_added_q.weight", f"{d}txt_attn.norm.query_norm.scale")
        mv(f"{o}attn.norm_added_k.weight", f"{d}txt_attn.norm.key_norm.scale")
    for i in indices(sd, "single_blocks."):
        o, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            mv(f"{o}norm.linear.{p}", f"{d}modulation.lin.{p}")
            q, k, v, mlp = torch.split(sd[f"{d}linear1.{p}"], (inner, inner, inner, 4 * inner), 0)
            out.update({f"{o}attn.to_q.{p}": q, f"{o}attn.to_k.{p}": k, f"{o}attn.to_v.{p}": v,
                        f"{o}proj_mlp.{p}": mlp})
            mv(f"{o}proj_out.{p}", f"{d}linear2.{p}")
        mv(f"{o}attn.norm_q.weight", f"{d}norm.query_norm.scale")
        mv(f"{o}attn.norm_k.weight", f"{d}norm.key_norm.scale")
    return out


def convert_state(config: dict, sd: dict) -> dict:
    """File keys (no prefix) -> diffusers keys for a model of diffusers ``config`` (also used by LoRA patching)."""
    return convert(sd, config["num_attention_heads"] * config["attention_head_dim"])


def build(plan_: FamilyPlan, sd: dict):
    from diffusers import FluxTransformer2DModel

    from ..build import instantiate

    return FluxDenoiser(instantiate(lambda: FluxTransformer2DModel(**plan_.config), convert_state(plan_.config, sd)),
                        plan_)


def pack(x):
    """(B, C, H, W) -> (B, H/2 * W/2, 4C) 2x2 patches, and the (L, 3) position ids [0, row, col]."""
    B, C, H, W = x.shape
    p = x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)
    ids = torch.zeros(H // 2, W // 2, 3)
    ids[..., 1] = torch.arange(H // 2)[:, None]
    ids[..., 2] = torch.arange(W // 2)[None, :]
    return p, ids.reshape(-1, 3)


def unpack(p, C: int, H: int, W: int):
    B = p.shape[0]
    return p.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


class FluxDenoiser(FlowDenoiser):
    """``cond``: ``context`` (B, T, 4096-ish) T5 tokens, ``pooled`` (B, 768-ish) CLIP-L, ``guidance`` (B,) for dev."""
    needs_pooled = True

    @property
    def guidance_embed(self) -> bool:
        return bool(self.config.get("guidance_embeds"))

    def velocity(self, x, sigma, cond: dict):
        B, C, H, W = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"FLUX latents need even height and width (got {H}x{W}; use a size divisible by 16)")
        dt, dev = self.dtype, x.device
        packed, img_ids = pack(x.to(dt))
        ctx = cond["context"].to(dev, dt)
        txt_ids = torch.zeros(ctx.shape[1], 3)
        guidance = None
        if self.guidance_embed:
            g = cond.get("guidance")
            guidance = (g if g is not None else torch.full((B,), 3.5)).to(dev, torch.float32)
        kw = dict(hidden_states=packed, timestep=sigma.to(dev, dt), guidance=guidance,
                  pooled_projections=cond["pooled"].to(dev, dt), encoder_hidden_states=ctx,
                  txt_ids=txt_ids.to(dev, dt), img_ids=img_ids.to(dev, dt))
        control = cond.get("control")  # ControlNets: a callable giving the transformer's controlnet_* arguments
        extra = control(self, kw, (H, W)) if control is not None else {}
        out = self.module(**kw, **extra, return_dict=False)[0]
        return unpack(out.float(), C, H, W)
