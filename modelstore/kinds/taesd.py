"""TAESD preview decoders ('taesd', folder ``vae_approx``; tiny autoencoder by madebyollin, MIT): the decoder
half in its original ``nn.Sequential`` key layout (``1.weight``, ``3.conv.0.weight`` ..., optionally prefixed
``decoder.layers.``), .safetensors only. Never downloaded."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..refs import ModelKey, module_nbytes
from ..sources import Source
from ..tensorfile import CheckpointError
from .base import BuildContext

PREFIX = "decoder.layers."


def _conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def decoder(latent_channels: int = 4) -> nn.Sequential:
    layers = [_Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for _ in range(3):
        layers += [_Block(64, 64), _Block(64, 64), _Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    layers += [_Block(64, 64), _conv(64, 3)]
    return nn.Sequential(*layers)


class TAESDDecoder(nn.Module):
    """Model-space latent (B,C,h,w) -> image (B,3,8h,8w) in 0..1."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net(z).clamp(0, 1)


class TAESDDecoders:
    """Kind 'taesd': TAESD_DECODER values (a ``TAESDDecoder``) from ``vae_approx/``."""
    components = ("taesd",)
    socket = "TAESD_DECODER"
    folder = "vae_approx"

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        if src.kind != "safetensors":
            raise CheckpointError(f"{src.path.name}: only .safetensors TAESD decoders are loaded")
        shapes = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in src.header.shapes.items()}
        if "1.weight" not in shapes:
            raise CheckpointError(f"{src.path.name}: not a TAESD decoder (no '1.weight' key)")
        return (("latent_channels", shapes["1.weight"][1]),)

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        src = ctx.sources.current(key.file)
        channels = dict(self.describe(src, ctx))["latent_channels"]
        sd = ctx.sources.tensors(src, list(src.header.tensors), ctx.torch_dtype(key), key.device)
        sd = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in sd.items()}
        with torch.device("meta"):
            net = decoder(channels)
        net.load_state_dict(sd, strict=True, assign=True)
        return TAESDDecoder(net).to(key.device).eval().requires_grad_(False)

    def nbytes(self, value: Any) -> int:
        return module_nbytes(value)


LOADERS = [TAESDDecoders()]
