"""A tiny ControlNet for the tiny SD1 UNet (tests/tiny_sd.py), and its save in the original single-file layout
(``control_model.*``), written independently from modelstore/controlnet.py so loading it tests something."""
from __future__ import annotations

from types import SimpleNamespace


def build_tiny_controlnet(unet, seed: int = 3):
    """ControlNetModel copying ``unet``'s encoder, hint encoder (8,8,16,16), random zero convs (so it acts)."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16)).eval()
    with torch.no_grad():  # trained zero convs are not zero: give them weights so the residuals matter
        for name, p in cn.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.5)
    return cn


def controlnet_to_ldm(cn, prefix: str = "control_model.") -> dict:
    from tests.models.ldm_export import unet_to_ldm

    sd = cn.state_dict()
    shared = {k: v for k, v in sd.items() if not k.startswith(("controlnet_",))}
    ldm = {prefix + k[len("model.diffusion_model."):]: v
           for k, v in unet_to_ldm(SimpleNamespace(config=cn.config, state_dict=lambda: shared)).items()}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] == "controlnet_cond_embedding":
            idx = {"conv_in": 0, "conv_out": 14}.get(p[1])
            if idx is None:
                idx, t = 2 * (int(p[2]) + 1), p[3]
            else:
                t = p[2]
            ldm[f"{prefix}input_hint_block.{idx}.{t}"] = v
        elif p[0] == "controlnet_down_blocks":
            ldm[f"{prefix}zero_convs.{p[1]}.0.{p[2]}"] = v
        elif p[0] == "controlnet_mid_block":
            ldm[f"{prefix}middle_block_out.0.{p[1]}"] = v
    return ldm


def save_controlnet(path, cn, prefix: str = "control_model.", extra: dict | None = None):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in controlnet_to_ldm(cn, prefix).items()}
    save_file({**sd, **(extra or {})}, str(path))


def build_tiny_union(unet, n_types: int = 8, seed: int = 4):
    """A ControlNetUnionModel (xinsir's architecture, diffusers' layout) over the tiny SD1 UNet's shape: union
    transformer width 32 (= the first level), 8 heads, one layer; random projections so every part acts."""
    import torch
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    c = unet.config
    cn = ControlNetUnionModel(in_channels=c.in_channels, down_block_types=c.down_block_types,
                              block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
                              cross_attention_dim=c.cross_attention_dim, attention_head_dim=c.attention_head_dim,
                              conditioning_embedding_out_channels=(8, 8, 16, 16), addition_time_embed_dim=16,
                              num_control_type=n_types, num_trans_channel=32, num_trans_head=8, num_trans_layer=1,
                              num_proj_channel=32).eval()
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out",
                                "spatial_ch_projs")):
                p.normal_(0, 0.5)
    return cn
