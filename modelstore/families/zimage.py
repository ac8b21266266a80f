"""Z-Image (Turbo): a single-stream DiT (``diffusers.ZImageTransformer2DModel``) on FLUX.1's 16-channel VAE,
conditioned on the penultimate hidden layer of a Qwen3 text encoder (ComfyUI: CLIPLoader type ``lumina2``).

File layout read (ComfyUI's split file ``z_image_turbo_bf16.safetensors``, optionally under
``model.diffusion_model.``): ``x_embedder``, ``final_layer.{linear,adaLN_modulation.1}``, ``t_embedder.mlp``,
``cap_embedder.{0,1}``, ``{noise_refiner,context_refiner,layers}.N.attention.{qkv,out,q_norm,k_norm}``,
``...feed_forward.w{1,2,3}``, ``x_pad_token``, ``cap_pad_token``; diffusers' own converter renames them.

Rules shapes cannot tell: patch size 2, RoPE theta 256, t scale 1000, RoPE axes split head_dim as 1/4, 3/8, 3/8
(= 32, 48, 48 for the real head_dim 128), norm eps 1e-5.
"""
from __future__ import annotations

import torch

from .common import FamilyPlan, FlowSampling, indices, need
from .denoiser import FlowDenoiser
from .latent_formats import FLUX

PROBE = ("layers.0.adaLN_modulation.0.weight", "cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight")
#: ComfyUI's Lumina2/Z-Image default model sampling: AuraFlow-style discrete flow, shift 3, timestep = sigma.
SAMPLING = FlowSampling("discrete_flow", 3.0, 1.0)


def matches(shapes) -> bool:
    return all(k in shapes for k in PROBE)


def plan(shapes, prefix: str) -> FamilyPlan:
    """diffusers ``ZImageTransformer2DModel`` config from the (prefix-stripped) shapes."""
    F = "Z-Image"
    xe = need(shapes, "x_embedder.weight", F)
    dim, patch_in = xe
    p = 2
    head_dim = need(shapes, "layers.0.attention.q_norm.weight", F)[0]
    if dim % head_dim or head_dim % 8:
        raise ValueError(f"Z-Image: width {dim} and head dim {head_dim} are not a valid pair")
    axes = [head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8]
    cfg = dict(all_patch_size=(p,), all_f_patch_size=(1,), in_channels=patch_in // (p * p), dim=dim,
               n_layers=len(indices(shapes, "layers.")), n_refiner_layers=len(indices(shapes, "noise_refiner.")),
               n_heads=dim // head_dim, n_kv_heads=dim // head_dim, norm_eps=1e-5,
               qk_norm=True, cap_feat_dim=need(shapes, "cap_embedder.0.weight", F)[0], rope_theta=256.0,
               t_scale=1000.0, axes_dims=axes, axes_lens=[1024, 512, 512])
    return FamilyPlan("zimage", prefix, cfg, SAMPLING, FLUX)


def convert_state(config: dict, sd: dict) -> dict:
    """File keys (no prefix) -> diffusers keys, by diffusers' own single-file converter (also used by LoRA)."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(sd))


def build(plan_: FamilyPlan, sd: dict):
    """The diffusers module from the file's tensors (``sd`` keys without the prefix); no second weight copy."""
    from diffusers import ZImageTransformer2DModel

    from ..build import instantiate

    return ZImageDenoiser(instantiate(lambda: ZImageTransformer2DModel(**plan_.config), convert_state(plan_.config, sd)),
                          plan_)


class ZImageDenoiser(FlowDenoiser):
    """Uniform flow interface over the diffusers module: ``velocity(x, sigma, cond)`` with ``x`` (B,16,H,W) in
    model space, ``sigma`` (B,) in [0, 1]; ``cond['context']`` is a list of (L_i, D) caption features (unpadded,
    one per batch item). Z-Image's own time runs the other way (t = 1 - sigma) and it predicts -v."""

    ragged_context = True

    def velocity(self, x, sigma, cond: dict):
        dt = self.dtype
        caps = [c.to(x.device, dt) for c in cond["context"]]
        xs = list(x.to(dt).unsqueeze(2).unbind(0))
        t = (1.0 - sigma.float()).to(x.device)
        out = self.module(xs, t, caps, return_dict=False)[0]
        return -torch.stack([o.float() for o in out], 0).squeeze(2)
