"""Qwen-Image: a double-stream MMDiT (``diffusers.QwenImageTransformer2DModel``) on the Qwen-Image VAE (Wan 2.1's
16-channel VAE with per-channel latent mean/std), conditioned on the last hidden state of a Qwen2.5-VL language
model (ComfyUI: CLIPLoader type ``qwen_image``).

File layout read (ComfyUI's split file ``qwen_image_fp8_e4m3fn.safetensors`` / ``qwen_image_bf16.safetensors``,
optionally under ``model.diffusion_model.``): diffusers' own key names - ``img_in``, ``txt_norm``, ``txt_in``,
``time_text_embed.timestep_embedder.linear_{1,2}``, ``transformer_blocks.N.{img_mod.1,txt_mod.1,attn.*,
img_mlp.net.*,txt_mlp.net.*}``, ``norm_out.linear``, ``proj_out``. diffusers 0.42's single-file mapping for
``QwenImageTransformer2DModel`` is the identity (``single_file_model.SINGLE_FILE_LOADABLE_CLASSES``), so no
renaming is needed. (Qwen-Image 2.1, ``txt_in.text_norm`` + fused ``img_mlp.gate_up``, is a different model.)

Rules shapes cannot tell: patch size 2; RoPE axes split head_dim as 1/8, 7/16, 7/16 (= 16, 56, 56 for the real
head_dim 128), theta 10000; no guidance embedding.
"""
from __future__ import annotations

import torch

from .common import FamilyPlan, FlowSampling, indices, need
from .denoiser import FlowDenoiser
from .latent_formats import QWEN_IMAGE

PROBE = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight",
         "transformer_blocks.0.attn.add_q_proj.weight")
#: ComfyUI's Qwen-Image default model sampling (sampling_settings multiplier 1.0, shift 1.15, FLUX-style exponential
#: shift); its templates patch it with ModelSamplingAuraFlow shift 3.1.
SAMPLING = FlowSampling("flux", 1.15, 1.0)


def matches(shapes) -> bool:
    return all(k in shapes for k in PROBE)


def plan(shapes, prefix: str) -> FamilyPlan:
    """diffusers ``QwenImageTransformer2DModel`` config from the (prefix-stripped) shapes."""
    F = "Qwen-Image"
    inner, patch_in = need(shapes, "img_in.weight", F)
    p = 2
    head_dim = need(shapes, "transformer_blocks.0.attn.norm_q.weight", F)[0]
    if inner % head_dim or head_dim % 32:
        raise ValueError(f"Qwen-Image: width {inner} and head dim {head_dim} are not a valid pair (head dim must be a "
                         "multiple of 32 for the 1/8, 7/16, 7/16 RoPE split)")
    axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
    cfg = dict(patch_size=p, in_channels=patch_in, out_channels=need(shapes, "proj_out.weight", F)[0] // (p * p),
               num_layers=len(indices(shapes, "transformer_blocks.")), attention_head_dim=head_dim,
               num_attention_heads=inner // head_dim, joint_attention_dim=need(shapes, "txt_in.weight", F)[1],
               guidance_embeds=False, axes_dims_rope=axes)
    return FamilyPlan("qwen_image", prefix, cfg, SAMPLING, QWEN_IMAGE)


def convert_state(config: dict, sd: dict) -> dict:
    """File keys (no prefix) -> diffusers keys: the identity (diffusers' single-file mapping for Qwen-Image is too;
    LoRA patching derives its key map from this)."""
    return dict(sd)


def build(plan_: FamilyPlan, sd: dict):
    """The diffusers module from the file's tensors (``sd`` keys without the prefix); no second weight copy."""
    from diffusers import QwenImageTransformer2DModel

    from ..build import instantiate

    return QwenImageDenoiser(instantiate(lambda: QwenImageTransformer2DModel(**plan_.config),
                                         convert_state(plan_.config, sd)), plan_)


def pack(x):
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches, channel-major within a patch (QwenImagePipeline's order)."""
    B, C, H, W = x.shape
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack(p, C: int, H: int, W: int):
    B = p.shape[0]
    return p.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


class QwenImageDenoiser(FlowDenoiser):
    """``cond['context']``: (B, L, D) Qwen2.5-VL hidden states (the prompt template's prefix already dropped);
    every token is valid (no padding mask). The module takes sigma as its timestep (it scales by 1000 itself)
    and predicts the flow velocity (noise - x0), as ComfyUI's CONST."""

    def velocity(self, x, sigma, cond: dict):
        B, C, H, W = x.shape
        dt, dev = self.dtype, x.device
        ph, pw = H % 2, W % 2  # odd latent sizes: pad to whole 2x2 patches, crop after (ComfyUI pads too)
        xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        Hp, Wp = H + ph, W + pw
        ctx = cond["context"].to(dev, dt)
        out = self.module(hidden_states=pack(xp.to(dt)), encoder_hidden_states=ctx, encoder_hidden_states_mask=None,
                          timestep=sigma.to(dev, dt), img_shapes=[[(1, Hp // 2, Wp // 2)]] * B,
                          return_dict=False)[0]
        return unpack(out.float(), C, Hp, Wp)[:, :, :H, :W]
