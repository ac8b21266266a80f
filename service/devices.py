"""This process's memory and devices, as /system_stats and /api/loom/workers report them (never imports torch)."""
from __future__ import annotations

import sys


def ram() -> tuple[int, int]:
    """(total, available) bytes of RAM, from /proc/meminfo; (0, 0) where that is missing."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        return info.get("MemTotal", 0), info.get("MemAvailable", 0)
    except (OSError, ValueError):
        return 0, 0


def local_devices() -> list[dict]:
    """ComfyUI's /system_stats ``devices`` entries: CUDA devices where torch is loaded and sees some, else the CPU."""
    t = sys.modules.get("torch")  # never import torch just to answer this
    if t is not None and t.cuda.is_available():
        out = []
        for i in range(t.cuda.device_count()):
            free, total = t.cuda.mem_get_info(i)
            out.append({"name": t.cuda.get_device_name(i), "type": "cuda", "index": i, "vram_total": total,
                        "vram_free": free, "torch_vram_total": t.cuda.memory_reserved(i),
                        "torch_vram_free": t.cuda.memory_reserved(i) - t.cuda.memory_allocated(i)})
        return out
    total, free = ram()
    return [{"name": "cpu", "type": "cpu", "index": 0, "vram_total": total, "vram_free": free,
             "torch_vram_total": 0, "torch_vram_free": 0}]
