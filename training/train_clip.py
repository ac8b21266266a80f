"""A tiny CLIP (image tower + text tower, contrastive loss) trained on the shapes world, exported in transformers'
CLIPModel key layout to ``models/clip_vision/`` for CLIPVisionLoader and Loom's ranking node.

    python -m training --only clip

Images: world.make_dataset (one or two shapes, 64x64), with light Gaussian pixel noise (std 0..0.04) so the
image tower also reads the slightly soft images the bundled diffusion model draws. Captions: world.caption, every
phrasing, re-drawn each step. Loss: CLIP's symmetric cross-entropy over the batch with a learned temperature.
Preprocessing is modelstore.clip_vision's (resize to 64, OpenAI mean/std), so training and inference agree.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .sample import tokenizer

TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407)
VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1, image_size=64,
              patch_size=8, num_channels=3, hidden_act="quick_gelu")
PROJ = 64


def build_model():
    from transformers import CLIPConfig, CLIPModel
    return CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=PROJ))


def pixels(imgs_uint8: np.ndarray) -> torch.Tensor:
    """N,64,64,3 uint8 -> CLIP pixel_values via the same preprocessing as the loader."""
    from modelstore.clip_vision import CLIP_MEAN, CLIP_STD
    x = torch.from_numpy(imgs_uint8).float().div(255).movedim(-1, 1)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def tokens(texts: list[str]) -> torch.Tensor:
    # "longest" padding in training: the text tower is causal and pools at the first end token, so trailing pads
    # (the loader pads to 77) do not change the embedding.
    return tokenizer()(list(texts), padding="longest", return_tensors="pt").input_ids


def train(work: Path, steps: int = 2500, batch: int = 128, lr: float = 1e-3, n_images: int = 16000, seed: int = 0,
          log=print) -> Path:
    """Train (skipped when ``work/clip.pt`` exists) and return the checkpoint path."""
    ck = work / "clip.pt"
    if ck.exists():
        log(f"clip: {ck} exists, skipping training")
        return ck
    torch.manual_seed(seed)
    t0 = time.time()
    imgs, scenes = world.make_dataset(n_images, seed=seed + 5)
    px = pixels(imgs)
    log(f"clip: rendered {n_images} images in {time.time() - t0:.0f}s")
    model = build_model()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    t0 = time.time()
    for step in range(steps):
        rng = random.Random(seed * 100003 + step)
        g = torch.Generator().manual_seed(seed * 100003 + step)
        idx = torch.randint(0, n_images, (batch,), generator=g)
        x = px[idx]
        x = x + torch.randn(x.shape, generator=g) * (torch.rand(batch, 1, 1, 1, generator=g) * 0.04 / 0.27)
        caps = [world.caption(scenes[i], rng) for i in idx.tolist()]
        out = model(input_ids=tokens(caps), pixel_values=x, return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 250 == 0 or step == steps - 1:
            acc = (out.logits_per_text.argmax(1) == torch.arange(batch)).float().mean().item()
            log(f"clip step {step} loss {out.loss.item():.3f} in-batch t->i acc {acc:.2f} "
                f"scale {model.logit_scale.exp().item():.1f} ({time.time() - t0:.0f}s)")
    torch.save(model.state_dict(), ck)
    return ck


def export(ck: Path, out: Path, dtype=torch.float16) -> dict:
    """CLIPModel state dict -> one safetensors file (no position_ids buffers)."""
    from safetensors.torch import save_file
    sd = torch.load(ck, map_location="cpu", weights_only=True)
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items() if not k.endswith("position_ids")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out), metadata={"format": "pt", "loom.model": "loom-shapes-clip"})
    return sd
