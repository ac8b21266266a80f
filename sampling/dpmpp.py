"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling"): data-prediction
exponential integrators in lambda = log(alpha/sigma).

dpmpp_2m (multistep, order 2), dpmpp_2s_ancestral (single-step order 2 + ancestral noise), dpmpp_sde
(SDE single-step order 2 with Brownian noise), dpmpp_2m_sde (midpoint or heun correction), dpmpp_3m_sde, and
the CFG++ variants. The SDE solvers use lambda of the model sampling, so they are also exact for rectified flow
(alpha = 1 - sigma); in k-space alpha = 1.
"""
from __future__ import annotations

import torch

from .common import (ancestral_step, half_log_snr, offset_first_sigma, rf_ancestral_step, s_in, sigma_fn,
                     sigma_of_half_log_snr, t_fn, to_d)


def dpmpp_2m(model, x, sigmas, ctx):
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            dd = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * dd
        old = denoised
    return x


def dpmpp_2m_cfg_pp(model, x, sigmas, ctx):
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        uncond = model.uncond_denoised
        ctx.report(i, denoised, x)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def dpmpp_2s_ancestral(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, cfg_pp=False):
    if ctx.is_flow and not cfg_pp:
        return _dpmpp_2s_ancestral_rf(model, x, sigmas, ctx, eta, s_noise, noise_sampler)
    ns = noise_sampler or ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        uncond = model.uncond_denoised
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        if down == 0:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(down)
            h = t_next - t
            s = t + h / 2
            base = x + (denoised - uncond) if cfg_pp else x
            x2 = (sigma_fn(s) / sigma_fn(t)) * base - (-h * 0.5).expm1() * denoised
            denoised2 = model(x2, sigma_fn(s) * s_in(x))
            if cfg_pp:  # ComfyUI's numbers: the guided x0 of the first call minus the unguided one of the second
                base = x + (denoised - model.uncond_denoised)
            x = (sigma_fn(t_next) / sigma_fn(t)) * base - (-h).expm1() * denoised2
        if sigmas[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None):
    return dpmpp_2s_ancestral(model, x, sigmas, ctx, eta, s_noise, noise_sampler, cfg_pp=True)


def _dpmpp_2s_ancestral_rf(model, x, sigmas, ctx, eta, s_noise, noise_sampler):
    ns = noise_sampler or ctx.noise_sampler(x)
    lam = lambda s: ((1 - s) / s).log()
    sig = lambda t: (t.exp() + 1) ** -1
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        down, scale, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
            continue
        if sigmas[i] == 1.0:
            sigma_s = torch.tensor(0.9999)
        else:
            t_i, t_down = lam(sigmas[i]), lam(down)
            sigma_s = sig(t_i + (t_down - t_i) / 2)
        rs = sigma_s / sigmas[i]
        u = rs * x + (1 - rs) * denoised
        d_i = model(u, sigma_s * s_in(x))
        rd = down / sigmas[i]
        x = rd * x + (1 - rd) * d_i
        if eta > 0:
            x = scale * x + ns(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def dpmpp_sde(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2, cpu_noise=True):
    """DPM-Solver++(2S) as an SDE with Brownian-tree noise; the intermediate point at fraction r of the step."""
    if len(sigmas) <= 1:
        return x
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.brownian(x, sigmas, cpu=cpu_noise)
    sigmas = offset_first_sigma(sigmas, ms)
    lam = lambda s: half_log_snr(s, ms)
    sig = lambda l: sigma_of_half_log_snr(l, ms)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = lam(sigmas[i]), lam(sigmas[i + 1])
        h = lam_t - lam_s
        lam_mid = lam_s + h * r
        sigma_mid = sig(lam_mid)
        alpha_mid = sigma_mid * lam_mid.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # step 1: to the intermediate point
        x2 = (sigma_mid / sigmas[i]) * (-r * h * eta).exp() * x - alpha_mid * (-r * h * (eta + 1)).expm1() * denoised
        if eta:
            x2 = x2 + ns(sigmas[i], sigma_mid) * s_noise * sigma_mid * (-2 * r * h * eta).expm1().neg().sqrt()
        denoised2 = model(x2, sigma_mid * s_in(x))
        # step 2
        dd = (1 - fac) * denoised + fac * denoised2
        x = (sigmas[i + 1] / sigmas[i]) * (-h * eta).exp() * x - alpha_t * (-h * (eta + 1)).expm1() * dd
        if eta:
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
    return x


def dpmpp_2m_sde(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint",
                 cpu_noise=True):
    if len(sigmas) <= 1:
        return x
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.brownian(x, sigmas, cpu=cpu_noise)
    sigmas = offset_first_sigma(sigmas, ms)
    lams = half_log_snr(sigmas, ms)
    old = None
    h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lams[i], lams[i + 1]
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old)
            if eta:
                x = x + ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
            h_last = h
        old = denoised
    return x


def dpmpp_2m_sde_heun(model, x, sigmas, ctx, **kw):
    return dpmpp_2m_sde(model, x, sigmas, ctx, solver_type="heun", **kw)


def dpmpp_3m_sde(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, cpu_noise=True):
    if len(sigmas) <= 1:
        return x
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.brownian(x, sigmas, cpu=cpu_noise)
    sigmas = offset_first_sigma(sigmas, ms)
    lams = half_log_snr(sigmas, ms)
    d1_, d2_ = None, None
    h_1, h_2 = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lams[i], lams[i + 1]
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d1_) / r0
                d1_1 = (d1_ - d2_) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - d1_) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta:
                x = x + ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
            d1_, d2_ = denoised, d1_
            h_1, h_2 = h, h_1
    return x
