"""Stage 2: encode a fixed rendered dataset to latents with the (scale-folded) VAE, then train the UNet and the CLIP
text encoder together with SD1's DDPM objective (1000 steps, scaled_linear 0.00085-0.012, epsilon prediction).

Two phases:
  A. `steps` steps, timesteps uniform, min-SNR-5 loss weighting (epsilon prediction). This learns colours, sizes and
     shape types, but not positions: an epsilon loss sees an error d in the predicted image x0 only as
     sqrt(SNR(t)) * d, and SNR(999) = 0.0047, so at the high-noise steps where the layout is decided a wrong
     layout costs almost nothing; at lower noise the layout can be read off the noisy input instead of the text.
  B. "composition", `comp_steps` steps from phase A's EMA weights with a fresh optimiser: half of every batch draws
     t from [700, 1000), and the per-sample weight is floored at COMP_X0_FLOOR / SNR(t), i.e. an x0-space weight
     of at least COMP_X0_FLOOR (0.1). 600 steps take position adherence from ~25% to ~98% (measured, see the model
     card); colours and shape types are kept.

Each step's batch indices, caption phrasings, caption dropout, timesteps and noise come from a generator seeded with
(seed, step), so a resumed run reproduces a straight run (for a fixed thread count)."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .sample import SCALING, generate, tokenize
from .scorer import accuracy, score

TEXT_CONFIG = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=128, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

UNET_VARIANTS = {
    # name: (block_out_channels, layers_per_block)
    "s64x2": ((64, 128), 1),
    "s64x3": ((64, 128, 128), 1),
    "s96x2": ((96, 192), 1),
    "s64x2l2": ((64, 128), 2),
    "s128x2": ((128, 128), 1),
}


def unet_config(variant: str = "s64x2", cross_dim: int = 128, in_channels: int = 4) -> dict:
    ch, lpb = UNET_VARIANTS[variant]
    n = len(ch)
    return dict(sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=lpb,
                block_out_channels=ch, down_block_types=("CrossAttnDownBlock2D",) * n,
                up_block_types=("CrossAttnUpBlock2D",) * n, mid_block_type="UNetMidBlock2DCrossAttn",
                cross_attention_dim=cross_dim, attention_head_dim=8, use_linear_projection=False,
                transformer_layers_per_block=1, norm_num_groups=32)


def build_text_encoder(config: dict | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(**(config or TEXT_CONFIG)))


def build_unet(config: dict):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**config)


def ddpm_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


# ---------------------------------------------------------------- latents
def encode_dataset(work: Path, n: int, seed: int = 1, log=print) -> Path:
    from .train_vae import fold_scale, load_trained, to_tensor
    out = work / "latents.pt"
    if out.exists():
        log(f"latents: {out} exists, skipping")
        return out
    vae, st = load_trained(work)
    k = fold_scale(vae)
    t0 = time.time()
    imgs, scenes = world.make_dataset(n, seed)
    lat = []
    with torch.no_grad():
        for i in range(0, n, 128):
            lat.append(vae.encode(to_tensor(imgs[i:i + 128])).latent_dist.mean)
    lat = torch.cat(lat) * SCALING
    log(f"latents: encoded {n} in {time.time() - t0:.0f}s; fold k={k:.4f}; scaled std {lat.std():.3f} "
        f"mean {lat.mean():.3f}")
    torch.save(vae.state_dict(), work / "vae_folded.pt")
    torch.save({"latents": lat, "seed": seed, "n": n, "fold_k": k,
                "scaled_std": float(lat.std()), "scaled_mean": float(lat.mean())}, out)
    return out


def load_folded_vae(work: Path):
    from .train_vae import VAE_CONFIG, build_vae
    vae = build_vae(VAE_CONFIG)
    vae.load_state_dict(torch.load(work / "vae_folded.pt"))
    return vae.eval()


# ---------------------------------------------------------------- training
def eps_loss(pred: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, x0_floor: float = 0.0) -> torch.Tensor:
    """Epsilon-prediction MSE with min-SNR-5 weighting; ``x0_floor`` > 0 floors each sample's weight at an x0-space
    weight of ``x0_floor`` (phase B, see the module docstring). ``a``: alpha_bar(t), shape (B,1,1,1)."""
    snr = a.view(-1) / (1 - a.view(-1))
    w = torch.clamp(snr, max=5.0) / snr
    if x0_floor:
        w = torch.maximum(w, x0_floor / snr)
    return (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()


@torch.no_grad()
def ema_update(pairs, decay: float) -> None:
    """dst <- decay * dst + (1 - decay) * src for every (src, dst) module pair."""
    for src, dst in pairs:
        for ps, pd in zip(src.parameters(), dst.parameters()):
            pd.lerp_(ps, 1 - decay)


def lr_at(step, total, peak, warmup=200, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


COMP_X0_FLOOR = 0.1   # phase B: per-sample x0-space loss weight is at least this
COMP_HIGH_T = 700     # phase B: half of each batch draws t from [COMP_HIGH_T, 1000)
COMP_HIGH_FRAC = 0.5
COMP_EMA = 0.995      # phase B is short: a 200-step EMA horizon instead of 1000
COMP_WARMUP = 50


class Trainer:
    def __init__(self, work: Path, variant: str, steps: int, bs: int = 96, lr: float = 8e-4, seed: int = 0,
                 dropout: float = 0.1, ema_decay: float = 0.999, comp_steps: int = 0, comp_lr: float = 3e-4,
                 log=print):
        self.work, self.steps, self.bs, self.lr, self.seed, self.dropout = work, steps, bs, lr, seed, dropout
        self.ema_decay, self.log = ema_decay, log
        self.comp_steps, self.comp_lr = comp_steps, comp_lr
        self.total = steps + comp_steps
        torch.manual_seed(seed)
        self.te = build_text_encoder()
        self.ucfg = unet_config(variant, TEXT_CONFIG["hidden_size"])
        self.unet = build_unet(self.ucfg)
        self.variant = variant
        self.ema_te, self.ema_unet = copy.deepcopy(self.te), copy.deepcopy(self.unet)
        for p in list(self.ema_te.parameters()) + list(self.ema_unet.parameters()):
            p.requires_grad_(False)
        self.opt = self._optimizer()
        self.alphas = ddpm_alphas()
        self.step, self.elapsed = 0, 0.0
        self.history = []
        self.comp_started = False

    def _optimizer(self):
        emb = self.te.embeddings.token_embedding.weight
        decay, no_decay = [], [emb]
        for m in (self.unet, self.te):
            for name, p in m.named_parameters():
                if p is emb:
                    continue
                (no_decay if p.ndim < 2 else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=(0.9, 0.99))

    def start_composition(self):
        """Phase A -> B: continue from phase A's EMA weights with a fresh optimiser (done once, recorded in the
        checkpoint so a resume inside phase B does not redo it)."""
        self.unet.load_state_dict(self.ema_unet.state_dict())
        self.te.load_state_dict(self.ema_te.state_dict())
        self.opt = self._optimizer()
        self.comp_started = True
        self.log(f"unet: phase A done at step {self.step}; composition phase, {self.comp_steps} steps")

    # data
    def load_data(self):
        d = torch.load(self.work / "latents.pt")
        self.lat = d["latents"]
        self.scenes = self._scenes(d["n"], d["seed"])  # same rng sequence as world.make_dataset(n, seed)

    @staticmethod
    def _scenes(n, seed):
        rng = random.Random(seed)
        return [world.sample_scene(rng) for _ in range(n)]

    def batch(self, step, seed=None):
        seed = self.seed if seed is None else seed
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, self.lat.shape[0], (self.bs,), generator=g)
        rng = random.Random(seed * 1_000_003 + step)
        caps = ["" if rng.random() < self.dropout else world.caption(self.scenes[i], rng) for i in idx.tolist()]
        t = torch.randint(0, 1000, (self.bs,), generator=g)
        noise = torch.randn(self.lat[idx].shape, generator=g)
        return self.lat[idx], caps, t, noise

    def train_step(self):
        comp = self.step >= self.steps
        if comp and not self.comp_started:
            self.start_composition()
        if comp:
            s = self.step - self.steps  # phase B's own step count, its own batch stream
            x0, caps, t, noise = self.batch(s, seed=self.seed + 5)
            n_hi = int(COMP_HIGH_FRAC * len(t))
            t[:n_hi] = torch.randint(COMP_HIGH_T, 1000, (n_hi,),
                                     generator=torch.Generator().manual_seed(self.seed * 1_000_003 + s + 99))
            lr = lr_at(s, self.comp_steps, self.comp_lr, warmup=COMP_WARMUP)
        else:
            x0, caps, t, noise = self.batch(self.step)
            lr = lr_at(self.step, self.steps, self.lr)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ctx = self.te(tokenize(caps), attention_mask=None)[0]
        pred = self.unet(xt, t, encoder_hidden_states=ctx).sample
        loss = eps_loss(pred, noise, a, COMP_X0_FLOOR if comp else 0.0)
        raw = F.mse_loss(pred.detach(), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.te.parameters()), 1.0)
        self.opt.step()
        k = self.step - self.steps if comp else self.step
        d = min(COMP_EMA if comp else self.ema_decay, (1 + k) / (10 + k))
        ema_update(((self.unet, self.ema_unet), (self.te, self.ema_te)), d)
        self.step += 1
        return float(loss.detach()), float(raw), float(gn)

    def save(self):
        ck = self.work / "unet_ckpt.pt"
        tmp = ck.with_suffix(".tmp")
        torch.save({"unet": self.unet.state_dict(), "te": self.te.state_dict(),
                    "ema_unet": self.ema_unet.state_dict(), "ema_te": self.ema_te.state_dict(),
                    "opt": self.opt.state_dict(), "step": self.step, "elapsed": self.elapsed,
                    "variant": self.variant, "unet_config": self.ucfg, "text_config": TEXT_CONFIG,
                    "history": self.history, "steps_total": self.total, "steps_a": self.steps,
                    "comp_started": self.comp_started}, tmp)
        os.replace(tmp, ck)

    def resume(self):
        ck = self.work / "unet_ckpt.pt"
        if not ck.exists():
            return False
        st = torch.load(ck, weights_only=False)
        for k, m in (("unet", self.unet), ("te", self.te), ("ema_unet", self.ema_unet), ("ema_te", self.ema_te)):
            m.load_state_dict(st[k])
        self.opt.load_state_dict(st["opt"])
        self.step, self.elapsed, self.history = st["step"], st["elapsed"], st.get("history", [])
        self.comp_started = st.get("comp_started", False)
        self.log(f"unet: resumed at step {self.step} ({self.elapsed:.0f}s done)")
        return True

    def quick_eval(self, vae, n=40, cfg=8.0, sampler="euler", ema=True):
        unet, te = (self.ema_unet, self.ema_te) if ema else (self.unet, self.te)
        unet.eval(); te.eval()
        scenes = world.eval_scenes(n, seed=77)
        prompts = [world.eval_caption(s, i % 2) for i, s in enumerate(scenes)]
        imgs = generate(unet, te, vae, prompts, list(range(n)), steps=20, cfg=cfg, sampler=sampler, batch=40)
        self.unet.train(); self.te.train()
        return accuracy([score(im, s) for im, s in zip(imgs, scenes)])

    def run(self, eval_every=500, ckpt_every=100):
        self.load_data()
        self.resume()
        vae = load_folded_vae(self.work)
        self.unet.train(); self.te.train()
        t_start = time.time() - self.elapsed
        losses = []
        while self.step < self.total:
            loss, raw, gn = self.train_step()
            losses.append((loss, raw, gn))
            self.elapsed = time.time() - t_start
            if self.step % 50 == 0:
                m = np.mean(losses, axis=0)
                self.log(f"unet step {self.step}/{self.total} loss {m[0]:.4f} raw {m[1]:.4f} gn {m[2]:.2f} "
                         f"lr {self.opt.param_groups[0]['lr']:.2e} t {self.elapsed:.0f}s")
                self.history.append({"step": self.step, "loss": m[0], "raw": m[1], "t": self.elapsed})
                losses = []
            if self.step % eval_every == 0 or self.step in (self.steps, self.total):
                te0 = time.time()
                acc = self.quick_eval(vae)
                t_start += time.time() - te0  # eval time does not count as training time
                self.log(f"unet eval step {self.step} (ema, euler 20, cfg 8): {json.dumps(acc)}")
                self.history.append({"step": self.step, "eval": acc})
            if self.step % ckpt_every == 0 or self.step == self.total:
                self.save()
        self.log(f"unet done: {self.total} steps in {self.elapsed:.0f}s")


def measure(work: Path, variants: list[str], bs_list: list[int], seconds: float = 20.0):
    """Step-time sizing: train each variant on random latents for `seconds`."""
    for v in variants:
        for bs in bs_list:
            tr = Trainer(work, v, steps=10_000, bs=bs)
            tr.lat = torch.randn(2048, 4, 8, 8)
            tr.scenes = Trainer._scenes(2048, 0)
            npar = sum(p.numel() for p in tr.unet.parameters())
            tr.train_step()
            t0, k = time.time(), 0
            while time.time() - t0 < seconds:
                tr.train_step(); k += 1
            dt = (time.time() - t0) / k
            tr.unet.eval()
            x = torch.randn(2, 4, 8, 8); ctx = torch.randn(2, 77, 128)
            with torch.no_grad():
                tr.unet(x, 10, encoder_hidden_states=ctx)
                t1 = time.time()
                for _ in range(20):
                    tr.unet(x, 10, encoder_hidden_states=ctx)
                inf = (time.time() - t1) / 20
            print(f"{v} params {npar/1e6:.2f}M bs {bs}: {dt:.3f} s/step, {bs/dt:.0f} samples/s; "
                  f"inference batch2 {inf*1000:.1f} ms", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--variant", default="s64x2")
    ap.add_argument("--steps", type=int, default=3300)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--comp-steps", type=int, default=600)
    ap.add_argument("--n-latents", type=int, default=24000)
    ap.add_argument("--measure", nargs="*", help="step-time sizing of these variants (20 s each)")
    ap.add_argument("--measure-bs", default="96")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("LOOM_THREADS", "1")))
    work = Path(a.work)
    if a.measure is not None:
        measure(work, a.measure or list(UNET_VARIANTS), [int(b) for b in a.measure_bs.split(",")], 10.0)
        return
    encode_dataset(work, a.n_latents)
    Trainer(work, a.variant, a.steps, a.bs, a.lr, comp_steps=a.comp_steps).run()


if __name__ == "__main__":
    main()
