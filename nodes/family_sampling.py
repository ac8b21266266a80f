"""Sampling for the flow-matching families (SD3, FLUX.1, Z-Image, Qwen-Image) on the sampling core (``sampling/``).

The MODEL ref's ``get()`` is a ``modelstore.families.denoiser.FlowDenoiser`` (``velocity(x, sigma, cond)``); this
module turns it plus CONDITIONING into the core's ``predict(x, sigma) -> (cond_x0, uncond_x0)`` and runs
``sampling.ksampler.run`` with the model's sampling (``ModelSampling*`` nodes set the ``model_sampling`` option,
else the family default). LATENT values stay raw VAE latents; model space is (latent - shift) * scale, or
(latent - mean) * scale / std per channel for the Qwen-Image VAE (``latent_affine``).
"""
from __future__ import annotations

import torch

FLOW_FAMILIES = ("sd3", "flux", "zimage", "qwen_image")


def is_flow_model(model) -> bool:
    return getattr(model, "kind", None) == "MODEL" and model.meta.get("family") in FLOW_FAMILIES


def sampling_spec(model) -> tuple:
    """The model-sampling spec of a flow MODEL ref: the ``model_sampling`` option (ModelSampling* nodes) or the
    family's default, as ``sampling.model_sampling.from_spec`` reads it."""
    spec = model.option("model_sampling")
    if spec is not None:
        return tuple(spec)
    kind, shift, mult = model.meta["model_sampling"]
    return ("flux", shift) if kind == "flux" else ("flow", shift, mult)


def latent_affine(meta: dict) -> tuple:
    """(scale, shift) with model space = (latent - shift) * scale for a MODEL ref's meta: floats, or (1, C, 1, 1)
    tensors when the family normalises per channel (``latents_mean``/``latents_std``: scale = scaling_factor / std)."""
    scale, shift = float(meta.get("scaling_factor", 1.0)), float(meta.get("shift_factor", 0.0) or 0.0)
    mean, std = meta.get("latents_mean"), meta.get("latents_std")
    if not mean:
        return scale, shift
    return (scale / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))


def _entries(conds, family: str, batch: int, device, pooled_dim: int | None = None, controls: dict | None = None):
    """[(cond dict for FlowDenoiser.velocity, strength)] from CONDITIONING entries. ``controls`` maps an applied
    ControlNet chain to its ``nodes.flow_control.FlowControl`` (one per chain, so cond and uncond sharing a chain
    stay one batched call); None: the caller has no ControlNet hook."""
    out = []
    for emb, opts in conds:
        if opts.get("area") is not None or opts.get("mask") is not None:
            raise ValueError(f"{family}: area/mask conditioning is not supported for this family yet")
        # refused rather than silently ignored: the flow path has no hook for these yet
        if opts.get("control") is not None and (family != "flux" or controls is None):
            raise ValueError(f"{family}: ControlNet is not supported for this family yet (remove the ControlNet "
                             "apply node)")
        if float(opts.get("start_percent", 0.0)) > 0.0 or float(opts.get("end_percent", 1.0)) < 1.0:
            raise ValueError(f"{family}: conditioning timestep ranges (ConditioningSetTimestepRange) are not "
                             "supported for this family yet")
        c = {}
        if family == "zimage":
            if emb.shape[0] not in (1, batch):
                raise ValueError(f"conditioning batch {emb.shape[0]} does not match the latent batch {batch}")
            c["context"] = [emb[min(i, emb.shape[0] - 1)] for i in range(batch)]
        else:
            c["context"] = emb.expand(batch, -1, -1) if emb.shape[0] == 1 else emb
        pooled = opts.get("pooled_output")
        if family in ("sd3", "flux"):
            if pooled is None:
                raise ValueError(f"{family} conditioning has no pooled_output: encode the prompt with this family's "
                                 "text encoders (DualCLIPLoader/TripleCLIPLoader)")
            c["pooled"] = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
            want = pooled_dim or c["pooled"].shape[-1]
            if c["pooled"].shape[-1] < want:  # SD3 without CLIP-G: its pooled half is zeros
                c["pooled"] = torch.nn.functional.pad(c["pooled"], (0, want - c["pooled"].shape[-1]))
        if opts.get("guidance") is not None:
            c["guidance"] = torch.full((batch,), float(opts["guidance"]))
        if opts.get("control") is not None:
            c["control"] = controls[id(opts["control"])]
        out.append((c, float(opts.get("strength", 1.0))))
    if not out:
        raise ValueError("conditioning is empty")
    return out


def _batchable(a: dict, b: dict) -> bool:
    if a.get("control") is not b.get("control"):
        return False
    if isinstance(a["context"], list):
        return True
    return a["context"].shape[1:] == b["context"].shape[1:]


def _cat(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        if k == "control":
            out[k] = a[k]
            continue
        out[k] = a[k] + b[k] if isinstance(a[k], list) else torch.cat([a[k], b[k]], 0)
    return out


def make_predict(den, ms, positive, negative, cfg: float, batch: int):
    """``predict(x, sigma) -> (cond_x0, uncond_x0 | None)``; cond and uncond share one model call when their
    token shapes allow (uncond first, as the diffusers pipelines batch them)."""
    fam = den.family
    dev = den.device
    pdim = den.config.get("pooled_projection_dim")
    from .flow_control import FlowControl

    neg_used = negative is not None and float(cfg) != 1.0
    controls = {id(o["control"]): FlowControl(o["control"], ms, fam)
                for conds in (positive, negative if neg_used else []) for _, o in conds if o.get("control") is not None}
    pos = _entries(positive, fam, batch, dev, pdim, controls)
    neg = _entries(negative, fam, batch, dev, pdim, controls) if neg_used else None

    def x0(x, sigma, c):
        return ms.calculate_denoised(sigma, den.velocity(x, sigma, c), x)

    def avg(x, sigma, entries):
        acc, tot = None, 0.0
        for c, s in entries:
            d = x0(x, sigma, c) * s
            acc = d if acc is None else acc + d
            tot += s
        return acc / tot

    def predict(x, sigma):
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        if neg is not None and len(pos) == 1 and len(neg) == 1 and _batchable(neg[0][0], pos[0][0]):
            both = x0(torch.cat([x, x]), torch.cat([sigma, sigma]), _cat(neg[0][0], pos[0][0]))
            u, c = both.chunk(2)
            return c, u
        return avg(x, sigma, pos), (avg(x, sigma, neg) if neg is not None else None)

    return predict


def sample(ctx, model, positive, negative, latent: dict, *, seed: int | None, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, sigmas=None) -> torch.Tensor:
    """KSampler on a flow-family MODEL; returns raw VAE latents (B, C, H, W) float32 on the CPU."""
    from sampling.schedulers import ksampler_sigmas

    from .sampler_values import Guider, Noise

    check_latent(model, latent)
    if sigmas is None:
        sigmas = ksampler_sigmas(model_sampling(model), scheduler, sampler_name, steps, denoise)
    out, _ = sample_sigmas(ctx, Guider(model, positive, negative, float(cfg)), sampler_name, sigmas, latent,
                           Noise(seed) if seed is not None else None)
    return out


def model_sampling(model):
    from sampling.model_sampling import from_spec

    return from_spec(sampling_spec(model))


def check_latent(model, latent: dict) -> None:
    meta = model.meta
    ch = int(meta["latent_channels"])
    got = latent["samples"].shape[1]
    if got != ch:
        raise ValueError(f"{meta['family']} models take {ch}-channel latents, got {got} channels "
                         f"(use EmptySD3LatentImage for 16-channel families)")


def sample_sigmas(ctx, guider, sampler, sigmas, latent: dict, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sampler node's flow path: run ``sampler`` (name or SamplerChoice) along ``sigmas`` with a GUIDER
    (``nodes.sampler_values.Guider``) whose model is a flow-family MODEL. ``noise``: a sampler_values.Noise (its seed
    also seeds step noise; a seed of None or ``noise`` None adds none). Returns (samples, last x0), raw VAE
    latents (B, C, H, W) float32 on the CPU."""
    from sampling.guidance import GuidedDenoiser
    from sampling.ksampler import run

    from .sampler_values import SamplerChoice

    model = guider.model
    check_latent(model, latent)
    if guider.cond2 is not None:
        raise ValueError(f"DualCFGGuider is not supported for the {model.meta['family']} family yet "
                         "(use CFGGuider or BasicGuider)")
    choice = sampler if isinstance(sampler, SamplerChoice) else SamplerChoice(str(sampler))
    meta = model.meta
    scale, shift = latent_affine(meta)
    lat = latent["samples"].to(torch.float32)
    if sigmas is None or len(sigmas) <= 1:
        return lat, lat
    ms = model_sampling(model)
    seed = noise.seed if noise is not None else None
    # no noise = zero noise through the flow noise scaling, as the UNet path (and ComfyUI) does
    noise_t = noise.make(lat.shape, latent.get("batch_index")) if seed is not None else torch.zeros_like(lat)
    with model.store.using(model) as (den,):
        dev = den.device
        z = ((lat - shift) * scale).to(dev)
        predict = make_predict(den, ms, guider.positive, guider.negative, guider.cfg, lat.shape[0])
        guided = GuidedDenoiser(predict, guider.cfg, post_cfg=_post_cfg(model), model_sampling=ms)
        mask = latent.get("noise_mask")
        if mask is not None:
            mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=z.shape[-2:],
                                                   mode="bilinear")
        total = len(sigmas) - 1
        last = {"x0": z}

        def callback(i, denoised, x, _total):
            last["x0"] = denoised
            if ctx is not None:
                ctx.progress(min(i + 1, total), total, preview=lambda d=denoised: _preview(d, meta["family"]))

        with torch.no_grad():
            out = run(guided, ms, choice.name, sigmas.to(torch.float32), z, noise_t, seed if seed is not None else 0,
                      callback=callback, mask=mask, options=dict(choice.options))
    samples = (out.float().cpu() / scale + shift).contiguous()
    x0 = (last["x0"].float().cpu() / scale + shift).contiguous()
    return samples, x0


def _post_cfg(model) -> tuple:
    """CFGNorm (ref option ``cfg_norm``) as a post-CFG hook; RescaleCFG's VP-space rescale is not defined here for
    flow models yet, and the SD-UNet patches (FreeU, PAG, SAG, DifferentialDiffusion) have nothing to patch, so they
    are refused rather than silently ignored."""
    from sampling.guidance import cfg_norm

    for option, node in (("freeu", "FreeU/FreeU_V2"), ("pag_scale", "PerturbedAttentionGuidance"),
                         ("sag", "SelfAttentionGuidance"), ("hypernetworks", "HypernetworkLoader"),
                         ("differential_diffusion", "DifferentialDiffusion")):
        if model.option(option) is not None:  # UNet patches: nothing to hook in a transformer, so refused
            raise ValueError(f"{node} is not supported for the {model.meta['family']} family "
                             f"(it patches an SD UNet; remove the {node} node)")
    if model.option("rescale_cfg") is not None:
        raise ValueError(f"RescaleCFG is not supported for the {model.meta['family']} family yet "
                         "(remove the RescaleCFG node)")
    v = model.option("cfg_norm")
    return () if v is None else (cfg_norm(float(v)),)


def _preview(x0, family: str):
    """Latent->RGB preview of a flow family's model-space x0 (its published factor table, latent resolution)."""
    from .latent_rgb import latent_to_rgb

    return latent_to_rgb(x0, family)
