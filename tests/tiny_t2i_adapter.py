"""Tiny T2I-Adapters (random weights, diffusers ``T2IAdapter``) sized for the tiny SD1 UNet (tests/tiny_sd.py:
levels of 32, 64, 64 channels), and their saves in TencentARC's original key layout, written here independently
of modelstore/t2i_adapter.py (from the original model code's structure: a flat ``body`` list of resnet blocks,
``nrb`` per level, for the full adapter; ``body.{i}.body.{j}`` for the light one) so loading them tests the map."""
from __future__ import annotations

import re


def build_tiny_adapter(kind: str = "full_adapter", in_channels: int = 3, seed: int = 7):
    """``full_adapter`` (features 32@h, 64@h/2, 64@h/4 of the 8x-downscaled hint: the tiny UNet's levels),
    ``light_adapter`` (the same feature sizes) or ``full_adapter_xl`` (SDXL's structure, 16-px unshuffle)."""
    import torch
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    if kind == "full_adapter":
        ad = T2IAdapter(in_channels=in_channels, channels=[32, 64, 64], num_res_blocks=2, downscale_factor=8,
                        adapter_type=kind)
    elif kind == "light_adapter":
        ad = T2IAdapter(in_channels=in_channels, channels=[32, 64], num_res_blocks=3, downscale_factor=8,
                        adapter_type=kind)
    else:
        ad = T2IAdapter(in_channels=in_channels, channels=[16, 32, 48, 48], num_res_blocks=2, downscale_factor=16,
                        adapter_type=kind)
    with torch.no_grad():  # stronger than the default init so the features visibly move the sample
        for p in ad.parameters():
            p.mul_(2.0)
    return ad.eval()


def adapter_to_original(ad) -> dict:
    """diffusers T2IAdapter state dict -> TencentARC's original key names."""
    nrb = ad.config.num_res_blocks
    light = ad.config.adapter_type == "light_adapter"
    out = {}
    for k, v in ad.state_dict().items():
        k = k[len("adapter."):]
        m = re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", k)
        if m and light:
            k = f"body.{m[1]}.body.{m[2]}.{m[3]}"
        elif m:
            k = f"body.{int(m[1]) * nrb + int(m[2])}.{m[3]}"
        elif not light and (m := re.fullmatch(r"body\.(\d+)\.in_conv\.(.+)", k)):
            k = f"body.{int(m[1]) * nrb}.in_conv.{m[2]}"
        out[k] = v
    return out


def save_adapter(path, ad, layout: str = "original", extra: dict | None = None):
    from safetensors.torch import save_file

    sd = adapter_to_original(ad) if layout == "original" else ad.state_dict()
    save_file({**{k: v.contiguous() for k, v in sd.items()}, **(extra or {})}, str(path))
