"""TAESD preview decoder (tiny autoencoder by madebyollin, MIT): used for sampler previews when its decoder weights
are present locally in models/vae_approx (``taesd_decoder.*`` for SD1/2, ``taesdxl_decoder.*`` for SDXL), in the
original ``nn.Sequential`` key layout (``1.weight``, ``3.conv.0.weight`` ...). Never downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

PREFIX = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}


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


def find_decoder(env, arch: str) -> Path | None:
    base = Path(getattr(env, "models_dir", "models")) / "vae_approx"
    if not base.is_dir():
        return None
    prefix = PREFIX.get(arch, "taesd_decoder")
    for f in sorted(base.iterdir()):
        if f.name.startswith(prefix) and f.suffix.lower() in (".safetensors", ".sft"):
            return f
    return None


def load_decoder(path: Path):
    """A callable: model-space latent (B,4,h,w) -> image (B,3,8h,8w) in 0..1."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    sd = {k[len("decoder.layers."):] if k.startswith("decoder.layers.") else k: v for k, v in sd.items()}
    net = decoder(sd["1.weight"].shape[1])
    net.load_state_dict(sd, strict=True)
    net.eval().requires_grad_(False)
    return lambda z: net(z).clamp(0, 1)
