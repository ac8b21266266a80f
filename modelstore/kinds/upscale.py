"""Super-resolution models ('upscale', folder ``upscale_models``, socket UPSCALE_MODEL), .safetensors only.

spandrel (the architecture library ComfyUI uses) is used when it is importable. On Loom's pinned stack it is not:
spandrel 0.4.2 declares and imports torchvision at import time (its LaMa architecture), and torchvision would
replace the CPU torch build. Without it Loom loads the most common family itself: ESRGAN / Real-ESRGAN RRDBNet
checkpoints in BasicSR's key layout (conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr,
conv_last; x4, x2 and x1 via pixel-unshuffle). Other architectures fail with a clear message naming what is
supported, when the loader node runs (``describe`` reads the header only), not later in the upscale node.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..refs import ModelKey
from ..sources import Source
from ..tensorfile import CheckpointError
from .base import BuildContext

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

    @property
    def modules_to_move(self) -> tuple:
        return (self.model,)

    def nbytes(self) -> int:
        """Bytes of parameters and buffers."""
        return sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))


def rrdbnet_shape(shapes: dict) -> dict:
    """RRDBNet constructor kwargs (in_ch, out_ch, nf, nb, gc, scale) from tensor shapes (no weights needed)."""
    shapes = {(k[7:] if k.startswith("module.") else k): tuple(v) for k, v in shapes.items()}
    if "conv_first.weight" not in shapes:
        raise CheckpointError("unsupported upscale model architecture (Loom without spandrel loads ESRGAN/Real-ESRGAN "
                         "RRDBNet checkpoints in BasicSR layout)")
    nf, cin = shapes["conv_first.weight"][:2]
    blocks = [int(m.group(1)) for k in shapes if (m := re.match(r"body\.(\d+)\.", k))]
    if not blocks or "body.0.rdb1.conv1.weight" not in shapes or "conv_last.weight" not in shapes:
        raise CheckpointError("RRDBNet without body.N.rdbK / conv_last keys: not an ESRGAN checkpoint")
    gc = shapes["body.0.rdb1.conv1.weight"][0]
    out_ch = shapes["conv_last.weight"][0]
    scale = {1: 4, 4: 2, 16: 1}.get(cin // out_ch)
    if scale is None:
        raise CheckpointError(f"cannot infer the scale of this RRDBNet (conv_first has {cin} input channels)")
    return dict(in_ch=out_ch, out_ch=out_ch, nf=nf, nb=1 + max(blocks), gc=gc, scale=scale)


def rrdbnet_from_state_dict(sd: dict) -> RRDBNet:
    """An RRDBNet holding ``sd``'s tensors (adopted, not copied: ``assign=True``)."""
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    net = RRDBNet(**rrdbnet_shape({k: v.shape for k, v in sd.items()}))
    net.load_state_dict(sd, strict=True, assign=True)
    return net.eval().requires_grad_(False)


def _spandrel():
    try:
        import spandrel
    except ImportError:
        return None
    return spandrel


def load_upscale_model(path: str | Path, dtype=None, device=None) -> UpscaleModel:
    """The upscale model in ``path`` (.safetensors), via spandrel when installed, else Loom's RRDBNet."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise CheckpointError(f"{path.name}: only .safetensors upscale models are loaded (pickle files can run code)")
    spandrel = _spandrel()
    if spandrel is not None:
        desc = spandrel.ModelLoader().load_from_file(str(path))
        m = desc.model.eval().requires_grad_(False)
        return UpscaleModel(m.to(device or "cpu", dtype), int(desc.scale), path.name, type(desc.architecture).__name__)
    from ..tensorfile import load_tensors, read_header

    header = read_header(path)
    net = rrdbnet_from_state_dict(load_tensors(header, list(header.tensors), dtype, device))
    return UpscaleModel(net, net.scale, path.name, "RRDBNet")


class UpscaleModels:
    """Kind 'upscale': UPSCALE_MODEL values from ``upscale_models/``."""
    components = ("upscale",)
    socket = "UPSCALE_MODEL"
    folder = "upscale_models"

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        if src.kind != "safetensors":
            raise CheckpointError(f"{src.path.name}: only .safetensors upscale models are loaded (pickle files can run "
                                  "code)")
        if _spandrel() is not None:
            return ()
        return tuple(ctx.sources.plan(src, "upscale", lambda s: tuple(sorted(rrdbnet_shape(s.header.shapes).items()))))

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        src = ctx.sources.current(key.file)
        self.describe(src, ctx)
        return load_upscale_model(src.path, ctx.torch_dtype(key), key.device)

    def nbytes(self, value: Any) -> int:
        return value.nbytes()


LOADERS = [UpscaleModels()]
