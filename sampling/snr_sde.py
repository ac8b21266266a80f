"""SDE solvers that work in log-SNR lambda = log(alpha/sigma) of the model sampling (so they are exact for
rectified flow too): ER-SDE (Cui et al. 2023), SEEDS-2/3 (Gonzalez et al. 2023) and SA-Solver (Xue et al. 2023)."""
from __future__ import annotations

import torch

from .common import (ei_h_phi_1, ei_h_phi_2, half_log_snr, offset_first_sigma, s_in, sigma_of_half_log_snr)


def _er_noise_scaler(x):
    return x * ((x ** 0.3).exp() + 10.0)


def er_sde(model, x, sigmas, ctx, s_noise=1.0, noise_sampler=None, noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver, up to 3 stages, with the paper's noise-scale function
    x (e^{x^0.3} + 10) of er_lambda = sigma/alpha."""
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.noise_sampler(x)
    if isinstance(noise_scaler, tuple):  # ("power", p): lambda^p (p 1 = ODE, 2 = reverse-time VP SDE)
        p = float(noise_scaler[1])
        scaler = lambda v: v ** p
    else:
        scaler = noise_scaler or _er_noise_scaler
    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma(sigmas, ms)
    er = half_log_snr(sigmas, ms).neg().exp()  # sigma / alpha
    old, old_d = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            er_s, er_t = er[i], er[i + 1]
            alpha_s = sigmas[i] / er_s
            alpha_t = sigmas[i + 1] / er_t
            r_alpha = alpha_t / alpha_s
            r = scaler(er_t) / scaler(er_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / n_points
                pos = er_t + points * step
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                dd = (denoised - old) / (er_s - er[i - 1])
                x = x + alpha_t * (dt + s * scaler(er_t)) * dd
                if stage >= 3:
                    s_u = torch.sum((pos - er_s) / scaled) * step
                    du = (dd - old_d) / ((er_s - er[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * scaler(er_t)) * du
                old_d = dd
            if s_noise > 0:
                x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * s_noise \
                    * (er_t ** 2 - er_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old = denoised
    return x


def seeds_2(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5, solver_type="phi_1"):
    """SEEDS-2: two-stage stochastic exponential integrator (noise split consistently between the stages)."""
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.noise_sampler(x)
    inject = eta > 0 and s_noise > 0
    sigmas = offset_first_sigma(sigmas, ms)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_of_half_log_snr(lam_1, ms)
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        x2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * ei_h_phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * ns(sigmas[i], sigma_1)
            x2 = x2 + sde_noise * sigma_1 * s_noise
        denoised2 = model(x2, sigma_1 * s_in(x))
        if solver_type == "phi_2":
            b2 = ei_h_phi_2(-h_eta) / r
            b1 = ei_h_phi_1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised2)
        else:
            dd = torch.lerp(denoised, denoised2, fac)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * ei_h_phi_1(-h_eta) * dd
        if inject:
            seg = (r - 1) * h * eta
            sde_noise = sde_noise * seg.exp()
            sde_noise = sde_noise + seg.mul(2).expm1().neg().sqrt() * ns(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def seeds_3(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3: three-stage stochastic exponential integrator."""
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.noise_sampler(x)
    inject = eta > 0 and s_noise > 0
    sigmas = offset_first_sigma(sigmas, ms)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_of_half_log_snr(lam_1, ms), sigma_of_half_log_snr(lam_2, ms)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        x2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * ei_h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * ns(sigmas[i], sigma_1)
            x2 = x2 + sde_noise * sigma_1 * s_noise
        denoised2 = model(x2, sigma_1 * s_in(x))
        a3_2 = r_2 / r_1 * ei_h_phi_2(-r_2 * h_eta)
        a3_1 = ei_h_phi_1(-r_2 * h_eta) - a3_2
        x3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised2)
        if inject:
            seg = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * seg.exp()
            sde_noise = sde_noise + seg.mul(2).expm1().neg().sqrt() * ns(sigma_1, sigma_2)
            x3 = x3 + sde_noise * sigma_2 * s_noise
        denoised3 = model(x3, sigma_2 * s_in(x))
        b3 = ei_h_phi_2(-h_eta) / r_2
        b1 = ei_h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised3)
        if inject:
            seg = (r_2 - 1) * h * eta
            sde_noise = sde_noise * seg.exp()
            sde_noise = sde_noise + seg.mul(2).expm1().neg().sqrt() * ns(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def sa_solver(model, x, sigmas, ctx, **kw):
    from .sa_solver import sa_solver as fn

    return fn(model, x, sigmas, ctx, **kw)
