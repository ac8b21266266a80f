"""One sampling run in k-diffusion's formulation: start state, sampler, final un-scaling.

``run(denoiser, ms, sampler, sigmas, latent, noise, seed, ...)``:
1. ``max_denoise``: sigmas[0] >= the model's sigma_max (within rel 1e-5) -> EPS scales the noise by
   sqrt(1 + sigma^2) (the VP prior) instead of sigma.
2. x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)  (no noise: x = latent).
3. x = sampler(denoiser, x, sigmas, ctx) with an optional noise mask (inpainting: outside the mask the
   latent is re-noised to the current sigma after every model call and pinned at the end).
4. ms.inverse_noise_scaling(final sigma, x).
"""
from __future__ import annotations

import math

import torch

from .common import SampleContext
from .registry import final_sigma, sampler_function


def is_max_denoise(ms, sigmas) -> bool:
    smax = float(ms.sigma_max)
    s0 = float(sigmas[0])
    return math.isclose(smax, s0, rel_tol=1e-05) or s0 > smax


class _Masked:
    """Wraps a denoiser for latent inpainting: x outside ``mask`` (1 = repaint) is replaced by the original
    latent noised to the current sigma before each model call, and the x0 estimate there by the latent."""

    def __init__(self, inner, ms, latent, noise, mask, mask_fn=None):
        self.inner, self.ms, self.latent, self.noise, self.mask = inner, ms, latent, noise, mask
        self.mask_fn = mask_fn  # (sigma, mask) -> this step's mask (DifferentialDiffusion), or None
        self.current = mask

    @property
    def uncond_denoised(self):
        u = self.inner.uncond_denoised
        return u * self.current + self.latent * (1 - self.current)

    def __call__(self, x, sigma):
        m = self.mask if self.mask_fn is None else self.mask_fn(sigma, self.mask)
        self.current = m
        ref = self.ms.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (x.ndim - 1)), self.noise, self.latent)
        x = x * m + ref * (1 - m)
        out = self.inner(x, sigma)
        return out * m + self.latent * (1 - m)


def run(denoiser, ms, sampler: str, sigmas: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor | None,
        seed: int | None, callback=None, mask: torch.Tensor | None = None, options: dict | None = None,
        mask_fn=None):
    """Sample ``latent`` (B,C,H,W, model space) along ``sigmas``; ``noise`` None = no noise added (the latent
    already carries it). Returns the final latent (model space)."""
    if len(sigmas) <= 1:
        return latent
    sigmas = sigmas.to(latent.device, torch.float32)
    if noise is None:
        x = latent
        noise = torch.zeros_like(latent)
    else:
        x = ms.noise_scaling(sigmas[0], noise.to(latent.device), latent, is_max_denoise(ms, sigmas))
    model = denoiser
    if mask is not None:
        model = _Masked(denoiser, ms, latent, noise.to(latent.device), mask.to(latent.device, latent.dtype), mask_fn)
    ctx = SampleContext(seed, ms, callback, total=len(sigmas) - 1)
    fn = sampler_function(sampler)
    x = fn(model, x, sigmas, ctx, **(options or {}))
    if mask is not None:
        x = x * mask + latent * (1 - mask)
    return ms.inverse_noise_scaling(final_sigma(sampler, sigmas), x)
