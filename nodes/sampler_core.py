"""The one sampling entry point of the node catalogue. KSampler, KSamplerAdvanced, SamplerCustom(Advanced) and the
step-range node all call ``sample_sigmas()`` (or ``sample()`` for a named schedule and a step range); the
numerical work is Loom's ``sampling`` package (k-diffusion's sigma-space formulation, ComfyUI's numbers).

Semantics (ComfyUI 0.3.75's, pinned by tests/sampling):
- The MODEL's model sampling (checkpoint default: discrete EPS or V; ModelSampling* nodes override it) maps
  sigma <-> timestep (discrete models get the nearest integer timestep) and scales input/noise/output.
- Latents: LATENT values are unscaled like ComfyUI's; the sampler works on (latent - shift) * scaling_factor.
- Noise: ``torch.manual_seed(seed)`` then one CPU randn of the latent's shape (``batch_index``: one draw per
  index up to the largest); step noise of ancestral/SDE samplers comes from a generator seeded with the same
  seed (Brownian tree for the dpmpp_*sde samplers).
- Start: noise * sqrt(1 + sigma_0^2) + latent at full denoise (EPS/V), noise * sigma_0 + latent otherwise;
  rectified flow sigma_0 * noise + (1 - sigma_0) * latent. No noise: the latent as is.
- CFG in x0 space ``uncond + cfg * (cond - uncond)`` in one batched network call; cfg == 1 skips the
  unconditional pass (except for the CFG++ samplers, which need it). Several conditioning entries and areas are
  evaluated separately and averaged with ComfyUI's area weights (strength, 8-latent-pixel feathered edges); as
  in ComfyUI a side's x0 is 0 where none of its active entries covers a pixel, and at steps where none is active.
- ``noise_mask``: outside the mask the latent is re-noised to the current sigma before each model call and its x0
  estimate pinned to the original; the result keeps the original outside the mask.
- Progress every step with a lazy latent->RGB preview of the first item's x0 (TAESD if its decoder is
  present); cancellation is checked at each step.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .cond_regions import RegionSum, entry_weight, mask_weight, resolve_area
from .sampler_values import Guider, Noise, SamplerChoice, make_noise  # noqa: F401  (re-exported)
from .samplers import Plan

from .latent_rgb import LATENT_RGB, latent_to_rgb  # noqa: F401  (LATENT_RGB: re-exported for callers)


# ------------------------------------------------------------------------------------------------ conds
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


class Denoiser:
    """Model + conditionings -> guided model output (same parametrisation as the UNet: eps or v)."""

    def __init__(self, unet, positive, negative, cfg: float, batch: int, latent_hw, device, scaling_factor,
                 arch: str = "sd1", need_uncond: bool = False, model_sampling=None):
        self.unet = unet
        self.cfg = float(cfg)
        self.dtype = next(unet.parameters()).dtype
        self.device = device
        self.arch = arch
        self.sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        self.in_ch = unet.config.in_channels
        h, w = latent_hw
        self.h, self.w = h, w
        self._weights: dict = {}  # feathered area weights, built once (cond_regions.entry_weight's memo)
        self.ms = model_sampling  # ComfyUI's timestep ranges are percents of the model's sigma schedule
        self.uncovered: dict = {}  # side -> pixels no active entry covered at the last outputs() (see denoised)
        groups = [1] if negative is None or (self.cfg == 1.0 and not need_uncond) else [0, 1]
        self.jobs: list[_Job] = []
        for which in groups:
            conds = positive if which == 1 else negative
            for emb, opts in conds:
                self.jobs.append(self._job(which, emb, opts, batch, scaling_factor))
        if not any(j.which == 1 for j in self.jobs):
            raise ValueError("positive conditioning is empty")
        self._group()

    def _group(self):
        # batch jobs that share area and token length into one UNet call (uncond first, like the pipelines)
        self.groups: dict[tuple, list[_Job]] = {}
        for j in self.jobs:
            self.groups.setdefault((j.area, j.emb.shape[1], tuple(sorted(j.extra)), id(j.control)), []).append(j)
        self.simple = all(j.mask is None and j.control is None and (j.start, j.end) == (0.0, 1.0) for j in self.jobs)

    @property
    def has_uncond(self) -> bool:
        return any(j.which == 0 for j in self.jobs)

    def only(self, which: int) -> "Denoiser":
        """A copy whose positive (cond output) is this one's ``which`` side alone (uncond 0 / cond 1), no CFG."""
        import copy

        d = copy.copy(self)
        d.cfg = 1.0
        d.jobs = [dataclasses.replace(j, which=1) for j in self.jobs if j.which == which]
        d._group()
        return d

    def call_rows(self, which: int, t, sigma) -> tuple[int, int] | None:
        """Where ``outputs(x_in, t, sigma)`` evaluates the first full-area job of side ``which``: (index of the
        UNet call, index of its batch-of-B block in that call), or None (every such job has an area)."""
        call = 0
        for jobs in self.groups.values():
            jobs = [j for j in jobs if self.simple or self._active(j, t, sigma)]
            if not jobs:
                continue
            for row, j in enumerate(jobs):
                if j.which == which and j.area is None:
                    return call, row
            call += 1
        return None

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
            cfg = self.unet.config
            if (cfg.projection_class_embeddings_input_dim - pooled.shape[-1]) // cfg.addition_time_embed_dim == 5:
                tid = tid[:4] + [opts.get("aesthetic_score", 6.0)]  # SDXL refiner: size, crop, aesthetic score
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
        if torch.is_tensor(t) and t.ndim == 1 and n > 1:
            t = torch.cat([t] * n)
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

    def _active(self, j, t, sigma):
        if j.start <= 0.0 and j.end >= 1.0:
            return True
        if self.ms is None or sigma is None:
            from .cond_regions import active

            return active(j.start, j.end, t)
        s = float(sigma.reshape(-1)[0])
        return self.ms.percent_to_sigma(j.end) <= s <= self.ms.percent_to_sigma(j.start)

    def outputs(self, x_in: torch.Tensor, t, sigma=None) -> tuple:
        """(uncond output or None, cond output) of the network for input ``x_in`` at timestep ``t`` (sigma
        ``sigma``, for timestep ranges), each averaged over entries/areas/masks with ComfyUI's weights
        (parameterisation of the network: eps, v or flow velocity)."""
        import torch

        if len(self.groups) == 1 and self.simple:  # the common case: one batched call, no averaging
            jobs = next(iter(self.groups.values()))
            if jobs[0].area is None and len(jobs) == len({j.which for j in jobs}):
                preds = dict(zip((j.which for j in jobs), self._call(x_in, t, jobs)))
                self.uncovered = {}
                return preds.get(0), preds[1]
        acc = RegionSum(x_in)  # ComfyUI's weighted average (nodes/cond_regions.py), shared with the flow families
        for jobs in self.groups.values():
            jobs = [j for j in jobs if self.simple or self._active(j, t, sigma)]
            if not jobs:
                continue
            for j, pred in zip(jobs, self._call(x_in, t, jobs)):
                acc.add(j.which, pred, j.area,
                        entry_weight(j.area, j.strength, j.mask, self.h, self.w, x_in.device, x_in.dtype,
                                     self._weights))
        self.uncovered = {w: acc.uncovered(w) for w in (0, 1)}
        cond = acc.get(1)
        if cond is None:  # no positive entry active at this step (its x0 is zeroed by ``denoised``)
            cond = torch.zeros_like(x_in)
        return acc.get(0), cond

    def denoised(self, which: int, out, x, sigma, ms):
        """Side ``which``'s x0 from its network output ``out`` of the last ``outputs`` call, as ComfyUI averages in
        x0 space: 0 at pixels no active entry of the side covered, all 0 for a side with entries none of which is
        active at this step (``out`` None for the negative); None for a negative that is not evaluated."""
        import torch

        if out is None:
            return torch.zeros_like(x) if which == 0 and self.has_uncond else None
        d = ms.calculate_denoised(sigma, out, x)
        m = self.uncovered.get(which)
        if m is None:
            return d
        return torch.zeros_like(d) if m is True else d.masked_fill(m, 0.0)

    def __call__(self, x_in: torch.Tensor, t) -> torch.Tensor:
        u, c = self.outputs(x_in, t)
        return c if u is None else u + self.cfg * (c - u)


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
    return latent_to_rgb(x0, arch)


def _taesd(env, arch):
    from .taesd import preview_decoder

    return preview_decoder(env, arch)


# ------------------------------------------------------------------------------------------------ model sampling
def model_sampling_of(model_ref):
    """The MODEL's ModelSampling: a ModelSampling* node's spec (ref option ``model_sampling``), else the
    checkpoint's own (meta ``model_sampling`` spec, else discrete with its prediction type). Flow families
    (SD3/FLUX.1/Z-Image) get their family default from nodes.family_sampling."""
    from .family_sampling import is_flow_model, model_sampling

    if is_flow_model(model_ref):
        return model_sampling(model_ref)
    spec = model_ref.option("model_sampling")
    meta = model_ref.meta
    if spec is None:
        spec = meta.get("model_sampling")
    pred = dict(meta.get("scheduler_config") or ()).get("prediction_type", meta.get("prediction_type", "epsilon"))
    from sampling.model_sampling import from_spec

    return from_spec(spec, pred)


def _hooks(model_ref, ms):
    from sampling.guidance import cfg_norm, rescale_cfg

    cfg_fn = None
    rescale = model_ref.option("rescale_cfg")
    if rescale is not None:
        cfg_fn = rescale_cfg(float(rescale), flow=ms.is_flow)
    post = tuple(cfg_norm(float(v)) for v in (model_ref.option("cfg_norm"),) if v is not None)
    return cfg_fn, post


@dataclass
class SampleResult:
    samples: torch.Tensor      # (B,C,h,w) CPU float32, LATENT space (unscaled)
    denoised: torch.Tensor     # last x0 estimate, CPU float32, LATENT space
    info: dict


def schedule_sigmas(model_ref, plan: Plan, denoise: float = 1.0) -> torch.Tensor:
    """KSampler's sigmas for a plan (named scheduler, ComfyUI's denoise and discard-penultimate rules), or the
    plan's custom list."""
    import torch

    from sampling.schedulers import ksampler_sigmas

    if plan.sigmas is not None:
        return torch.tensor(plan.sigmas, dtype=torch.float32)
    return ksampler_sigmas(model_sampling_of(model_ref), plan.scheduler_name, plan.sampler_name, plan.steps, denoise)


def sample(ctx, model_ref, positive, negative, latent: dict, plan: Plan, start: int, end: int, *,
           cfg: float, noise: Noise | None, force_full_denoise: bool = True, denoise: float = 1.0) -> SampleResult:
    """KSamplerAdvanced's semantics: steps ``[start, end)`` of ``plan``'s schedule; a range that ends early ends at
    sigma 0 when ``force_full_denoise`` (else it keeps its leftover noise). ``noise`` None (or seed None): none
    added. ``denoise`` < 1: KSampler's rule (the last plan.steps of int(steps/denoise))."""
    sigmas = schedule_sigmas(model_ref, plan, denoise)
    if end < len(sigmas) - 1:
        sigmas = sigmas[:end + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start > 0:
        if start >= len(sigmas) - 1:
            return SampleResult(latent["samples"], latent["samples"], {"start": start, "end": end})
        sigmas = sigmas[start:]
    return sample_sigmas(ctx, Guider(model_ref, positive, negative, cfg), plan.sampler_name, sigmas, latent,
                         noise=noise)


def sample_sigmas(ctx, guider: Guider, sampler, sigmas: torch.Tensor, latent: dict, *,
                  noise: Noise | None) -> SampleResult:
    """Run ``sampler`` (a name or SamplerChoice) along ``sigmas`` with ``guider`` on a LATENT dict."""
    import torch
    import torch.nn.functional as F

    from sampling.guidance import GuidedDenoiser, dual_cfg
    from sampling.ksampler import run as run_sampler

    from .family_sampling import is_flow_model

    if is_flow_model(guider.model):  # SD3 / FLUX.1 / Z-Image: transformer velocity models
        from .family_sampling import sample_sigmas as flow_sample_sigmas

        samples, x0 = flow_sample_sigmas(ctx, guider, sampler, sigmas, latent, noise)
        return SampleResult(samples, x0, {"seed": noise.seed if noise is not None else None,
                                          "sigmas": [float(v) for v in sigmas]})
    choice = sampler if isinstance(sampler, SamplerChoice) else SamplerChoice(str(sampler))
    model_ref = guider.model
    meta = model_ref.meta
    sf = float(meta.get("scaling_factor", 0.18215))
    shift = float(meta.get("shift_factor", 0.0) or 0.0)
    arch = meta.get("arch", "sd1")
    env = getattr(ctx, "env", None)
    lat0 = latent["samples"].to(torch.float32)
    B = lat0.shape[0]
    seed = noise.seed if noise is not None else None
    info = {"seed": seed, "batch_index": list(latent.get("batch_index") or range(B)), "sampler": choice.name,
            "sigmas": [float(v) for v in sigmas], "cfg": guider.cfg}
    if len(sigmas) <= 1:
        return SampleResult(latent["samples"], latent["samples"], info)
    ms = model_sampling_of(model_ref)
    # no noise = zero noise through the model sampling's noise scaling (as ComfyUI; for rectified flow this
    # rescales a latent that carries leftover noise back into flow space)
    noise_t = noise.make(lat0.shape, latent.get("batch_index")) if seed is not None else torch.zeros_like(lat0)
    need_uncond = "cfg_pp" in choice.name
    cfg_fn, post = _hooks(model_ref, ms)
    from .model_patches import mask_patch, post_cfg_patches, sag_patch, unet_patches

    with model_ref.store.using(model_ref) as (net,), unet_patches(net, model_ref):  # FreeU etc. (ref options)
        device = next(net.parameters()).device
        z0 = ((lat0 - shift) * sf).to(device)
        mask = latent.get("noise_mask")
        m = None
        if mask is not None:
            m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(torch.float32)
            m = F.interpolate(m, size=z0.shape[-2:], mode="bilinear")
            m = m if m.shape[0] == B else m[:1].expand(B, -1, -1, -1) if m.shape[0] == 1 \
                else m.repeat(math.ceil(B / m.shape[0]), 1, 1, 1)[:B]
            m = m.to(device)
        net_den = Denoiser(net, guider.positive, guider.negative, guider.cfg, B, z0.shape[-2:], device, sf, arch,
                           need_uncond=need_uncond, model_sampling=ms)
        den2 = None
        if guider.cond2 is not None:  # DualCFGGuider: a second positive, guided against the negative
            den2 = Denoiser(net, guider.cond2, guider.negative, guider.cfg2, B, z0.shape[-2:], device, sf, arch,
                            model_sampling=ms)

        def predict(x, sigma):
            x_in = ms.calculate_input(sigma, x)
            t = ms.timestep(sigma)
            u, c = net_den.outputs(x_in, t, sigma)
            cond, unc = net_den.denoised(1, c, x, sigma, ms), net_den.denoised(0, u, x, sigma, ms)
            if den2 is not None:
                u2, c2 = den2.outputs(x_in, t, sigma)
                c2, u2 = den2.denoised(1, c2, x, sigma, ms), den2.denoised(0, u2, x, sigma, ms)
                return dual_cfg(cond, c2, u2, guider.cfg, guider.cfg2, guider.nested)
            return cond, unc

        cfg_used = guider.cfg if den2 is None else (guider.cfg2 if guider.nested else 1.0)
        post = tuple(post) + post_cfg_patches(model_ref, net, net_den, ms)  # PAG (ref option)
        predict, sag = sag_patch(model_ref, net, net_den, ms, predict)  # SelfAttentionGuidance (ref option)
        post = post + sag
        gd = GuidedDenoiser(predict, cfg_used, cfg_fn, post, ms)
        last = {"x0": z0}
        total = len(sigmas) - 1

        def callback(i, denoised, x, n):
            last["x0"] = denoised
            if ctx is not None:
                ctx.progress(min(i + 1, total), total,
                             preview=lambda d=denoised: latent_preview(d, arch, env))

        with torch.no_grad():
            x = run_sampler(gd, ms, choice.name, sigmas.to(device), z0, noise_t.to(device),
                            seed if seed is not None else 0, callback=callback, mask=m, options=dict(choice.options),
                            mask_fn=mask_patch(model_ref, ms, sigmas))
    out = (x / sf + shift).to("cpu", torch.float32).contiguous()
    x0 = (last["x0"] / sf + shift).to("cpu", torch.float32).contiguous()
    return SampleResult(out, x0, info)


def out_latent(latent: dict, samples: torch.Tensor) -> dict:
    out = {k: v for k, v in latent.items()}
    out["samples"] = samples
    return out
