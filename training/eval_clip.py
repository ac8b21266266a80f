"""Measure the tiny CLIP (``loom-shapes-clip``) and write its model card.

1. Retrieval: held-out scenes (a seed the training never used), in groups of 8; for each scene's caption (random
   phrasing), is its own image the highest-scoring of the 8? Chance is 1/8 = 12.5%.
2. Ranking generations: for each of ``n_prompts`` evaluation prompts, the bundled diffusion model draws 8 variants
   (seeds); training/scorer.py judges each one (background, colour, shape, size, position all right). Compared: the
   unranked first variant, the variant CLIP ranks first, and "any of the 8 correct" (the ceiling of any ranking).
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import world
from .scorer import score

ROOT = Path(__file__).resolve().parents[1]


def retrieval(clip, n_groups: int = 100, seed: int = 424242) -> dict:
    imgs, scenes = world.make_dataset(8 * n_groups, seed=seed)
    rng = random.Random(seed)
    caps = [world.caption(s, rng) for s in scenes]
    x = torch.from_numpy(imgs).float().div(255)
    hits = 0
    with torch.no_grad():
        ie = torch.nn.functional.normalize(clip.encode_image(x)["image_embeds"], dim=-1)
        te = torch.nn.functional.normalize(clip.encode_text(caps), dim=-1)
    for g in range(n_groups):
        sl = slice(8 * g, 8 * g + 8)
        sims = te[sl] @ ie[sl].T
        hits += int((sims.argmax(1) == torch.arange(8)).sum())
    return {"queries": 8 * n_groups, "top1": hits / (8 * n_groups), "chance": 1 / 8}


def ranking(clip, ckpt: Path, n_prompts: int = 48, variants: int = 8, steps: int = 20, cfg: float = 6.0) -> dict:
    from .export import load_checkpoint
    from .sample import generate

    unet, vae, te = load_checkpoint(ckpt, dtype=torch.float32)
    scenes = world.eval_scenes(n_prompts)
    prompts = [world.eval_caption(s) for s in scenes]
    first = ranked = any_ok = 0
    per_prompt = []
    all_imgs = generate(unet, te, vae, [p for p in prompts for _ in range(variants)],
                        [1000 * i + k for i in range(len(prompts)) for k in range(variants)], steps=steps, cfg=cfg,
                        sampler="euler", batch=64)
    for i, (sc, p) in enumerate(zip(scenes, prompts)):
        imgs = all_imgs[variants * i:variants * (i + 1)]
        ok = [all(score(im, sc).values()) for im in imgs]
        sims = clip.similarity(torch.from_numpy(imgs).float().div(255), p)
        top = int(sims.argmax())
        first += ok[0]
        ranked += ok[top]
        any_ok += any(ok)
        per_prompt.append({"prompt": p, "correct": ok, "clip_top": top})
    n = len(prompts)
    return {"prompts": n, "variants": variants, "steps": steps, "cfg": cfg, "sampler": "euler",
            "first_variant_correct": first / n, "clip_ranked_first_correct": ranked / n,
            "any_variant_correct": any_ok / n, "per_prompt": per_prompt}


def evaluate(clip_file: Path, ckpt: Path, out_json: Path, n_prompts: int = 48, log=print) -> dict:
    from modelstore.clip_vision import load
    t0 = time.time()
    clip = load(clip_file)
    r = {"retrieval": retrieval(clip)}
    log(f"clip eval: retrieval top-1 {r['retrieval']['top1']:.3f} (chance 0.125), {time.time() - t0:.0f}s")
    r["ranking"] = ranking(clip, ckpt, n_prompts)
    rk = r["ranking"]
    log(f"clip eval: first variant correct {rk['first_variant_correct']:.3f}, CLIP-ranked first correct "
        f"{rk['clip_ranked_first_correct']:.3f}, any of 8 {rk['any_variant_correct']:.3f} ({time.time() - t0:.0f}s)")
    out_json.write_text(json.dumps(r, indent=1))
    return r
