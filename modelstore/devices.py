"""Device and dtype policy for the model store, its default memory budget, and the out-of-memory error."""
from __future__ import annotations

import os

import torch


def choose_device_dtype(cuda_available: bool, bf16_supported: bool, device: str | None = None,
                        dtype: str | None = None) -> tuple[str, str]:
    """Pure policy: ('cuda'|'cpu'|given device, 'float16'|'bfloat16'|'float32').

    CUDA when present, fp16 by default there (bf16 if asked and supported, else ValueError); CPU otherwise,
    fp32 by default, bf16 opt-in (fp16 on CPU is refused: slow and lossy). ``dtype`` accepts 'fp16', 'bf16',
    'fp32', torch names, or None/'auto'."""
    names = {"fp16": "float16", "half": "float16", "float16": "float16", "bf16": "bfloat16",
             "bfloat16": "bfloat16", "fp32": "float32", "float": "float32", "float32": "float32"}
    dev = device or ("cuda" if cuda_available else "cpu")
    is_cuda = dev.startswith("cuda")
    if is_cuda and not cuda_available:
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if dtype in (None, "auto"):
        return dev, "float16" if is_cuda else "float32"
    dt = names.get(str(dtype).replace("torch.", "").lower())
    if dt is None:
        raise ValueError(f"unknown dtype {dtype!r} (use fp16, bf16 or fp32)")
    if is_cuda and dt == "bfloat16" and not bf16_supported:
        raise ValueError("bf16 requested but this GPU does not support it; use fp16")
    if not is_cuda and dt == "float16":
        raise ValueError("fp16 on CPU is not supported; use fp32 or bf16")
    return dev, dt


def default_budget(device: str) -> int:
    """Bytes of models kept resident on ``device``: 75% of GPU memory, or 50% of physical RAM on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.75)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


class OutOfMemory(RuntimeError):
    """The device ran out of memory even after offloading idle models and retrying once."""
