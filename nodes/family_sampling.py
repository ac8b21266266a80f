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


def make_predict(den, ms, guider, batch: int, hw: tuple):
    """``(predict(x, sigma) -> (cond_x0, uncond_x0 | None), cfg)`` for a GUIDER on a flow model: the entries of each
    side evaluated by ``nodes.flow_conditioning.FlowConds`` (areas, masks, timestep ranges, one batched call where
    shapes allow); DualCFGGuider's three sides combined by ``sampling.guidance.dual_cfg``. ``cfg`` is the scale the
    GuidedDenoiser applies to the pair."""
    from sampling.guidance import dual_cfg

    from .flow_conditioning import FlowConds
    from .flow_control import FlowControl

    dual = guider.cond2 is not None
    cfg = (guider.cfg2 if guider.nested else 1.0) if dual else guider.cfg
    neg_used = guider.negative is not None and float(guider.cfg2 if dual else guider.cfg) != 1.0
    sides = {0: guider.negative} if neg_used else {}
    sides[1] = guider.positive
    if dual:
        sides[2] = guider.cond2
    controls = {id(o["control"]): FlowControl(o["control"], ms, den.family)
                for conds in sides.values() for _, o in conds if o.get("control") is not None}
    conds = FlowConds(den, ms, sides, batch, hw, controls)

    def predict(x, sigma):
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        out = conds(x, sigma)
        if dual:
            return dual_cfg(out[1], out[2], out.get(0), guider.cfg, guider.cfg2, guider.nested)
        return out[1], out.get(0)

    return predict, cfg


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
    from sampling.guidance import GuidedDenoiser, rescale_cfg
    from sampling.ksampler import run

    from .model_patches import mask_patch
    from .sampler_values import SamplerChoice

    model = guider.model
    check_latent(model, latent)
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
        predict, cfg = make_predict(den, ms, guider, lat.shape[0], z.shape[-2:])
        rescale = model.option("rescale_cfg")  # RescaleCFG in the velocity space (sampling.guidance.rescale_cfg)
        guided = GuidedDenoiser(predict, cfg, rescale_cfg(float(rescale), flow=True) if rescale is not None else None,
                                post_cfg=_post_cfg(model), model_sampling=ms)
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
                      callback=callback, mask=mask, options=dict(choice.options),
                      mask_fn=mask_patch(model, ms, sigmas))  # DifferentialDiffusion (ref option)
    samples = (out.float().cpu() / scale + shift).contiguous()
    x0 = (last["x0"].float().cpu() / scale + shift).contiguous()
    return samples, x0


def _post_cfg(model) -> tuple:
    """CFGNorm (ref option ``cfg_norm``) as a post-CFG hook. The SD-UNet patches (FreeU, PAG, SAG, hypernetworks)
    have nothing to patch in a transformer, so they are refused rather than silently ignored."""
    from sampling.guidance import cfg_norm

    for option, node in (("freeu", "FreeU/FreeU_V2"), ("pag_scale", "PerturbedAttentionGuidance"),
                         ("sag", "SelfAttentionGuidance"), ("hypernetworks", "HypernetworkLoader")):
        if model.option(option) is not None:  # UNet patches: nothing to hook in a transformer, so refused
            raise ValueError(f"{node} is not supported for the {model.meta['family']} family "
                             f"(it patches an SD UNet; remove the {node} node)")
    v = model.option("cfg_norm")
    return () if v is None else (cfg_norm(float(v)),)


def _preview(x0, family: str):
    """Latent->RGB preview of a flow family's model-space x0 (its published factor table, latent resolution)."""
    from .latent_rgb import latent_to_rgb

    return latent_to_rgb(x0, family)
