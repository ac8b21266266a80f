"""Stage 1: train the AutoencoderKL (8x downsampling, 4 latent channels) on rendered shapes.

Data is rendered on the fly from (seed, step), so a resumed run sees exactly the batches a straight run would.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import world
from .scorer import accuracy, score

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=64, scaling_factor=0.18215, norm_num_groups=32,
)


def build_vae(config: dict | None = None):
    from diffusers import AutoencoderKL
    return AutoencoderKL(**(config or VAE_CONFIG))


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def batch_for_step(seed: int, step: int, bs: int) -> torch.Tensor:
    imgs, _ = world.make_dataset(bs, seed * 1_000_003 + step)
    return to_tensor(imgs)


def lr_at(step: int, total: int, peak: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def evaluate(vae, n: int = 256, seed: int = 999) -> dict:
    vae.eval()
    imgs, scenes = world.make_dataset(n, seed, two_shape_prob=0.0)
    x = to_tensor(imgs)
    recs = []
    lat = []
    for i in range(0, n, 64):
        d = vae.encode(x[i:i + 64]).latent_dist
        lat.append(d.mean)
        recs.append(vae.decode(d.mean).sample)
    rec = torch.cat(recs)
    lat = torch.cat(lat)
    ru8 = to_uint8(rec)
    mae = float(np.abs(ru8.astype(np.float32) - imgs.astype(np.float32)).mean())
    acc = accuracy([score(r, s) for r, s in zip(ru8, scenes)])
    vae.train()
    return {"mae": mae, "latent_std": float(lat.std()), "latent_mean": float(lat.mean()), "acc": acc}


def train(work: Path, steps: int, bs: int = 16, lr: float = 5e-4, seed: int = 0, kl_weight: float = 1e-4,
          ckpt_every: int = 200, log=print) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    final = work / "vae_final.pt"
    if final.exists():
        log(f"vae: {final} exists, skipping")
        return final
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    ck = work / "vae_ckpt.pt"
    step, elapsed = 0, 0.0
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step = st["step"]
        elapsed = st.get("elapsed", 0.0)
        torch.set_rng_state(st["rng"])
        log(f"vae: resumed at step {step}")
    vae.train()
    t0 = time.time() - elapsed
    run_loss = []
    while step < steps:
        x = batch_for_step(seed, step, bs)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        dist = vae.encode(x).latent_dist
        z = dist.sample()
        rec = vae.decode(z).sample
        mse = torch.mean((rec - x) ** 2)
        l1 = torch.mean(torch.abs(rec - x))
        kl = torch.mean(0.5 * (dist.mean ** 2 + dist.var - 1.0 - dist.logvar))
        loss = mse + 0.5 * l1 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss.append(float(loss))
        if step % 50 == 0:
            log(f"vae step {step}/{steps} loss {np.mean(run_loss):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"t {time.time() - t0:.0f}s")
            run_loss = []
        if step % ckpt_every == 0 or step == steps:
            tmp = ck.with_suffix(".tmp")
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - t0, "rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, ck)
    wall = time.time() - t0
    ev = evaluate(vae)
    log(f"vae done: {steps} steps, {wall:.0f}s, eval {json.dumps(ev)}")
    torch.save({"model": vae.state_dict(), "config": VAE_CONFIG, "wall_s": wall, "steps": steps, "eval": ev}, final)
    return final


def load_trained(work: Path):
    st = torch.load(work / "vae_final.pt", weights_only=False)
    vae = build_vae(st["config"])
    vae.load_state_dict(st["model"])
    vae.eval()
    return vae, st


def fold_scale(vae, target_scale: float = 0.18215, n: int = 512, seed: int = 4242) -> float:
    """Rescale the latent space in the weights so that latents * target_scale have unit std.

    z' = k z: quant_conv's mean rows scale by k, its logvar bias rows gain 2 ln k (var scales by k^2),
    post_quant_conv's input weights divide by k. decode(encode(x)) is unchanged. Returns k."""
    with torch.no_grad():
        imgs, _ = world.make_dataset(n, seed)
        x = to_tensor(imgs)
        lat = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, n, 64)])
        std = float(lat.std())
        k = 1.0 / (target_scale * std)
        c = vae.config.latent_channels
        qc = vae.quant_conv
        qc.weight[:c] *= k
        qc.bias[:c] *= k
        qc.bias[c:] += 2.0 * math.log(k)
        vae.post_quant_conv.weight /= k
    return k


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("LOOM_THREADS", "1")))
    train(Path(a.work), a.steps, a.bs, a.lr, a.seed)


if __name__ == "__main__":
    main()
