"""Benchmark (not a test): load a full-size SD 1.5-architecture single-file checkpoint through the model store and
print peak and warm RSS against the bytes of the weights.

    python bench/load_sd15.py [--dir /tmp/loom-bench] [--file-dtype fp16|fp32] [--dtype fp32|bf16]

Step 1 (once, in a subprocess): write ``<dir>/<file-dtype>/checkpoints/sd15-random.safetensors`` with random
weights in the real SD 1.5 LDM single-file key layout (UNet 859.5M, VAE 83.7M, CLIP-L 123M params, plus the
non-model keys real files carry: betas, alphas_cumprod, position_ids ...). The layout comes from empty (meta)
diffusers/transformers modules; tensors are generated and written one at a time, so writing needs ~one tensor
of memory. Nothing is downloaded and nothing is written into the repository.
Step 2 (a fresh subprocess, one torch thread): import, load MODEL/CLIP/VAE through ``ModelStore`` and print a
JSON line: ``weights_gib`` (bytes of the resident modules), ``baseline_rss_gib`` (after imports, before loading),
``peak_rss_gib`` (``ru_maxrss``), ``warm_rss_gib`` (VmRSS after the three loads, the store holding them), and
``peak_over_weights_gib`` / ``warm_over_weights_gib`` (RSS minus weights: the interpreter and libraries plus
whatever the store holds or held beyond the weights), and ``unloaded_rss_gib`` (VmRSS after ``unload_all``:
what dropping the models gives back). Target (issue 10, item 11): both within 0.6 GiB.

Measured (Nov 30 2026, 2 shared cores under load from other jobs, one torch thread; weights 3.972 GiB fp32):
- fp16 file (1.99 GiB) -> fp32 store: baseline 0.314, peak 4.418, warm 4.416 GiB: 0.446 / 0.444 GiB over the
  weights (0.13 GiB over baseline + weights). Before this change (a fresh buffer per tensor, then a cast; no heap
  trim): peak = warm = 4.562-4.570 GiB (0.59-0.60 over), and 2.1 GiB stayed in RSS after the store was dropped.
- fp32 file (3.97 GiB) -> fp32 store: baseline 0.315, peak 4.415, warm 4.415 GiB: 0.443 over the weights.
- fp16 file -> bf16 store: weights 1.986, peak 2.433, warm 2.430 GiB (0.447 / 0.444 over).
- After ``unload_all``: 0.444 GiB in every case, i.e. baseline + 0.13 GiB; that 0.13 GiB stays after the weights
  are gone, so it is the code imported while building (diffusers' converters, transformers' CLIP), not data.
- ComfyUI 0.3.75 on the same machine (issue 10): 6.4 GiB peak, 4.6 GiB warm for the fp32 weights.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, sys.path[0] is bench/, whose engine.py would shadow the engine package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
ST_DTYPE = {"float16": "F16", "float32": "F32", "bfloat16": "BF16", "int64": "I64"}


def layout() -> dict:
    """{key: (shape, torch dtype name or None for 'file dtype')} of an SD 1.5 single-file checkpoint."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.models.ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm

    with init_empty_weights():
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8, layers_per_block=2, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, hidden_act="quick_gelu"))
    out = {k: (tuple(v.shape), None) for k, v in {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te)}.items()}
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), "int64")
    for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "log_one_minus_alphas_cumprod",
              "logvar"):
        out[k] = ((1000,), "float32")
    return out


def make(path: Path, file_dtype: str) -> None:
    """Write the checkpoint tensor by tensor (safetensors format: u64 header length, JSON header, data)."""
    import torch

    torch.set_num_threads(1)
    fdt = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}[file_dtype]
    keys = layout()
    header, offset = {}, 0
    for k, (shape, dt) in keys.items():
        dt = dt or fdt
        n = getattr(torch, dt).itemsize
        for s in shape:
            n *= s
        header[k] = {"dtype": ST_DTYPE[dt], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, (shape, dt) in keys.items():
            dt = dt or fdt
            if dt == "int64":
                t = torch.arange(77).reshape(shape)
            else:
                t = (torch.randn(shape, generator=g) * 0.02).to(getattr(torch, dt))   # values don't matter here
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    tmp.rename(path)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {len(keys)} tensors)")


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load(models_dir: Path, dtype: str) -> dict:
    t0 = time.perf_counter()
    import torch

    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from modelstore.refs import module_nbytes

    torch.set_num_threads(1)
    import diffusers  # noqa: F401  (import cost counted separately)
    import transformers  # noqa: F401

    t_import = time.perf_counter() - t0
    base = rss_now()
    store = ModelStore(ModelFolders(models_dir), device="cpu", dtype=dtype)
    out = {"import_s": round(t_import, 2), "baseline_rss_gib": round(base / 2**30, 3)}
    t = time.perf_counter()
    model, clip, vae = store.load_checkpoint("sd15-random.safetensors")
    out["header_plan_s"] = round(time.perf_counter() - t, 3)
    total = 0
    for name, ref in (("unet", model), ("clip", clip), ("vae", vae)):
        t = time.perf_counter()
        m = ref.get()
        out[f"{name}_load_s"] = round(time.perf_counter() - t, 2)
        out[f"{name}_rss_gib"] = round(rss_now() / 2**30, 3)
        total += module_nbytes(m)
    del m
    gib = 2**30
    out["weights_gib"] = round(total / gib, 3)
    out["warm_rss_gib"] = round(rss_now() / gib, 3)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib, 3)
    out["peak_over_weights_gib"] = round(out["peak_rss_gib"] - out["weights_gib"], 3)
    out["warm_over_weights_gib"] = round(out["warm_rss_gib"] - out["weights_gib"], 3)
    out["store_resident_gib"] = round(store.resident_bytes() / gib, 3)
    out["arch"], out["dtype"] = model.meta["arch"], store.dtype
    store.unload_all()
    out["unloaded_rss_gib"] = round(rss_now() / gib, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/loom-bench")
    ap.add_argument("--file-dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    ap.add_argument("--dtype", default="fp32", help="store dtype: fp32 or bf16 on CPU")
    ap.add_argument("--_make", help=argparse.SUPPRESS)
    ap.add_argument("--_load", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    models = Path(a.dir) / a.file_dtype
    ckpt = models / "checkpoints" / "sd15-random.safetensors"
    if a._make:
        return make(Path(a._make), a.file_dtype)
    if a._load:
        return print(json.dumps(load(models, a.dtype)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if not ckpt.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--file-dtype", a.file_dtype, "--_make", str(ckpt)], check=True, env=env)
        print(f"generation took {time.perf_counter() - t:.1f} s")
    r = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--file-dtype", a.file_dtype, "--dtype", a.dtype,
                        "--_load"], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    print(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
