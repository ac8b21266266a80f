"""Super-resolution models: UpscaleModelLoader's loader and ImageUpscaleWithModel.

spandrel (the architecture library ComfyUI uses) is used when it is importable. On Loom's pinned stack it is not:
spandrel 0.4.2 declares and imports torchvision at import time (its LaMa architecture), and torchvision would
replace the CPU torch build. Without it Loom loads the most common family itself: ESRGAN / Real-ESRGAN RRDBNet
checkpoints in BasicSR's key layout (conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr,
conv_last; x4, x2 and x1 via pixel-unshuffle), from .safetensors only. Other architectures fail with a clear
message naming what is supported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.node import Node, Output, Socket


class _RDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        for i in range(1, 6):
            setattr(self, f"conv{i}", nn.Conv2d(nf + (i - 1) * gc, gc if i < 5 else nf, 3, 1, 1))

    def forward(self, x):
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (BasicSR layout). ``scale`` 4, 2 or 1 (2 and 1 pixel-unshuffle the input first)."""

    def __init__(self, in_ch=3, out_ch=3, nf=64, nb=23, gc=32, scale=4):
        super().__init__()
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(in_ch * self.unshuffle ** 2, nf, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_ch, 3, 1, 1)

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


@dataclass(eq=False)
class UpscaleModel:
    """UPSCALE_MODEL: a module taking (B,3,H,W) 0..1 and returning (B,3,H*scale,W*scale), plus its scale."""
    model: nn.Module
    scale: int
    name: str
    arch: str

    def __loom_nbytes__(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def rrdbnet_from_state_dict(sd: dict) -> RRDBNet:
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    if "conv_first.weight" not in sd:
        raise ValueError("unsupported upscale model architecture (Loom without spandrel loads ESRGAN/Real-ESRGAN "
                         "RRDBNet checkpoints in BasicSR layout)")
    nf, cin = sd["conv_first.weight"].shape[:2]
    nb = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
    gc = sd["body.0.rdb1.conv1.weight"].shape[0]
    out_ch = sd["conv_last.weight"].shape[0]
    in_ch = out_ch
    scale = {1: 4, 4: 2, 16: 1}.get(cin // in_ch)
    if scale is None:
        raise ValueError(f"cannot infer the scale of this RRDBNet (conv_first has {cin} input channels)")
    net = RRDBNet(in_ch, out_ch, nf, nb, gc, scale)
    net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def load_upscale_model(path: str | Path) -> UpscaleModel:
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ValueError(f"{path.name}: only .safetensors upscale models are loaded")
    try:
        import spandrel  # noqa: F401
    except Exception:
        spandrel = None
    if spandrel is not None:
        desc = spandrel.ModelLoader().load_from_file(str(path))
        return UpscaleModel(desc.model.eval(), int(desc.scale), path.name, type(desc.architecture).__name__)
    from safetensors.torch import load_file

    net = rrdbnet_from_state_dict(load_file(str(path)))
    return UpscaleModel(net, net.scale, path.name, "RRDBNet")


class ImageUpscaleWithModel(Node):
    """Upscales an image with a super-resolution model (in 512-pixel tiles with 32-pixel overlap)."""
    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    inputs = (Socket("upscale_model", "UPSCALE_MODEL"), Socket("image", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, upscale_model, image):
        from .vae import tiled

        m = upscale_model.model
        x = image[..., :3].movedim(-1, 1).contiguous()
        with torch.no_grad():
            def fn(t):
                ctx.check_cancelled() if ctx is not None else None
                return m(t)
            out = tiled(fn, x, 512, 32, upscale_model.scale, 3)
        return (out.clamp(0, 1).movedim(1, -1).contiguous(),)


NODES = [ImageUpscaleWithModel]
