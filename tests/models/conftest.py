"""Fixtures for model-store tests: no network, one torch thread, tiny SD-architecture models built from config.

A socket audit hook fails any connect/getaddrinfo to anything but loopback, so an accidental hub download
fails loudly instead of hanging or succeeding.
"""
from __future__ import annotations

import os
import socket
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _audit(event, args):
    if event == "socket.connect":
        addr = args[1]
        host = addr[0] if isinstance(addr, tuple) else addr
        if isinstance(host, str) and host not in _LOOPBACK and not (args[0].family == socket.AF_UNIX):
            raise RuntimeError(f"network access attempted in a test: connect to {addr!r}")
    elif event == "socket.getaddrinfo":
        if args[0] not in _LOOPBACK and args[0] is not None:
            raise RuntimeError(f"network access attempted in a test: resolve {args[0]!r}")


if not getattr(sys, "_loom_models_audit", False):
    sys.addaudithook(_audit)
    sys._loom_models_audit = True


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd1():
    """(unet, vae, text_encoder) of a tiny SD1-layout model: 3-level UNet (32,64,64), 2 layers per block,
    8 heads, context 64; VAE 4 levels (32,32,64,64); CLIP hidden 64 (1 head of 64), 2 layers, quick_gelu."""
    from tests.tiny_sd import build_tiny_sd1

    return build_tiny_sd1()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory, tiny_sd1):
    """A models root with checkpoints/tiny-sd1.safetensors (LDM layout) and vae/tiny-vae.safetensors."""
    from safetensors.torch import save_file

    from .ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm

    unet, vae, te = tiny_sd1
    root = tmp_path_factory.mktemp("models")
    for d in ("checkpoints", "vae", "loras"):
        (root / d).mkdir()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "checkpoints" / "tiny-sd1.safetensors"))
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae, prefix="").items()}, str(root / "vae" / "tiny-vae.safetensors"))
    return root
