"""Benchmark (not a test): load a full-size SD 1.5-architecture single-file checkpoint through the model store.

    python bench/load_sd15.py [--dir /tmp/loom-bench] [--file-dtype fp16] [--dtype fp32]

Step 1 (once, in a subprocess): write ``<dir>/checkpoints/sd15-random.safetensors`` with random weights in the real
SD 1.5 LDM key layout (UNet 859.5M, VAE 83.7M, CLIP-L 123M params; plus the non-model keys real files carry:
betas, alphas_cumprod, position_ids ...). Nothing is downloaded and nothing is written into the repository.
Step 2 (a fresh subprocess): import, load MODEL/CLIP/VAE through ``ModelStore`` and print wall times and peak RSS
(``ru_maxrss``). The target is no second copy of the weights: peak RSS ~ baseline + resident weights.

Measured (Nov 2026, 2 shared cores, fp16 file of 1.99 GiB, warm page cache; ComfyUI took 7.3 GiB peak RSS):
- store dtype fp32: weights 3.97 GiB, peak RSS 4.55-4.59 GiB (baseline after imports 0.31 GiB, so ~0.3 GiB over
  baseline + weights); UNet 8.4-9.3 s (includes the first import of diffusers' single_file_utils and the
  fp16->fp32 cast, which dominates: page faults on fresh memory), CLIP 2.0 s, VAE 1.6 s; header+plan 5 ms.
- store dtype bf16: weights 1.99 GiB, peak RSS 2.65 GiB; UNet 6.3 s, CLIP 1.0 s, VAE 1.4 s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(path: Path, file_dtype: str) -> None:
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT))
    from tests.models.ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm

    torch.set_num_threads(2)
    dt = getattr(torch, {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}[file_dtype])
    g = torch.Generator().manual_seed(0)

    def randomize(m):
        sd = {}
        for k, v in m.state_dict().items():
            sd[k] = (torch.randn(v.shape, generator=g) * 0.02).to(dt)   # values don't matter here
        m.load_state_dict(sd, assign=True)
        return m

    with init_empty_weights():
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8, layers_per_block=2, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, hidden_act="quick_gelu"))
    sd = {**unet_to_ldm(randomize(unet)), **vae_to_ldm(randomize(vae)), **clip_to_ldm(randomize(te))}
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "log_one_minus_alphas_cumprod"):
        sd[k] = torch.rand(1000, dtype=torch.float32)
    sd["logvar"] = torch.zeros(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {len(sd)} tensors)")


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

    torch.set_num_threads(2)
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
        total += module_nbytes(m)
    out["weights_gib"] = round(total / 2**30, 3)
    out["rss_after_gib"] = round(rss_now() / 2**30, 3)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3)
    out["peak_minus_baseline_minus_weights_gib"] = round(out["peak_rss_gib"] - out["baseline_rss_gib"] - out["weights_gib"], 3)
    out["arch"], out["dtype"] = model.meta["arch"], store.dtype
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
                        "--_load"], check=True, env=env, capture_output=True, text=True)
    print(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
