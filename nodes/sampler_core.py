"""The one denoise loop. KSampler, KSamplerAdvanced, SamplerCustom(Advanced) and the step-range node all call
``sample()``; nothing else in Loom steps a scheduler.

Semantics (ComfyUI's, realised on diffusers schedulers; see nodes/samplers.py for the name mapping):
- A fresh diffusers scheduler per run, ``set_timesteps`` for the *full* schedule (``Plan.steps``); the run covers
  steps ``[start, end)`` of it (denoise < 1 -> the last ``steps`` of ``int(steps/denoise)``).
- Noise: a CPU ``torch.Generator`` seeded with the seed draws one ``(1,C,H,W)`` tensor per batch item in order
  (with ``batch_index``, item i gets the i-th draw), so a seed gives the same image on any device and item i can be
  re-made alone. Stochastic schedulers continue drawing from that generator (as diffusers pipelines do).
- Start: at step 0 ``x = latent + noise * init_noise_sigma``; later steps ``scheduler.add_noise(latent, noise, t)``;
  with noise disabled the latent is taken as is (leftover noise from an earlier range).
- CFG ``uncond + cfg * (cond - uncond)`` in one batched UNet call; cfg == 1 skips the unconditional pass.
  Several conditioning entries (ConditioningCombine) and areas (ConditioningSetArea) are evaluated separately and
  averaged with ComfyUI's area weights (strength, 8-latent-pixel feathered edges).
- ``noise_mask``: after each step the re-noised original is blended back outside the mask (diffusers' inpaint
  order); the result keeps the original outside the mask.
- Ranges that stop early return the latent with leftover noise in ComfyUI's k-space convention (x0 + sigma*n),
  whatever the scheduler's own space; ``force_full_denoise`` returns the last x0 prediction instead.
- Progress every step, with a lazy latent->RGB preview of the first item's x0 (TAESD if its decoder is present).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from .cond_regions import active, mask_weight, resolve_area
from .samplers import Plan, is_k_space, make_scheduler

# latent -> RGB projections (rows: latent channels, columns: R, G, B) and biases, per model family
LATENT_RGB = {
    "sd1": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
             [-0.2120, -0.2616, -0.7177]], None),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Noise:
    """NOISE: a seed (None for DisableNoise); optionally interpolated towards the noise of ``seed2`` by
    ``factor`` (slerp or lerp, Loom's NoiseInterpolate). Step noise of stochastic samplers follows ``seed``."""
    seed: int | None
    seed2: int | None = None
    factor: float = 0.0
    method: str = "slerp"

    def make(self, shape, batch_index=None):
        noise, gen = make_noise(self.seed, shape, batch_index)
        if self.seed2 is not None and self.factor != 0.0:
            other, _ = make_noise(self.seed2, shape, batch_index)
            if self.method == "lerp":
                noise = noise * (1 - self.factor) + other * self.factor
            else:
                from .latents import slerp

                noise = slerp(noise.flatten(1), other.flatten(1), self.factor, dim=1).reshape(noise.shape)
        return noise, gen


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a sampler name from nodes.samplers.SAMPLER_NAMES."""
    name: str


@dataclass
class Sigmas:
    """SIGMAS: ``values`` (1-D float tensor, descending, like ComfyUI's) plus how to rebuild them on a diffusers
    scheduler: a ``Plan`` (named scheduler and full step count) and the step range ``[start, end)`` it covers.
    Custom lists (KarrasScheduler) carry ``plan.sigmas``."""
    values: torch.Tensor
    plan: Plan
    start: int
    end: int

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass
class Guider:
    """GUIDER: model + conditionings + cfg (BasicGuider: negative None, cfg 1)."""
    model: Any
    positive: list
    negative: list | None
    cfg: float


# ------------------------------------------------------------------------------------------------ noise
def make_noise(seed: int, shape, batch_index=None) -> tuple[torch.Tensor, torch.Generator]:
    """Per-item CPU noise: item k gets the ``batch_index[k]``-th (1,C,H,W) draw of a generator seeded with
    ``seed``; returns the noise and the generator (positioned after the last draw needed)."""
    import torch

    gen = torch.Generator("cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    b = shape[0]
    idx = list(batch_index) if batch_index is not None else list(range(b))
    if len(idx) != b:
        idx = (idx + list(range(idx[-1] + 1 if idx else 0, 10**9)))[:b]
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(idx) + 1):
        n = torch.randn((1, *shape[1:]), generator=gen, dtype=torch.float32)
        if i in idx:
            draws[i] = n
    return torch.cat([draws[i] for i in idx], 0), gen


# ------------------------------------------------------------------------------------------------ conds
def _area_weight(area, strength, h, w, device, dtype):
    """(1,1,h_area,w_area) weight: strength, with edges not on the latent border faded over 8 latent pixels."""
    import torch

    ah, aw, ay, ax = area
    m = torch.full((1, 1, ah, aw), float(strength), device=device, dtype=dtype)
    rr = 8
    for t in range(min(rr, ah)):
        f = min(1.0, (t + 1) / rr)
        if ay != 0:
            m[:, :, t:t + 1, :] *= f
        if ay + ah < h:
            m[:, :, ah - 1 - t:ah - t, :] *= f
    for t in range(min(rr, aw)):
        f = min(1.0, (t + 1) / rr)
        if ax != 0:
            m[:, :, :, t:t + 1] *= f
        if ax + aw < w:
            m[:, :, :, aw - 1 - t:aw - t] *= f
    return m


@dataclass
class _Job:
    which: int          # 0 = uncond, 1 = cond
    emb: torch.Tensor   # (B, L, D)
    area: tuple | None  # (h, w, y, x) latent units, clipped
    strength: float
    extra: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (B,1,ah,aw) weight (ConditioningSetMask), already cut to the area
    start: float = 0.0  # active range in ComfyUI's schedule percentages (ConditioningSetTimestepRange)
    end: float = 1.0
    control: Any = None  # nodes.controlnet.ControlApply chain, or None


def _lcm(a, b):
    return a * b // math.gcd(a, b)


class Denoiser:
    """Model + conditionings -> guided model output (same parametrisation as the UNet: eps or v)."""

    def __init__(self, unet, positive, negative, cfg: float, batch: int, latent_hw, device, scaling_factor,
                 arch: str = "sd1"):
        self.unet = unet
        self.cfg = float(cfg)
        self.dtype = next(unet.parameters()).dtype
        self.device = device
        self.arch = arch
        self.sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        self.in_ch = unet.config.in_channels
        h, w = latent_hw
        self.h, self.w = h, w
        groups = [1] if negative is None or self.cfg == 1.0 else [0, 1]
        self.jobs: list[_Job] = []
        for which in groups:
            conds = positive if which == 1 else negative
            for emb, opts in conds:
                self.jobs.append(self._job(which, emb, opts, batch, scaling_factor))
        if not any(j.which == 1 for j in self.jobs):
            raise ValueError("positive conditioning is empty")
        # batch jobs that share area and token length into one UNet call (uncond first, like the pipelines)
        self.groups: dict[tuple, list[_Job]] = {}
        for j in self.jobs:
            self.groups.setdefault((j.area, j.emb.shape[1], tuple(sorted(j.extra)), id(j.control)), []).append(j)
        self.simple = all(j.mask is None and j.control is None and (j.start, j.end) == (0.0, 1.0) for j in self.jobs)

    def _job(self, which, emb, opts, batch, sf):
        import torch

        emb = emb.to(self.device, self.dtype)
        if emb.shape[0] != batch:
            emb = emb[:1].expand(batch, -1, -1) if emb.shape[0] == 1 else emb.repeat(math.ceil(batch / emb.shape[0]), 1, 1)[:batch]
        area = resolve_area(opts, self.h, self.w)
        if area == (self.h, self.w, 0, 0):
            area = None if float(opts.get("strength", 1.0)) == 1.0 else area
        mask = mask_weight(opts, self.h, self.w, area, batch)
        extra = {}
        if self.in_ch == 9:
            extra["concat"] = self._concat(opts, batch, sf)
        if self.sdxl:
            pooled = opts.get("pooled_output")
            if pooled is None:
                raise ValueError("SDXL conditioning needs a pooled_output (encode it with an SDXL CLIP)")
            pooled = pooled.to(self.device, self.dtype)
            if pooled.shape[0] != batch:
                pooled = pooled[:1].expand(batch, -1)
            H, W = self.h * 8, self.w * 8
            tid = [opts.get("height", H), opts.get("width", W), opts.get("crop_h", 0), opts.get("crop_w", 0),
                   opts.get("target_height", H), opts.get("target_width", W)]
            extra["text_embeds"] = pooled
            extra["time_ids"] = torch.tensor([tid], device=self.device, dtype=self.dtype).expand(batch, -1)
        return _Job(which, emb, area, float(opts.get("strength", 1.0)), extra, mask,
                    float(opts.get("start_percent", 0.0)), float(opts.get("end_percent", 1.0)), opts.get("control"))

    def _concat(self, opts, batch, sf):
        import torch
        import torch.nn.functional as F

        lat = opts.get("concat_latent_image")
        mask = opts.get("concat_mask")
        if lat is None:
            lat = torch.zeros((batch, 4, self.h, self.w))
            mask = torch.ones((batch, 1, self.h, self.w)) if mask is None else mask
        lat = lat.to(torch.float32) * sf
        if lat.shape[-2:] != (self.h, self.w):
            lat = F.interpolate(lat, size=(self.h, self.w), mode="bilinear")
        if mask is None:
            mask = torch.ones((batch, 1, self.h, self.w))
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(torch.float32)
        if mask.shape[-2:] != (self.h, self.w):
            mask = F.interpolate(mask, size=(self.h, self.w), mode="bilinear").round()
        rep = lambda t: t if t.shape[0] == batch else t[:1].expand(batch, -1, -1, -1)
        return torch.cat([rep(mask), rep(lat)], 1).to(self.device, self.dtype)

    def _call(self, x_in, t, jobs: list[_Job]):
        import torch

        n = len(jobs)
        area = jobs[0].area
        if area is not None:
            ah, aw, ay, ax = area
            x_in = x_in[:, :, ay:ay + ah, ax:ax + aw]
        xs = x_in if n == 1 else torch.cat([x_in] * n)
        emb = jobs[0].emb if n == 1 else torch.cat([j.emb for j in jobs])
        if "concat" in jobs[0].extra:
            c = [j.extra["concat"] for j in jobs]
            if area is not None:
                c = [v[:, :, ay:ay + ah, ax:ax + aw] for v in c]
            xs = torch.cat([xs, c[0] if n == 1 else torch.cat(c)], 1)
        added = None
        if self.sdxl:
            added = {"text_embeds": torch.cat([j.extra["text_embeds"] for j in jobs]),
                     "time_ids": torch.cat([j.extra["time_ids"] for j in jobs])}
        residuals = {}
        if jobs[0].control is not None:  # ControlNet residuals for this call's batch (nodes/controlnet.py)
            residuals = jobs[0].control.residuals(xs, t, emb, added, area, (self.h, self.w), self.dtype)
        out = self.unet(xs.to(self.dtype), t, encoder_hidden_states=emb, timestep_cond=None,
                        cross_attention_kwargs=None, added_cond_kwargs=added, return_dict=False, **residuals)[0]
        return out.to(x_in.dtype).chunk(n) if n > 1 else (out.to(x_in.dtype),)

    def __call__(self, x_in: torch.Tensor, t) -> torch.Tensor:
        import torch

        if len(self.groups) == 1 and self.simple:  # the common case: one batched call, no averaging (bit-exact with pipelines)
            jobs = next(iter(self.groups.values()))
            if jobs[0].area is None and len(jobs) == len({j.which for j in jobs}):
                preds = dict(zip((j.which for j in jobs), self._call(x_in, t, jobs)))
                return self._cfg(preds.get(0), preds[1])
        acc = [None, None]
        cnt = [None, None]
        for jobs in self.groups.values():
            jobs = [j for j in jobs if self.simple or active(j.start, j.end, t)]
            if not jobs:
                continue
            for j, pred in zip(jobs, self._call(x_in, t, jobs)):
                if acc[j.which] is None:
                    acc[j.which] = torch.zeros_like(x_in)
                    cnt[j.which] = torch.zeros_like(x_in[:, :1])
                if j.area is None and j.mask is None:
                    acc[j.which] += pred * j.strength
                    cnt[j.which] += j.strength
                else:
                    ah, aw, ay, ax = j.area if j.area is not None else (self.h, self.w, 0, 0)
                    m = _area_weight((ah, aw, ay, ax), j.strength, self.h, self.w, x_in.device, x_in.dtype)
                    if j.mask is not None:
                        m = m * j.mask.to(x_in.device, x_in.dtype)
                    acc[j.which][:, :, ay:ay + ah, ax:ax + aw] += pred * m
                    cnt[j.which][:, :, ay:ay + ah, ax:ax + aw] += m
        if acc[1] is None:  # no positive entry active at this step: a zero prediction, as ComfyUI gives
            acc[1], cnt[1] = torch.zeros_like(x_in), torch.ones_like(x_in[:, :1])
        res = []
        for a, c in zip(acc, cnt):
            res.append(None if a is None else a / torch.where(c == 0, torch.ones_like(c), c))
        return self._cfg(res[0], res[1])

    def _cfg(self, u, c):
        if u is None:
            return c
        return u + self.cfg * (c - u)


# ------------------------------------------------------------------------------------------------ preview
def latent_preview(x0: torch.Tensor, arch: str = "sd1", env=None):
    """PIL image of the first item of ``x0`` (model space: VAE latent x scaling factor, like ComfyUI's x0):
    TAESD decoder from models/vae_approx if present (full resolution), else latent2rgb (latent resolution)."""
    import torch

    from PIL import Image

    dec = _taesd(env, arch)
    if dec is not None:
        with torch.no_grad():
            p = next(dec.parameters())
            img = dec(x0[:1].to(p.device, p.dtype))[0].float().cpu().clamp(0, 1).permute(1, 2, 0)
        return Image.fromarray((img * 255).round().to(torch.uint8).numpy())
    factors, bias = LATENT_RGB.get(arch, LATENT_RGB["sd1"])
    fac = torch.tensor(factors, dtype=torch.float32)
    lat = x0[0].float().cpu()
    if lat.shape[0] != fac.shape[0]:
        lat = lat[: fac.shape[0]]
    rgb = torch.einsum("chw,cr->hwr", lat, fac)
    if bias is not None:
        rgb = rgb + torch.tensor(bias)
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    return Image.fromarray((rgb * 255).to(torch.uint8).numpy())


def _taesd(env, arch):
    from .taesd import preview_decoder

    return preview_decoder(env, arch)


# ------------------------------------------------------------------------------------------------ loop
def _x0(sched, x, t, out, kspace: bool, pred_type: str):
    """The clean-latent prediction for model output ``out`` at ``x`` (scheduler space)."""
    import torch

    if kspace:
        s = sched.sigmas[sched.step_index].to(x.dtype) if getattr(sched, "step_index", None) is not None \
            else torch.tensor(float(sched.init_noise_sigma))
        s = s.to(x.device)
        if pred_type == "v_prediction":
            return out * (-s / (s ** 2 + 1) ** 0.5) + x / (s ** 2 + 1)
        return x - s * out
    a = sched.alphas_cumprod[int(round(float(t)))].to(x.device, x.dtype)
    if pred_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    return (x - (1 - a).sqrt() * out) / a.sqrt()


def _alpha(sched, t):
    return float(sched.alphas_cumprod[int(round(float(t)))])


@dataclass
class SampleResult:
    samples: torch.Tensor      # (B,C,h,w) CPU float32
    denoised: torch.Tensor     # last x0 prediction, CPU float32
    info: dict


def sample(ctx, model_ref, positive, negative, latent: dict, plan: Plan, start: int, end: int, *,
           cfg: float, noise: Noise | None, force_full_denoise: bool = True) -> SampleResult:
    """Run steps ``[start, end)`` of ``plan`` on ``latent`` (a LATENT dict). ``noise`` None (or a Noise with
    seed None) disables noise."""
    import torch
    import torch.nn.functional as F

    store = model_ref.store
    meta = model_ref.meta
    sched_cfg = dict(meta.get("scheduler_config") or ())
    pred_type = sched_cfg.get("prediction_type", meta.get("prediction_type", "epsilon"))
    sf = float(meta.get("scaling_factor", 0.18215))
    arch = meta.get("arch", "sd1")
    env = getattr(ctx, "env", None)
    lat0 = latent["samples"].to(torch.float32)
    B = lat0.shape[0]
    seed = noise.seed if noise is not None else None
    info = {"seed": seed, "batch_index": list(latent.get("batch_index") or range(B)), "sampler": plan.sampler_name,
            "scheduler": plan.scheduler_name, "steps": plan.steps, "start": start, "end": end, "cfg": cfg}

    if seed is not None:
        noise_t, gen = noise.make(lat0.shape, latent.get("batch_index"))
    else:
        noise_t, gen = torch.zeros_like(lat0), torch.Generator("cpu").manual_seed(0)

    with store.using(model_ref) as (unet,):
        device = next(unet.parameters()).device
        sched = make_scheduler(plan, sched_cfg, device=device)
        order = getattr(sched, "order", 1)
        all_ts = sched.timesteps
        n_full = plan.steps
        end = min(end, n_full)
        if start >= end:
            return SampleResult(latent["samples"], latent["samples"], info)
        i0 = start * order
        i1 = len(all_ts) if end >= n_full else end * order
        ts = all_ts[i0:i1]
        if i0 > 0 and hasattr(sched, "set_begin_index"):
            sched.set_begin_index(i0)
        kspace = is_k_space(sched)
        z0 = (lat0 * sf).to(device)
        nz = noise_t.to(device)
        with torch.no_grad():
            if seed is None:  # no noise: the latent is taken as is (k-space; moved into VP space if needed)
                x = z0 if kspace else z0 * math.sqrt(_alpha(sched, ts[0]))
            elif start == 0 and (kspace or not bool(z0.any())):
                x = z0 + nz * sched.init_noise_sigma  # txt2img exactly as the pipelines; ComfyUI's full denoise
            else:
                x = sched.add_noise(z0, nz, ts[:1])  # img2img; VP schedulers at full denoise of a non-empty latent
            mask = latent.get("noise_mask")
            m = None
            if mask is not None:
                m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(torch.float32)
                m = F.interpolate(m, size=x.shape[-2:], mode="bilinear")
                m = m if m.shape[0] == B else m[:1].expand(B, -1, -1, -1) if m.shape[0] == 1 \
                    else m.repeat(math.ceil(B / m.shape[0]), 1, 1, 1)[:B]
                m = m.to(device)
            den = Denoiser(unet, positive, negative, cfg, B, x.shape[-2:], device, sf, arch)
            step_params = set(inspect.signature(sched.step).parameters)
            extra = {}
            if "generator" in step_params:
                extra["generator"] = gen
            if "eta" in step_params:
                extra["eta"] = 0.0
            total = len(ts)
            x0 = z0
            for k, t in enumerate(ts):
                xin = sched.scale_model_input(x, t)
                out = den(xin, t)
                x0 = _x0(sched, x, t, out, kspace, pred_type)
                x = sched.step(out, t, x, **extra, return_dict=False)[0]
                if m is not None:
                    gi = i0 + k
                    if gi + 1 < len(all_ts):
                        ref = sched.add_noise(z0, nz, all_ts[gi + 1:gi + 2])
                    else:
                        ref = z0
                    x = (1 - m) * ref + m * x
                if ctx is not None:
                    ctx.progress(k + 1, total, preview=lambda x0=x0: latent_preview(x0, arch, env))
            if end < n_full:
                if force_full_denoise:
                    x = x0 if m is None else (1 - m) * z0 + m * x0
                elif not kspace:  # leave in ComfyUI's k-space convention: x0 + sigma*noise
                    x = x / math.sqrt(_alpha(sched, all_ts[i1]))
    samples = (x / sf).to("cpu", torch.float32).contiguous()
    return SampleResult(samples, (x0 / sf).to("cpu", torch.float32).contiguous(), info)


def out_latent(latent: dict, samples: torch.Tensor) -> dict:
    out = {k: v for k, v in latent.items()}
    out["samples"] = samples
    return out
