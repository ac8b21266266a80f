"""The ``--device`` / ``--dtype`` options of ``loom run`` and ``loom serve`` (torch-free, so validation stays light).

``--dtype`` is one precision for every component (``fp32``, ``bf16``, ``fp16``, ``auto``), or per component like
ComfyUI's precision flags: ``unet=bf16,vae=fp32,clip=fp32`` (components: unet/model, vae, clip/text_enc; a bare
value sets the default for the rest). The default stays fp32 on the CPU, so images match ComfyUI's."""
from __future__ import annotations

import argparse

NAMES = {"fp16", "half", "float16", "bf16", "bfloat16", "fp32", "float", "float32", "auto"}
COMPONENTS = {"unet": "MODEL", "model": "MODEL", "vae": "VAE", "clip": "CLIP", "text_enc": "CLIP", "te": "CLIP"}


def parse_dtype(text: str | None) -> tuple[str | None, dict]:
    """'bf16' -> ('bf16', {}); 'unet=bf16,vae=fp32' -> (None, {'MODEL': 'bf16', 'VAE': 'fp32'})."""
    if not text:
        return None, {}
    default, per = None, {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            comp, _, val = part.partition("=")
            comp, val = comp.strip().lower(), val.strip().lower()
            if comp not in COMPONENTS:
                raise ValueError(f"unknown component {comp!r} in --dtype (use unet, vae or clip)")
            if val not in NAMES:
                raise ValueError(f"unknown dtype {val!r} for {comp} (use fp32, bf16 or fp16)")
            per[COMPONENTS[comp]] = val
        else:
            if part.lower() not in NAMES:
                raise ValueError(f"unknown dtype {part!r} (use fp32, bf16, fp16, auto or unet=..,vae=..,clip=..)")
            default = part.lower()
    return default, per


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="where models run: cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help="model precision: fp32, bf16, fp16 (GPU), or per component unet=bf16,vae=fp32,clip=fp32 "
                        "(default: fp32 on CPU, fp16 on GPU)")


def store_kwargs(device: str | None, dtype: str | None) -> dict:
    """ModelStore keyword arguments for the options (raises ValueError on a bad --dtype)."""
    default, per = parse_dtype(dtype)
    kw = {}
    if device:
        kw["device"] = device
    if default and default != "auto":
        kw["dtype"] = default
    if per:
        kw["component_dtypes"] = per
    return kw
