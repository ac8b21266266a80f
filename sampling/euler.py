"""Single-step samplers of Karras et al. 2022 and relatives: euler, euler_ancestral, heun, heunpp2, dpm_2,
dpm_2_ancestral, lms (linear multistep), ddpm (Ho et al. 2020 posterior), lcm (Luo et al. 2023) and the CFG++
(Chung et al. 2024) euler variants, which re-noise with the unguided estimate."""
from __future__ import annotations

import torch
from scipy import integrate

from .common import ancestral_step, half_log_snr, rf_ancestral_step, s_in, to_d


def euler(model, x, sigmas, ctx, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler on the probability-flow ODE (Karras et al. Alg. 2 with optional churn)."""
    if s_churn <= 0:  # the common case, kept lean: the per-step tensors are made once, not indexed each step
        steps, dts, ones = sigmas.unbind(), (sigmas[1:] - sigmas[:-1]).unbind(), s_in(x)
        for i in range(len(sigmas) - 1):
            denoised = model(x, steps[i] * ones)
            d = to_d(x, steps[i], denoised)
            ctx.report(i, denoised, x)
            x = x + d * dts[i]
        return x
    ns = ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        if s_churn > 0:
            gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
            sigma_hat = sigmas[i] * (gamma + 1)
            if gamma > 0:
                x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        else:
            sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in(x))
        d = to_d(x, sigma_hat, denoised)
        ctx.report(i, denoised, x)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def euler_cfg_pp(model, x, sigmas, ctx):
    """CFG++: step along the unguided direction from the guided estimate (euler_ancestral_cfg_pp, eta 0)."""
    return euler_ancestral_cfg_pp(model, x, sigmas, ctx, eta=0.0, s_noise=0.0)


def euler_ancestral(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Euler to sigma_down, then fresh noise of std sigma_up (rectified flow: the RF variant)."""
    if ctx.is_flow:
        return _euler_ancestral_rf(model, x, sigmas, ctx, eta, s_noise, noise_sampler)
    ns = noise_sampler or ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        if down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (down - sigmas[i])
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def _euler_ancestral_rf(model, x, sigmas, ctx, eta, s_noise, noise_sampler):
    ns = noise_sampler or ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        down, scale, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ratio = down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = scale * x + ns(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def euler_ancestral_cfg_pp(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None):
    """CFG++ ancestral Euler (DDIM-style in the x/alpha space, so it also holds for rectified flow): the guided
    x0 estimate, the unguided noise direction to sigma_down, fresh noise of std sigma_up."""
    ms = ctx.model_sampling
    ns = noise_sampler or (ctx.noise_sampler(x) if eta > 0 and s_noise > 0 else None)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], ms).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], ms).exp()
        d = to_d(x, sigmas[i], alpha_s * model.uncond_denoised)
        down, up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def heun(model, x, sigmas, ctx):
    """Heun's second-order method (Karras et al. Alg. 1); the last step (to 0) is Euler."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        d = to_d(x, sigmas[i], denoised)
        ctx.report(i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1], model(x2, sigmas[i + 1] * s_in(x)))
            x = x + (d + d2) / 2 * dt
    return x


def heunpp2(model, x, sigmas, ctx):
    """Heun++: averages the derivatives at up to three points, weighted by sigma/sigma_max."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        d = to_d(x, sigmas[i], denoised)
        ctx.report(i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1], model(x2, sigmas[i + 1] * s_in(x)))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d2 * w2) * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1], model(x2, sigmas[i + 1] * s_in(x)))
            x3 = x2 + d2 * (sigmas[i + 2] - sigmas[i + 1])
            d3 = to_d(x3, sigmas[i + 2], model(x3, sigmas[i + 2] * s_in(x)))
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            x = x + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    return x


def dpm_2(model, x, sigmas, ctx):
    """DPM-Solver-2 in sigma space (Karras et al.'s variant): midpoint in log-sigma."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        d = to_d(x, sigmas[i], denoised)
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x2 = x + d * (mid - sigmas[i])
            d2 = to_d(x2, mid, model(x2, mid * s_in(x)))
            x = x + d2 * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(model, x, sigmas, ctx, eta=1.0, s_noise=1.0, noise_sampler=None):
    ns = noise_sampler or ctx.noise_sampler(x)
    flow = ctx.is_flow
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        if flow:
            down, scale, up = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        else:
            down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        d = to_d(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x2 = x + d * (mid - sigmas[i])
            d2 = to_d(x2, mid, model(x2, mid * s_in(x)))
            x = x + d2 * (down - sigmas[i])
            if flow:
                x = scale * x + ns(sigmas[i], sigmas[i + 1]) * s_noise * up
            else:
                x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def _lms_coeff(order, t, i, j):
    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(model, x, sigmas, ctx, order=4):
    """Linear multistep (Adams-Bashforth in sigma with exact Lagrange integrals), up to ``order`` derivatives."""
    sig = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        ctx.report(i, denoised, x)
        if sigmas[i + 1] == 0:  # the last step lands on the x0 estimate (as ComfyUI does)
            x = denoised
            continue
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, sig, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def ddpm(model, x, sigmas, ctx, noise_sampler=None):
    """Ancestral sampling with the DDPM posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020), done in VP space."""
    ns = noise_sampler or ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in(x))
        ctx.report(i, denoised, x)
        eps = (x - denoised) / sigma
        xv = x / torch.sqrt(1.0 + sigma ** 2.0)
        ac = 1 / (sigma * sigma + 1)
        ac_prev = 1 / (sigma_prev * sigma_prev + 1)
        alpha = ac / ac_prev
        mu = (1.0 / alpha).sqrt() * (xv - (1 - alpha) * eps / (1 - ac).sqrt())
        if sigma_prev > 0:
            mu = mu + ((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac)).sqrt() * ns(sigma, sigma_prev)
        x = mu
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev ** 2.0)
    return x


def lcm(model, x, sigmas, ctx, noise_sampler=None):
    """Latent consistency sampling: jump to the x0 estimate, re-noise to the next sigma."""
    ns = noise_sampler or ctx.noise_sampler(x)
    ms = ctx.model_sampling
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x)
        x = denoised
        if sigmas[i + 1] > 0:
            x = ms.noise_scaling(sigmas[i + 1], ns(sigmas[i], sigmas[i + 1]), x)
    return x
