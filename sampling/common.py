"""Shared pieces of the samplers: the call context, k-diffusion helpers (Karras et al. 2022) and the
log-SNR helpers used by the SNR-based solvers.

A sampler is ``fn(model, x, sigmas, ctx, **options) -> x``:
- ``model(x, sigma)`` returns the guided x0 estimate (``denoised``) for ``x`` at ``sigma`` (a 1-D tensor, one
  value per batch row); after a call ``model.uncond_denoised`` holds the unguided (negative-prompt) estimate,
  which the CFG++ samplers use.
- ``x`` (B, C, H, W) is the start state already scaled by the model sampling's ``noise_scaling``.
- ``sigmas`` is the descending schedule, usually ending in 0.
- ``ctx`` carries the seed (for step noise), the model sampling and the progress callback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .noise import BrownianTreeNoiseSampler, default_noise_sampler


@dataclass
class SampleContext:
    """What a sampler needs besides the model: ``seed`` for step noise (None: unseeded), ``model_sampling``
    (a sampling.model_sampling.ModelSampling), ``callback(i, denoised, x, total)`` after each step."""
    seed: int | None
    model_sampling: Any
    callback: Callable | None = None
    total: int = 0
    extra: dict = field(default_factory=dict)

    def report(self, i, denoised, x):
        if self.callback is not None:
            self.callback(i, denoised, x, self.total)

    def noise_sampler(self, x):
        """Plain Gaussian step noise from a generator seeded with the seed (ComfyUI's default)."""
        return default_noise_sampler(x, self.seed)

    def brownian(self, x, sigmas, cpu=True):
        """Brownian-tree step noise over [smallest nonzero sigma, largest sigma], seeded with the seed."""
        return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=self.seed, cpu=cpu)

    @property
    def is_flow(self) -> bool:
        return bool(getattr(self.model_sampling, "is_flow", False))


def s_in(x):
    return x.new_ones([x.shape[0]])


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step to sigma_to into a deterministic step to sigma_down and fresh noise of std sigma_up
    (sigma_down^2 + sigma_up^2 = sigma_to^2)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def rf_ancestral_step(sigma, sigma_next, eta=1.0):
    """Rectified-flow ancestral step: go to sigma_down = sigma_next (1 + (sigma_next/sigma - 1) eta), then scale by
    alpha_next/alpha_down and add noise so the marginal at sigma_next is (1-s) x0 + s n again.
    Returns (sigma_down, alpha_next / alpha_down, renoise std)."""
    down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    a_next, a_down = 1 - sigma_next, 1 - down
    renoise = (sigma_next ** 2 - down ** 2 * a_next ** 2 / a_down ** 2) ** 0.5
    return down, a_next / a_down, renoise


def sigma_fn(t):
    return t.neg().exp()


def t_fn(sigma):
    return sigma.log().neg()


def half_log_snr(sigma, ms):
    """lambda = log(alpha/sigma): -log(sigma) in k-space, logit(1 - sigma) under rectified flow."""
    if getattr(ms, "is_flow", False):
        return sigma.logit().neg()
    return sigma.log().neg()


def sigma_of_half_log_snr(lam, ms):
    if getattr(ms, "is_flow", False):
        return lam.neg().sigmoid()
    return lam.neg().exp()


def offset_first_sigma(sigmas, ms, percent=1e-4):
    """Rectified flow starts at sigma 1 where log-SNR is -inf: the SNR-based solvers start just below it."""
    if len(sigmas) <= 1:
        return sigmas
    if getattr(ms, "is_flow", False) and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = ms.percent_to_sigma(percent)
    return sigmas


def ei_h_phi_1(h):
    """h * phi_1(h) = e^h - 1 (exponential-integrator weight)."""
    return torch.expm1(h)


def ei_h_phi_2(h):
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h
