"""Prompt-adherence benchmark for Loom's bundled model (loom-shapes-64).

Generates images for a fixed, balanced set of prompts x seeds, reads them back with the pixel scorer
(training/scorer.py) and prints per-attribute accuracy (background colour, shape colour, position, shape type, size)
per sampler and per cfg (cfg 1 vs the default), plus the generation time per image.

    python bench/quality.py                                   # through Loom's engine, euler+ddim, cfg 1 and 8
    python bench/quality.py --backend diffusers               # cross-check: a direct diffusers scheduler loop
    python bench/quality.py --samplers euler --cfgs 1,3,5,8 --prompts 120 --seeds 2 --json out.json
    python bench/quality.py --table --prompts 8 --threads 1   # every sampler: 20 steps cfg 6 and its sensible
                                                              # cfg, 10 steps cfg 6; a markdown table
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402

from training import world  # noqa: E402
from training.scorer import accuracy, score  # noqa: E402

DEFAULT_CKPT = ROOT / "models" / "checkpoints" / "loom-shapes-64.safetensors"
DEFAULT_CFG = 8.0  # ComfyUI KSampler default
# sampler names as the engine (ComfyUI) spells them -> the diffusers scheduler used by the direct loop
SAMPLERS = {"euler": "euler", "ddim": "ddim", "euler_ancestral": "euler_a", "dpmpp_2m": "dpmpp_2m"}


def prompt_set(n_prompts: int):
    scenes = world.eval_scenes(n_prompts, seed=2024)
    prompts = [world.eval_caption(s, i % 2) for i, s in enumerate(scenes)]
    return scenes, prompts


# ---------------------------------------------------------------- backends
class DiffusersBackend:
    """Loads the single-file checkpoint with training/export.py's shape-inferring loader (diffusers' LDM->diffusers
    conversion) and samples with a direct scheduler loop (training/sample.py)."""

    def __init__(self, ckpt: Path):
        import torch
        from training.export import load_checkpoint
        t = time.time()
        self.unet, self.vae, self.te = load_checkpoint(ckpt, dtype=torch.float32)
        self.load_s = time.time() - t

    def generate(self, prompts, seeds, steps, cfg, sampler):
        from training.sample import generate
        return generate(self.unet, self.te, self.vae, prompts, seeds, steps=steps, cfg=cfg,
                        sampler=SAMPLERS[sampler], batch=1)


class EngineBackend:
    """=== ENGINE BACKEND PLUG-IN POINT ===
    Runs a ComfyUI API-format workflow (CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage ->
    KSampler -> VAEDecode) through Loom's engine for every prompt/seed, and returns the decoded images."""

    def __init__(self, ckpt: Path):
        self.ckpt = Path(ckpt)
        self.load_s = 0.0
        self._run = _engine_runner(self.ckpt)

    def generate(self, prompts, seeds, steps, cfg, sampler):
        out = []
        for p, s in zip(prompts, seeds):
            wf = engine_workflow(self.ckpt.name, p, s, steps, cfg, sampler)
            out.append(self._run(wf))
        return np.stack(out)


def scheduler_for(sampler: str) -> str:
    """KSampler's scheduler for a sampler: "normal" (SD1's own spacing) for every sampler."""
    return "normal"


def all_samplers() -> list[str]:
    """ComfyUI's 42 names without the *_gpu variants (on the CPU they are the same numbers as their base)."""
    from sampling.names import SAMPLER_NAMES

    return [s for s in SAMPLER_NAMES if not s.endswith("_gpu")]


def sensible_cfg(sampler: str) -> float:
    """The guidance a sampler is meant for: CFG++ samplers take a guidance scale around 1 (their update already
    re-noises with the unguided estimate, Chung et al. 2024), lcm is for distilled models at cfg 1; the rest a
    moderate 4."""
    if sampler.endswith("cfg_pp") or sampler == "lcm":
        return 1.0
    return 4.0


def table(backend, samplers, n_prompts, n_seeds, threads):
    """Every sampler at 20 steps cfg 6, 20 steps at its sensible cfg and 10 steps cfg 6: a markdown table of
    'all five' accuracy (and per-attribute for the 20-step cfg 6 row)."""
    lines = ["| sampler | 20 steps cfg 6: bg / colour / pos / shape / size | all five | 20 steps, sensible cfg: all "
             "five | 10 steps cfg 6: all five | time / image (20 steps cfg 6) |", "|---|---|---|---|---|---|"]
    out = []
    for s in samplers:
        r20 = evaluate(backend, [s], [6.0], n_prompts, n_seeds, 20, threads)[0]
        sc = sensible_cfg(s)
        rs = evaluate(backend, [s], [sc], n_prompts, n_seeds, 20, threads)[0]
        r10 = evaluate(backend, [s], [6.0], n_prompts, n_seeds, 10, threads)[0]
        out += [r20, rs, r10]
        attrs = " / ".join(f"{r20[k]:.2f}" for k in ("bg", "color", "pos", "shape", "size"))
        lines.append(f"| {s} | {attrs} | {r20['all']:.2f} | {rs['all']:.2f} (cfg {sc:g}) | {r10['all']:.2f} | "
                     f"{r20['s_per_image'] * 1000:.0f} ms |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return out


def engine_workflow(ckpt_name: str, prompt: str, seed: int, steps: int, cfg: float, sampler: str,
                    negative: str = "") -> dict:
    """The ComfyUI API-format workflow the engine backend runs (node "9" is the decoded image)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler_for(sampler),
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def _engine_runner(ckpt: Path):
    """Return fn(workflow) -> HxWx3 uint8 image, running the workflow through Loom's engine.

    === ENGINE BACKEND PLUG-IN POINT ===  Executor(default_registry(), Env) with a CPU fp32 ModelStore over the
    checkpoint's models folder (ckpt must sit in <models>/checkpoints/); the PreviewImage output is read back from the
    temp folder. The loader and both CLIPTextEncode outputs are cached by the engine between runs."""
    import tempfile
    try:
        from engine.context import Env
        from engine.executor import Executor
        from modelstore.models import ModelStore
        from nodes import default_registry
    except Exception as e:  # pragma: no cover - depends on the engine being present
        raise SystemExit(f"--backend engine: Loom's engine is not importable ({e})")
    from PIL import Image
    if ckpt.parent.name != "checkpoints":
        raise SystemExit("--backend engine: the checkpoint must be in a <models>/checkpoints/ folder")
    io = Path(tempfile.mkdtemp(prefix="loom-quality-"))
    env = Env(input_dir=io / "in", output_dir=io / "out", temp_dir=io / "tmp", models_dir=ckpt.parent.parent,
              model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
    ex = Executor(default_registry(), env)

    def _run(wf):
        res = ex.run(wf)
        if res.status != "success":
            raise RuntimeError(f"engine run failed: {res.error or res.node_errors}")
        info = res.outputs["9"]["images"][0]
        path = env.temp_dir / info.get("subfolder", "") / info["filename"]
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        path.unlink()
        return img
    env.input_dir.mkdir(parents=True, exist_ok=True)
    _run.input_dir = env.input_dir
    return _run


# ---------------------------------------------------------------- main
def evaluate(backend, samplers, cfgs, n_prompts, n_seeds, steps, threads, save_dir=None):
    scenes, prompts = prompt_set(n_prompts)
    all_prompts = [p for p in prompts for _ in range(n_seeds)]
    all_scenes = [s for s in scenes for _ in range(n_seeds)]
    seeds = [1000 + i for i in range(len(all_prompts))]
    rows = []
    for sampler in samplers:
        for cfg in cfgs:
            t = time.time()
            imgs = backend.generate(all_prompts, seeds, steps, cfg, sampler)
            dt = (time.time() - t) / len(imgs)
            acc = accuracy([score(im, sc) for im, sc in zip(imgs, all_scenes)])
            rows.append({"sampler": sampler, "cfg": cfg, "steps": steps, "n": len(imgs), "s_per_image": dt, **acc})
            print(f"{sampler:>10} cfg {cfg:>4}: " + "  ".join(f"{k} {acc[k]:.3f}" for k in
                  ("bg", "color", "pos", "shape", "size", "all")) + f"   {dt * 1000:.0f} ms/image", flush=True)
            if save_dir:
                from PIL import Image
                d = Path(save_dir); d.mkdir(parents=True, exist_ok=True)
                grid = np.concatenate([np.concatenate(list(imgs[i:i + 16]), 1)
                                       for i in range(0, min(len(imgs), 64) // 16 * 16, 16)], 0)
                Image.fromarray(grid).save(d / f"{sampler}_cfg{cfg}.png")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(DEFAULT_CKPT))
    ap.add_argument("--backend", choices=["engine", "diffusers"], default="engine")
    ap.add_argument("--samplers", default="euler,ddim")
    ap.add_argument("--cfgs", default=f"1,{DEFAULT_CFG:g}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--save-grids")
    ap.add_argument("--table", action="store_true", help="every sampler (or --samplers): 20 steps cfg 6, 20 steps "
                    "at its sensible cfg, 10 steps cfg 6, as a markdown table")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    backend = (DiffusersBackend if a.backend == "diffusers" else EngineBackend)(Path(a.ckpt))
    print(f"backend {a.backend}, checkpoint {a.ckpt} ({os.path.getsize(a.ckpt) / 1e6:.1f} MB), "
          f"load {backend.load_s:.2f}s, {a.prompts} prompts x {a.seeds} seeds, {a.steps} steps, {a.threads} threads")
    samplers = all_samplers() if a.samplers == "all" or (a.table and a.samplers == "euler,ddim") \
        else a.samplers.split(",")
    if a.table:
        rows = table(backend, samplers, a.prompts, a.seeds, a.threads)
    else:
        rows = evaluate(backend, samplers, [float(c) for c in a.cfgs.split(",")], a.prompts, a.seeds,
                        a.steps, a.threads, a.save_grids)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
