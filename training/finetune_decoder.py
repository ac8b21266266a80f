"""Stage 2b: fine-tune the VAE *decoder* (post_quant_conv + decoder) with the encoder frozen.

The encoder (and so the latent space the UNet is trained on, already scale-folded) does not change, so this can run
while the UNet trains. It sharpens shape edges, which the shape-type score depends on. Input: vae_folded.pt;
output: vae_folded.pt updated in place at the end (the pre-finetune weights stay in vae_folded_base.pt)."""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .train_vae import batch_for_step, evaluate, lr_at


def finetune(work: Path, steps: int, bs: int = 16, lr: float = 3e-4, seed: int = 5, ckpt_every: int = 100,
             log=print):
    from .train_unet import load_folded_vae
    done = work / "decoder_done.pt"
    if done.exists():
        log("decoder: finetune already done, skipping")
        return
    base = work / "vae_folded_base.pt"
    if not base.exists():
        shutil.copy(work / "vae_folded.pt", base)
    vae = load_folded_vae(work)
    vae.load_state_dict(torch.load(base))
    for p in vae.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    ck = work / "decoder_ckpt.pt"
    step, elapsed = 0, 0.0
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step, elapsed = st["step"], st["elapsed"]
        log(f"decoder: resumed at {step}")
    vae.eval(); vae.decoder.train()
    t0 = time.time() - elapsed
    hist = []
    while step < steps:
        x = batch_for_step(seed, step, bs)
        g = torch.Generator().manual_seed(seed * 7919 + step)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, lr, warmup=50)
        with torch.no_grad():
            d = vae.encode(x).latent_dist
            z = d.mean + d.std * torch.randn(d.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = torch.mean((rec - x) ** 2) + 0.5 * torch.mean(torch.abs(rec - x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        hist.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"decoder step {step}/{steps} loss {np.mean(hist):.4f} t {time.time() - t0:.0f}s"); hist = []
        if step % ckpt_every == 0 or step == steps:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - t0}, ck.with_suffix(".tmp"))
            os.replace(ck.with_suffix(".tmp"), ck)
    wall = time.time() - t0
    ev = evaluate(vae)
    log(f"decoder done: {steps} steps, {wall:.0f}s, eval {ev}")
    tmp = work / "vae_folded.tmp"
    torch.save(vae.state_dict(), tmp)
    os.replace(tmp, work / "vae_folded.pt")
    torch.save({"wall_s": wall, "steps": steps, "eval": ev}, done)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("LOOM_THREADS", "1")))
    finetune(Path(a.work), a.steps, a.bs, a.lr)


if __name__ == "__main__":
    main()
