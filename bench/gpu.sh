#!/usr/bin/env bash
# GPU benchmark: it/s at 512x512 fp16 for Loom (KSampler through the engine) and for diffusers'
# StableDiffusionPipeline, side by side, on the same SD1.5-architecture single-file checkpoint with random weights
# (built from config, never downloaded). Both use the same weights, scheduler (Euler, linspace = ComfyUI "normal"),
# 20 steps, CFG 7.5, batch 1; it/s is measured over the sampling steps only (CUDA-synchronized step timestamps),
# after a warm-up run. Budget: < 5 minutes on one GPU including generating the checkpoint (~2 GiB fp16).
#
#   bench/gpu.sh                          # CUDA, 512x512, fp16, SD1.5-size random checkpoint
#   bench/gpu.sh --ckpt /path/model.safetensors
#   bench/gpu.sh --device cpu --tiny --size 64 --steps 4    # CPU smoke check (tiny model, fp32)
#
# Options: --device cuda|cpu  --dtype fp16|bf16|fp32 (default fp16 on cuda, fp32 on cpu)  --size N  --steps N
#          --ckpt FILE (an SD-architecture single-file .safetensors)  --tiny (tiny test architecture)
#          --workdir DIR (default /tmp/loom-gpu-bench)
#
# Measured 30 Nov 2026 on one NVIDIA H200 (driver 580.159.04, torch 2.11.0+cu130, diffusers 0.42.1), 20 steps,
# euler/normal, CFG 7.5, batch 1, it/s over the sampling steps after a warm-up run:
#   512x512 fp16: Loom 33.92 it/s, diffusers 33.72 (ratio 1.006)   512x512 bf16: 36.80 vs 36.31 (1.013)
#   512x512 fp32: 24.93 vs 25.15 (0.991)                            1024x1024 fp16: 17.63 vs 17.82 (0.990)
# The random-weight SD1.5 checkpoint (1.99 GiB fp16) took 23 s to write; Loom's load + 2-step warm-up 16 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1
exec timeout 300 "${PYTHON:-python3}" - "$@" <<'PY'
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

ap = argparse.ArgumentParser(prog="bench/gpu.sh")
ap.add_argument("--device", default="cuda")
ap.add_argument("--dtype", default=None)
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--ckpt", default=None)
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--workdir", default="/tmp/loom-gpu-bench")
a = ap.parse_args()

import torch

if a.device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("CUDA is not available (use --device cpu for a smoke check)")
dtype = a.dtype or ("fp16" if a.device.startswith("cuda") else "fp32")
work = Path(a.workdir)
models = work / ("tiny" if a.tiny else "sd15") / "models"
(models / "checkpoints").mkdir(parents=True, exist_ok=True)
name = "bench.safetensors"
ckpt = models / "checkpoints" / name
t0 = time.perf_counter()
if a.ckpt:
    if ckpt.exists() or ckpt.is_symlink():
        ckpt.unlink()
    try:
        os.link(a.ckpt, ckpt)  # no copy when on the same filesystem
    except OSError:
        shutil.copyfile(a.ckpt, ckpt)
elif not ckpt.exists():
    if a.tiny:
        from tests.nodes.conftest import build_tiny_sd1, save_checkpoint
        save_checkpoint(ckpt, *build_tiny_sd1())
    else:  # bench/load_sd15.py writes the real SD1.5 LDM key layout with random weights
        subprocess.run([sys.executable, "bench/load_sd15.py", "--file-dtype", "fp16", "--_make", str(ckpt)], check=True)
print(f"checkpoint ready: {ckpt} ({ckpt.stat().st_size / 2**30:.2f} GiB, {time.perf_counter() - t0:.1f} s)", flush=True)

from engine.context import Env
from engine.executor import Executor
from engine.folders import ModelFolders
from modelstore.models import ModelStore
from nodes import default_registry

dev = a.device
sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
env = Env(input_dir=work / "in", output_dir=work / "out", temp_dir=work / "tmp", models_dir=models,
          model_store_factory=lambda e: ModelStore(ModelFolders(e.models_dir), device=dev, dtype=dtype))
ex = Executor(default_registry(), env)
PROMPT = "a photograph of an astronaut riding a horse"


def wf(seed, steps):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": a.size, "height": a.size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 7.5,
                                                  "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                  "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def rate(stamps):
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


def loom_run(seed, steps):
    stamps = []

    def sink(ev):
        if ev.type == "progress" and ev.data.get("node") == "5":
            sync()
            stamps.append(time.perf_counter())
    t = time.perf_counter()
    r = ex.run(wf(seed, steps), sink=sink)
    sync()
    assert r.status == "success", r.error
    return rate(stamps), time.perf_counter() - t


t = time.perf_counter()
loom_run(0, 2)  # load + warm-up
print(f"loom: load + warm-up {time.perf_counter() - t:.1f} s", flush=True)
loom_its, loom_wall = loom_run(1, a.steps)

import diffusers

store = env.model_store()
m, c, v = store.load_checkpoint(name)
te = c.get()
sched = diffusers.EulerDiscreteScheduler.from_config({**dict(m.meta["scheduler_config"]),
                                                      "timestep_spacing": "linspace", "steps_offset": 0})
pipe = diffusers.StableDiffusionPipeline(vae=v.get(), text_encoder=te.encoders[0], tokenizer=te.tokenizers[0],
                                         unet=m.get(), scheduler=sched, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)


def pipe_run(seed, steps):
    stamps = []

    def cb(p, i, t, kw):
        sync()
        stamps.append(time.perf_counter())
        return kw
    t0 = time.perf_counter()
    pipe(PROMPT, negative_prompt="", height=a.size, width=a.size, num_inference_steps=steps, guidance_scale=7.5,
         generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=cb, output_type="pt")
    sync()
    return rate(stamps), time.perf_counter() - t0


with torch.no_grad():
    pipe_run(0, 2)
    pipe_its, pipe_wall = pipe_run(1, a.steps)

res = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu", "dtype": dtype,
       "size": a.size, "steps": a.steps, "loom_it_s": round(loom_its, 3), "diffusers_it_s": round(pipe_its, 3),
       "loom_wall_s": round(loom_wall, 2), "diffusers_wall_s": round(pipe_wall, 2),
       "loom_vs_diffusers": round(loom_its / pipe_its, 3)}
print(f"{'':12}{'it/s':>10}{'wall s':>10}")
print(f"{'Loom':12}{loom_its:10.2f}{loom_wall:10.2f}")
print(f"{'diffusers':12}{pipe_its:10.2f}{pipe_wall:10.2f}")
print(json.dumps(res))
PY
