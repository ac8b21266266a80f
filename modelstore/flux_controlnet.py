"""FLUX.1 ControlNets in diffusers' key layout (InstantX / Shakker-Labs / AliMama files: ``controlnet_x_embedder``,
``controlnet_blocks.N``, ``controlnet_single_blocks.N`` beside a small copy of the FLUX transformer): plan (diffusers
``FluxControlNetModel`` config from tensor shapes, no config.json) and build.

The control image enters as a packed VAE latent (2x2 patches, 16 x 4 = 64 features per token). AliMama's inpainting
ControlNets take one more latent channel, the keep-mask (1 - inpaint mask), packed with it: their
``controlnet_x_embedder`` reads 64 + 4 features (ComfyUI's rule: 4 extra features = a concatenated mask).
diffusers' FluxControlNetModel sizes that layer from ``in_channels``, which also sizes ``x_embedder``; the build
makes the wider layer after construction (the model only ever applies it to the control input).

Refused by name: ControlNet-Union files (``controlnet_mode_embedder``; their mode list is the model's own and
ComfyUI's SetUnionControlNetType names do not map onto it), pixel-space hint encoders (``input_hint_block``), and
XLabs' original-layout files (``double_blocks`` + ``controlnet_blocks``)."""
from __future__ import annotations

from dataclasses import dataclass

from .arch import freeze_config, key_indices, thaw_config
from .tensorfile import CheckpointError

PROBE = "controlnet_x_embedder.weight"


def is_flux_controlnet(shapes) -> bool:
    return PROBE in shapes or ("controlnet_blocks.0.weight" in shapes and "double_blocks.0.img_attn.qkv.weight" in
                               shapes)


@dataclass(frozen=True)
class FluxControlNetPlan:
    """``config``: FluxControlNetModel kwargs as sorted pairs; ``extra``: extra control-input channels per latent
    pixel (1 = a concatenated keep-mask, AliMama inpainting)."""
    config: tuple
    extra: int = 0
    layout: str = "diffusers"
    arch: str = "flux"
    prefix: str = ""
    difference: bool = False
    model: str = "flux_controlnet"

    @property
    def kwargs(self) -> dict:
        return thaw_config(self.config)


def plan_flux_controlnet(shapes: dict) -> FluxControlNetPlan:
    if PROBE not in shapes:
        raise CheckpointError("XLabs-layout FLUX ControlNet (double_blocks + controlnet_blocks): not supported; "
                              "Loom reads FLUX ControlNets in diffusers' layout (controlnet_x_embedder ...)")
    if "controlnet_mode_embedder.weight" in shapes:
        raise CheckpointError("FLUX ControlNet-Union (controlnet_mode_embedder): not supported yet")
    if any(k.startswith("input_hint_block.") for k in shapes):
        raise CheckpointError("FLUX ControlNet with a pixel-space hint encoder (input_hint_block): not supported yet")
    def need(key, ndim):
        if key not in shapes:
            raise CheckpointError(f"FLUX ControlNet: tensor {key} missing: cannot infer the model config")
        if len(shapes[key]) != ndim:
            raise CheckpointError(f"FLUX ControlNet: {key} has shape {tuple(shapes[key])}, expected {ndim} dims")
        return shapes[key]

    inner, cin = need("x_embedder.weight", 2)
    need(PROBE, 2), need("context_embedder.weight", 2), need("time_text_embed.text_embedder.linear_1.weight", 2)
    q = "transformer_blocks.0.attn.norm_q.weight"
    head = need(q if q in shapes else "single_" + q, 1)[0]
    if head <= 0 or inner % head:
        raise CheckpointError(f"FLUX ControlNet: width {inner} is not a whole number of {head}-wide heads")
    # FLUX's RoPE axes are (head/8, 7 head/16, 7 head/16): (16, 56, 56) for its 128-wide heads
    axes = [head // 8, head * 7 // 16, head * 7 // 16]
    cfg = {"patch_size": 1, "in_channels": cin, "num_layers": len(key_indices(shapes, "transformer_blocks.")),
           "num_single_layers": len(key_indices(shapes, "single_transformer_blocks.")),
           "attention_head_dim": head, "num_attention_heads": inner // head,
           "joint_attention_dim": shapes["context_embedder.weight"][1],
           "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
           "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
           "axes_dims_rope": axes}
    extra = shapes[PROBE][1] - cin
    if extra not in (0, 4):
        raise CheckpointError(f"FLUX ControlNet: control input has {shapes[PROBE][1]} features, expected {cin} "
                              f"(a latent) or {cin + 4} (a latent and a mask)")
    return FluxControlNetPlan(freeze_config(cfg), extra // 4)


def build_flux_controlnet(plan: FluxControlNetPlan, sd: dict, device=None):
    """A diffusers ``FluxControlNetModel`` holding ``sd`` (adopted, not copied)."""
    import torch
    from diffusers import FluxControlNetModel

    from .build import instantiate

    def make():
        m = FluxControlNetModel(**plan.kwargs)
        if plan.extra:
            m.controlnet_x_embedder = torch.nn.Linear(plan.kwargs["in_channels"] + 4 * plan.extra, m.inner_dim)
        return m

    return instantiate(make, sd, device)
