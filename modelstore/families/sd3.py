"""Stable Diffusion 3 / 3.5 (MMDiT): ``diffusers.SD3Transformer2DModel`` on a 16-channel VAE, conditioned on
CLIP-L + CLIP-G penultimate features (zero-padded to T5's width) followed by T5-XXL tokens, and the two CLIPs'
pooled outputs (TripleCLIPLoader / DualCLIPLoader type sd3).

File layout read (Stability's original = ComfyUI's, optionally under ``model.diffusion_model.``): ``pos_embed``,
``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.mlp.{0,2}``, ``context_embedder``,
``joint_blocks.N.{x_block,context_block}.{adaLN_modulation.1,attn.qkv,attn.proj,attn.ln_q,attn.ln_k,mlp.fc1,mlp.fc2}``
(+ ``x_block.attn2.*`` for SD3.5 medium's dual-attention layers), ``final_layer.*``; diffusers' converter renames.

Rules shapes cannot tell: head_dim 64 unless the file has qk norms (their width is the head dim); sample size 128
latent pixels. Model sampling: discrete flow, shift 3, timestep = sigma * 1000.
"""
from __future__ import annotations

import math

from .common import FamilyPlan, FlowSampling, indices, need
from .denoiser import FlowDenoiser
from .latent_formats import SD3

PROBE = ("joint_blocks.0.context_block.adaLN_modulation.1.bias", "x_embedder.proj.weight", "pos_embed")
SAMPLING = FlowSampling("discrete_flow", 3.0, 1000.0)


def matches(shapes) -> bool:
    return all(k in shapes for k in PROBE)


def plan(shapes, prefix: str) -> FamilyPlan:
    F = "SD3"
    inner, in_ch, p, _ = need(shapes, "x_embedder.proj.weight", F)
    qk = "joint_blocks.0.x_block.attn.ln_q.weight" in shapes
    head = shapes["joint_blocks.0.x_block.attn.ln_q.weight"][0] if qk else 64
    n_pos = need(shapes, "pos_embed", F)[1]
    side = math.isqrt(n_pos)
    n = len(indices(shapes, "joint_blocks."))
    ctx = need(shapes, "context_embedder.weight", F)
    cfg = dict(sample_size=min(128, side), patch_size=p, in_channels=in_ch, num_layers=n, attention_head_dim=head,
               num_attention_heads=inner // head, joint_attention_dim=ctx[1], caption_projection_dim=ctx[0],
               pooled_projection_dim=need(shapes, "y_embedder.mlp.0.weight", F)[1],
               out_channels=need(shapes, "final_layer.linear.weight", F)[0] // (p * p), pos_embed_max_size=side,
               dual_attention_layers=tuple(i for i in range(n) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes),
               qk_norm="rms_norm" if qk else None)
    return FamilyPlan("sd3", prefix, cfg, SAMPLING, SD3)


def convert_state(config: dict, sd: dict) -> dict:
    """File keys (no prefix) -> diffusers keys, by diffusers' own single-file converter (also used by LoRA)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(sd))


def build(plan_: FamilyPlan, sd: dict):
    from diffusers import SD3Transformer2DModel

    from ..build import instantiate

    return SD3Denoiser(instantiate(lambda: SD3Transformer2DModel(**plan_.config), convert_state(plan_.config, sd)),
                       plan_)


class SD3Denoiser(FlowDenoiser):
    """``cond``: ``context`` (B, 77 + T, 4096-ish) CLIP+T5 tokens, ``pooled`` (B, 2048-ish) CLIP-L ++ CLIP-G."""
    needs_pooled = True

    def velocity(self, x, sigma, cond: dict):
        dt, dev = self.dtype, x.device
        out = self.module(hidden_states=x.to(dt), encoder_hidden_states=cond["context"].to(dev, dt),
                          pooled_projections=cond["pooled"].to(dev, dt),
                          timestep=(sigma.float() * self.sampling.multiplier).to(dev), return_dict=False)[0]
        return out.float()
