"""Inpainting benchmark for the bundled models: recolour one shape and keep everything else (--task recolour), or
fill an empty area from the source image alone (--task keep).

For each of a fixed set of single-shape scenes (the shape off-centre), the source image is rendered, the mask is
the shape's bounding box grown by 4 px, and the prompt asks for the same scene with the shape in a new colour.
Each method runs through Loom's engine (20 steps, euler, cfg 8, denoise 1.0) and the result is read back with the
pixel scorer:

- colour: the shape has the requested colour;            kept shape: same type and position as before;
- background: the background colour is unchanged;       kept-area error: mean |result - source| outside the
  grown box, in 0..255 units (the VAE's own round trip on these images is about 5).

Methods: the 4-channel model with VAEEncode + SetLatentNoiseMask; the 9-channel variant with
InpaintModelConditioning, noise mask on (ComfyUI's default) and off (the model alone keeps the unmasked area); and
"4ch", plain txt2img from the same prompt and seed, the baseline that sees no source image at all (in this simple
world the prompt alone already fixes most of the kept area, so the baseline's error is the bar to beat).

--task keep masks the 28 px farthest from the shape and gives an empty prompt: the only information about the
scene is the source image, so it shows whether a method reads it ("clean fill": the repainted area's mean colour
distance to the background is < 40).

    python bench/inpaint_quality.py [--task recolour|keep] [--scenes 120] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import _engine_runner  # noqa: E402

from training import world  # noqa: E402
from training.scorer import analyse  # noqa: E402

CKPTS = ROOT / "models" / "checkpoints"
BASE, INPAINT = CKPTS / "loom-shapes-64.safetensors", CKPTS / "loom-shapes-64-inpainting.safetensors"
GROW = 4


def mask_box(s: world.ShapeSpec) -> tuple[int, int, int, int]:
    r = world.RADIUS[s.size] + GROW
    x0, y0 = max(0, int(s.cx - r)), max(0, int(s.cy - r))
    x1, y1 = min(world.SIZE, int(np.ceil(s.cx + r))), min(world.SIZE, int(np.ceil(s.cy + r)))
    return x0, y0, x1 - x0, y1 - y0


def workflow(method: str, image: str, box, prompt: str, seed: int, inpaint_name: str = INPAINT.name) -> dict:
    x, y, w, h = box
    ck = inpaint_name if method.startswith("9ch") else BASE.name
    wf = {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ck}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "on": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w, "height": h}},
        "off": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "mask": {"class_type": "MaskComposite", "inputs": {"destination": ["off", 0], "source": ["on", 0],
                                                           "x": x, "y": y, "operation": "add"}},
    }
    ks = {"seed": seed, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
          "model": ["ck", 0]}
    if method.startswith("4ch"):
        wf["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ck", 2]}}
        latent = ["enc", 0]  # "4ch" alone is the no-context baseline: plain txt2img from the same prompt and seed
        if method == "4ch+noise_mask":
            wf["lat"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": latent, "mask": ["mask", 0]}}
            latent = ["lat", 0]
        ks.update(positive=["pos", 0], negative=["neg", 0], latent_image=latent)
    else:
        wf["ic"] = {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ck", 2], "pixels": ["img", 0],
            "mask": ["mask", 0], "noise_mask": method == "9ch+noise_mask"}}
        ks.update(positive=["ic", 0], negative=["ic", 1], latent_image=["ic", 2])
    wf["3"] = {"class_type": "KSampler", "inputs": ks}
    wf["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["ck", 2]}}
    wf["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return wf


FAR = {"left": (36, 0, 28, 64), "right": (0, 0, 28, 64), "top": (0, 36, 64, 28), "bottom": (0, 0, 64, 28)}


def tasks(n: int, task: str):
    """(source scene, wanted scene, mask box (x, y, w, h), prompt) for the off-centre scenes among the
    evaluator's first n. recolour: the shape's box, a prompt with a new colour. keep: the 28 px of the image
    farthest from the shape, an empty prompt - only the source image says what the scene is."""
    out = []
    for sc in world.eval_scenes(n, seed=2024):
        s = sc.shapes[0]
        if s.pos == "center":
            continue
        if task == "keep":
            out.append((sc, sc, FAR[s.pos], ""))
            continue
        choices = [c for c in world.COLORS if c not in (sc.bg, s.color)]
        new = world.ShapeSpec(s.shape, choices[len(out) % len(choices)], s.size, s.pos, s.cx, s.cy)
        want = world.Scene(sc.bg, [new])
        out.append((sc, want, mask_box(s), world.eval_caption(want)))
    return out


def main(argv=None):
    import torch
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["recolour", "keep"], default="recolour")
    ap.add_argument("--scenes", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="4ch,4ch+noise_mask,9ch+noise_mask,9ch")
    ap.add_argument("--inpaint", default=INPAINT.name, help="the 9-channel checkpoint's name in models/checkpoints")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = _engine_runner(BASE)  # LoadImage reads the sources from run.input_dir
    todo = tasks(a.scenes, a.task)
    what = f"shape box + {GROW} px, new colour" if a.task == "recolour" else "far 28 px, empty prompt"
    print(f"{a.task}: {len(todo)} scenes, mask = {what}, euler 20 steps cfg 8, {a.threads} threads")
    for method in a.methods.split(","):
        t0, res, errs = time.time(), [], []
        for i, (src, want, box, prompt) in enumerate(todo):
            img = world.render(src)
            name = f"src_{i}.png"
            Image.fromarray(img).save(run.input_dir / name)
            out = run(workflow(method, name, box, prompt, 1000 + i, a.inpaint))
            x, y, w, h = box
            keep = np.ones(img.shape[:2], bool)
            keep[y:y + h, x:x + w] = False
            errs.append(np.abs(out.astype(float) - img.astype(float))[keep].mean())
            an = analyse(out, 1)
            got = an["shapes"][0] if an["shapes"] else None
            ws = want.shapes[0]
            r = {"colour": got is not None and got["color"] == ws.color,
                 "kept shape": got is not None and got["shape"] == ws.shape and got["pos"] == ws.pos,
                 "background": an["bg"] == want.bg}
            if a.task == "keep":  # the repainted area should be plain background
                fill = out[~keep].astype(float)
                r["clean fill"] = np.linalg.norm(fill - np.array(world.PALETTE[src.bg], float), axis=-1).mean() < 40
            res.append(r)
        dt = (time.time() - t0) / len(todo)
        acc = {k: np.mean([r[k] for r in res]) for k in res[0]}
        print(f"{method:>15}: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()) +
              f"  kept-area error {np.mean(errs):.1f} (p90 {np.percentile(errs, 90):.1f})  {dt * 1000:.0f} ms/image",
              flush=True)


if __name__ == "__main__":
    main()
