"""Model patches on Loom's bundled model: prompt adherence and time per image with and without each guidance
patch (SelfAttentionGuidance, PerturbedAttentionGuidance, FreeU), through the sampler the nodes use.

    python bench/model_patches.py                       # 24 prompts x 1 seed, 10 steps euler, cfg 6
    python bench/model_patches.py --prompts 48 --seeds 2 --steps 20

Adherence: training/scorer.py per attribute (background colour, shape colour, position, shape type, size) on the
held-out evaluation scenes (the same prompt set as bench/quality.py), "all" = every attribute right. The bundled
model is 64x64 px (8x8 latents, a 2x2 middle block), so these say whether a patch hurts or helps this model, not
what it does for a full-size SD1.5.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CKPT = "loom-shapes-64.safetensors"
PATCHES = {
    "none": lambda m: m,
    "SAG 0.5 (blur 2)": lambda m: m.with_options(sag=(0.5, 2.0)),
    "SAG 1.0 (blur 2)": lambda m: m.with_options(sag=(1.0, 2.0)),
    "PAG 3.0": lambda m: m.with_options(pag_scale=3.0),
    "FreeU 1.1/1.2/0.9/0.2": lambda m: m.with_options(freeu=(1.1, 1.2, 0.9, 0.2, False)),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/model_patches.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from nodes.conditioning import encode_text
    from nodes.sampler_core import Noise, sample
    from nodes.samplers import Plan
    from nodes.vae import decode
    from training import world
    from training.scorer import accuracy, score

    torch.set_num_threads(a.threads)
    store = ModelStore(ModelFolders(ROOT / "models"), device="cpu", dtype="fp32")
    model, clip, vae = store.load_checkpoint(CKPT)
    scenes = world.eval_scenes(a.prompts, seed=2024)
    prompts = [world.eval_caption(s, i % 2) for i, s in enumerate(scenes)]
    neg = encode_text(clip, "")
    conds = [encode_text(clip, p) for p in prompts]
    print(f"{a.prompts} prompts x {a.seeds} seeds, {a.steps} steps euler, cfg {a.cfg}, {a.threads} thread(s)")
    print("| patch | bg | color | pos | shape | size | all | s/image |\n|---|---|---|---|---|---|---|---|")
    for name, patch in PATCHES.items():
        m = patch(model)
        results, t0 = [], time.time()
        for scene, cond in zip(scenes, conds):
            for seed in range(a.seeds):
                lat = sample(None, m, cond, neg, {"samples": torch.zeros(1, 4, 8, 8)},
                             Plan("euler", "normal", a.steps), 0, a.steps, cfg=a.cfg, noise=Noise(seed)).samples
                img = decode(vae, lat)[0]
                results.append(score((img.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), scene))
        dt = (time.time() - t0) / len(results)
        acc = accuracy(results)
        print(f"| {name} | " + " | ".join(f"{acc[k]:.2f}" for k in ("bg", "color", "pos", "shape", "size", "all"))
              + f" | {dt:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
