"""An example textual-inversion embedding for the bundled model: ``loom-blue-square`` (2 vectors) draws a large
blue square.

    python -m training --only embedding

Textual inversion (Gal et al. 2022): two new token vectors, everything else frozen (UNet, CLIP text encoder, VAE).
Data: shapes-world images of one large blue square at a random position on a random non-blue background, encoded by
the bundled VAE; captions name only position and background, with the two vectors where the object's words would
be ("a <v1> <v2> on the left on a red background"). SD1's DDPM epsilon loss. The vectors start as the token vector
of the neutral word "shape" (so step 0 asks for 'a shape shape ...'), and are learned in the CLIP's token-embedding
space, then saved as ``{"emb_params": (2, width)}`` fp16 safetensors, the layout ``embedding:loom-blue-square`` reads.

Measured (see the card): how often the scorer (training/scorer.py) finds a blue square, and a large blue square, in
pictures of held-out position/background prompts with the learned vectors, the initial vectors, and the words
"a large blue square" in their place.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import scorer, world
from .sample import SCALING, make_scheduler, tokenize

N_VECTORS = 2
MARK = "!"  # a plain one-token word marking the vectors' slots (never the pad/EOS token)
INIT_WORD = "shape"


def scenes_for(n: int, seed: int) -> list[world.Scene]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pos = rng.choice(world.POSITIONS)
        s = world.ShapeSpec("square", "blue", "large", pos)
        ax, ay = world.ANCHORS[pos]
        s.cx, s.cy = ax + rng.uniform(-world.JITTER, world.JITTER), ay + rng.uniform(-world.JITTER, world.JITTER)
        out.append(world.Scene(rng.choice([c for c in world.COLORS if c != "blue"]), [s]))
    return out


def prompt(scene: world.Scene, obj: str) -> str:
    """'a <obj> on the left on a red background'."""
    s = scene.shapes[0]
    return f"a {obj} {world.POS_PHRASES[s.pos][0]} on {world._article(scene.bg)} {scene.bg} background"


class Inject:
    """Forward hook on the text encoder's token embedding: rows of ``MARK`` ids become ``vectors`` in turn."""

    def __init__(self, te, vectors: torch.Tensor):
        self.vectors, self.ids = vectors, None
        self.mark_id = int(tokenize([MARK])[0, 1])
        self.hook = te.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, mod, inp, out):
        ids = inp[0]
        pos = (ids == self.mark_id).nonzero()
        if not len(pos):
            return out
        out = out.clone()
        k = torch.arange(len(pos)) % self.vectors.shape[0]  # slots come in groups of N_VECTORS per prompt
        out[pos[:, 0], pos[:, 1]] = self.vectors[k].to(out.dtype)
        return out


def encode(te, texts: list[str]) -> torch.Tensor:
    return te(tokenize(texts), attention_mask=None)[0]


def generate(unet, te, vae, prompts, seeds, steps=10, cfg=6.0) -> np.ndarray:
    """N x 64 x 64 x 3 uint8 (euler, the same loop as training/sample.generate, with the hook active)."""
    with torch.no_grad():
        cond, unc = encode(te, prompts), encode(te, [""]).expand(len(prompts), -1, -1)
        ctx = torch.cat([unc, cond])
        lat = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
        sch = make_scheduler("euler")
        sch.set_timesteps(steps)
        lat = lat * sch.init_noise_sigma
        for t in sch.timesteps:
            eps = unet(sch.scale_model_input(torch.cat([lat] * 2), t), t, encoder_hidden_states=ctx).sample
            eu, ec = eps.chunk(2)
            lat = sch.step(eu + cfg * (ec - eu), t, lat).prev_sample
        img = vae.decode(lat / SCALING).sample
    return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def rates(imgs: np.ndarray) -> dict[str, float]:
    found = [scorer.analyse(im, 1)["shapes"] for im in imgs]
    bs = [bool(f) and f[0]["color"] == "blue" and f[0]["shape"] == "square" for f in found]
    lbs = [b and f[0]["size"] == "large" for b, f in zip(bs, found)]
    return {"blue_square": float(np.mean(bs)), "large_blue_square": float(np.mean(lbs))}


def train(ckpt: Path, out: Path, steps: int = 600, batch: int = 8, lr: float = 5e-3, n_images: int = 256,
          seed: int = 0, n_eval: int = 48, log=print) -> dict:
    from safetensors.torch import save_file
    import diffusers

    from .export import load_checkpoint

    torch.manual_seed(seed)
    unet, vae, te = load_checkpoint(ckpt, dtype=torch.float32)
    for m in (unet, vae, te):
        m.requires_grad_(False).eval()
    scenes = scenes_for(n_images, seed + 99)
    x = torch.from_numpy(np.stack([world.render(s) for s in scenes])).float().div(127.5).sub(1).movedim(-1, 1)
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mean * SCALING
    init_id = int(tokenize([INIT_WORD])[0, 1])
    table = te.get_input_embeddings().weight
    init = table[init_id].detach().clone().repeat(N_VECTORS, 1)
    vec = torch.nn.Parameter(init.clone())
    inj = Inject(te, vec)
    slot = " ".join([MARK] * N_VECTORS)
    sch = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear")
    opt = torch.optim.AdamW([vec], lr=lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 7919 + step)
        idx = torch.randint(0, n_images, (batch,), generator=g)
        ctx = encode(te, [prompt(scenes[i], slot) for i in idx.tolist()])
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(lat[idx].shape, generator=g)
        loss = F.mse_loss(unet(sch.add_noise(lat[idx], noise, t), t, encoder_hidden_states=ctx).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            log(f"embedding step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    train_s = time.time() - t0
    learned = vec.detach().clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": learned.half().contiguous()}, str(out),
              metadata={"loom.model": out.stem, "loom.base": ckpt.name, "loom.steps": str(steps)})
    # measure on held-out positions/backgrounds and seeds
    ev = scenes_for(n_eval, seed + 4242)
    seeds = list(range(1000, 1000 + n_eval))
    res = {}
    for label, v, obj in (("learned", learned, slot), ("initial", init, slot),
                          ("words", learned, "large blue square")):
        inj.vectors = v
        res[label] = rates(generate(unet, te, vae, [prompt(s, obj) for s in ev], seeds))
    inj.hook.remove()
    log(f"embedding: {res} (train {train_s:.0f}s)")
    return {"rates": res, "steps": steps, "batch": batch, "lr": lr, "train_seconds": round(train_s),
            "n_eval": n_eval, "bytes": out.stat().st_size}
