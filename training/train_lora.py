"""An example LoRA for the bundled model: ``loom-shapes-grayscale-lora`` makes its pictures grayscale.

    python -m training --only lora

Rank-4 LoRA on every UNet attention projection (attn1/attn2 to_q, to_k, to_v, to_out.0), trained with SD1's DDPM
epsilon loss on shapes-world images converted to grayscale (luminance in all three channels) with their ordinary
colour captions, so the base model's colour words stop colouring. UNet, text encoder and VAE stay frozen. Saved in
kohya's layout (``lora_unet_<diffusers module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``),
which LoraLoader reads like any SD1 LoRA. Measured by the mean chroma (max - min of R,G,B, 0..255) of the model's
pictures with and without it (see the card).
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
from .sample import SCALING, encode_text, generate

RANK = 4
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0")


def grayscale(imgs: np.ndarray) -> np.ndarray:
    y = imgs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(y.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def chroma(imgs: np.ndarray) -> float:
    """Mean over pixels of max(R,G,B) - min(R,G,B), 0..255."""
    f = imgs.astype(np.float32)
    return float((f.max(-1) - f.min(-1)).mean())


class LoRA(torch.nn.Module):
    """Down/up matrices for each targeted Linear of ``unet``, applied with forward hooks."""

    def __init__(self, unet, rank: int = RANK, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names, self.rank, self.scale, hooks = [], rank, 1.0, []
        self.down, self.up = torch.nn.ParameterList(), torch.nn.ParameterList()
        for name, m in unet.named_modules():
            if isinstance(m, torch.nn.Linear) and name.endswith(TARGETS):
                i = len(self.names)
                self.names.append(name)
                self.down.append(torch.nn.Parameter(torch.randn(rank, m.in_features, generator=g) / math.sqrt(m.in_features)))
                self.up.append(torch.nn.Parameter(torch.zeros(m.out_features, rank)))  # starts as the base model
                hooks.append(m.register_forward_hook(lambda mod, inp, out, i=i: out + self.scale * F.linear(
                    F.linear(inp[0], self.down[i]), self.up[i])))
        self.hooks = hooks

    def state_dict_kohya(self) -> dict[str, torch.Tensor]:
        sd = {}
        for name, d, u in zip(self.names, self.down, self.up):
            key = "lora_unet_" + name.replace(".", "_")
            sd[key + ".lora_down.weight"] = d.detach().clone().contiguous()
            sd[key + ".lora_up.weight"] = u.detach().clone().contiguous()
            sd[key + ".alpha"] = torch.tensor(float(self.rank))  # alpha = rank: scale 1
        return sd


def train(ckpt: Path, out: Path, steps: int = 200, batch: int = 8, lr: float = 3e-3, n_images: int = 2000,
          seed: int = 0, work: Path | None = None, log=print) -> dict:
    from safetensors.torch import save_file
    import diffusers

    from .export import load_checkpoint

    torch.manual_seed(seed)
    unet, vae, te = load_checkpoint(ckpt, dtype=torch.float32)
    for m in (unet, vae, te):
        m.requires_grad_(False).eval()
    imgs, scenes = world.make_dataset(n_images, seed=seed + 77)
    cache = work / f"lora_latents_{n_images}_{seed}.pt" if work else None
    if cache is not None and cache.exists():
        lat = torch.load(cache, weights_only=True)
    else:
        x = torch.from_numpy(grayscale(imgs)).float().div(127.5).sub(1).movedim(-1, 1)
        t0 = time.time()
        with torch.no_grad():
            lat = torch.cat([vae.encode(x[i:i + 200]).latent_dist.mean for i in range(0, n_images, 200)]) * SCALING
        log(f"lora: encoded {n_images} grayscale images in {time.time() - t0:.0f}s")
        if cache is not None:
            torch.save(lat, cache)
    sch = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear")
    lora = LoRA(unet, seed=seed)
    opt = torch.optim.AdamW(lora.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        rng = random.Random(seed * 7919 + step)
        g = torch.Generator().manual_seed(seed * 7919 + step)
        idx = torch.randint(0, n_images, (batch,), generator=g)
        caps = [world.caption(scenes[i], rng) for i in idx.tolist()]
        with torch.no_grad():
            ctx = encode_text(te, caps)
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(lat[idx].shape, generator=g)
        loss = F.mse_loss(unet(sch.add_noise(lat[idx], noise, t), t, encoder_hidden_states=ctx).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"lora step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = lora.state_dict_kohya()
    save_file({k: v.half() if v.ndim else v for k, v in sd.items()}, str(out),
              metadata={"format": "pt", "ss_network_dim": str(RANK), "ss_network_alpha": str(RANK),
                        "loom.model": "loom-shapes-grayscale-lora"})
    # measure: the same prompts and seeds with and without the LoRA
    scenes_e = world.eval_scenes(8)
    prompts = [world.eval_caption(s) for s in scenes_e]
    seeds = list(range(8))
    res = {}
    for s in (0.0, 1.0):
        lora.scale = s
        res[s] = chroma(generate(unet, te, vae, prompts, seeds, steps=10, cfg=6.0))
    for h in lora.hooks:
        h.remove()
    res_train = chroma(imgs[:200])
    log(f"lora: mean chroma at strength 0 / 1: {res[0.0]:.1f} / {res[1.0]:.1f} "
        f"(training images before graying: {res_train:.1f})")
    return {"tensors": len(sd), "chroma": res, "chroma_world": res_train, "steps": steps, "batch": batch}
