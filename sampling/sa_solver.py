"""SA-Solver (Xue et al. 2023, "SA-Solver: stochastic Adams solver for fast sampling of diffusion models").

Data-prediction stochastic Adams predictor-corrector in lambda = log(alpha/sigma). A step from lambda_s to
lambda_t with stochasticity tau:

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + sum_j b_j D_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi,
    b_j = alpha_t (1 + tau^2) int_{lambda_s}^{lambda_t} e^{-(1 + tau^2)(lambda_t - l)} L_j(l) dl,

L_j the Lagrange basis through the lambdas of the x0 estimates D_j used (the predictor: the last
``predictor_order`` ones; the corrector: the last ``corrector_order`` ones including the estimate at the new
point, with the predictor's noise reused). tau = eta inside [tau_end, tau_start] (sigmas; by default the model's
20%..80% of the schedule), else 0. PEC by default (the estimate at the predicted point feeds the next step);
``use_pece`` re-evaluates the model at the corrected point.
"""
from __future__ import annotations

import math

import torch

from .common import half_log_snr, offset_first_sigma, s_in


def _b_coeffs(lams, lam_s, lam_t, tau, alpha_t):
    """b_j for the Lagrange basis through ``lams`` (float64 exact integrals) times alpha_t."""
    a = 1.0 + tau * tau
    h = lam_t - lam_s
    nodes = [v - lam_t for v in lams]  # in u = lambda - lambda_t, the integral runs over [-h, 0]
    k_max = len(nodes)
    # I_k = int_{-h}^0 e^{a u} u^k du
    I = [(1 - math.exp(-a * h)) / a]
    for k in range(1, k_max):
        I.append(-((-h) ** k) * math.exp(-a * h) / a - (k / a) * I[k - 1])
    out = []
    for j in range(k_max):
        poly = [1.0]  # coefficients in ascending powers of u
        for m in range(k_max):
            if m == j:
                continue
            d = nodes[j] - nodes[m]
            new = [0.0] * (len(poly) + 1)
            for p, c in enumerate(poly):
                new[p] += -nodes[m] * c / d
                new[p + 1] += c / d
            poly = new
        out.append(alpha_t * a * sum(c * I[p] for p, c in enumerate(poly)))
    return out


def sa_solver(model, x, sigmas, ctx, eta=1.0, tau_start=None, tau_end=None, s_noise=1.0, noise_sampler=None,
              predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    if len(sigmas) <= 1:
        return x
    ms = ctx.model_sampling
    ns = noise_sampler or ctx.noise_sampler(x)
    sigmas = offset_first_sigma(sigmas, ms)
    lams = half_log_snr(sigmas, ms)
    lam_f = [float(v) for v in lams.double()]
    if tau_start is None:
        tau_start = ms.percent_to_sigma(0.2)
    if tau_end is None:
        tau_end = ms.percent_to_sigma(0.8)
    tau_fn = lambda s: eta if tau_end <= float(s) <= tau_start else 0.0
    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h = 0.0
    tau_t = 0.0
    noise = 0.0
    preds = []
    to_end = float(sigmas[-1]) == 0.0
    n = len(sigmas)
    for i in range(n - 1):
        denoised = model(x_pred, sigmas[i] * s_in(x))
        ctx.report(i, denoised, x_pred)
        preds.append(denoised)
        preds = preds[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p_order = min(p_order, n - 2 - i)
            c_order = min(c_order, n - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            alpha_i = float(sigmas[i]) * math.exp(lam_f[i])
            b = _b_coeffs(lam_f[i - c_order + 1:i + 1], lam_f[i - 1], lam_f[i], tau_t, alpha_i)
            corr = sum(bj * d for bj, d in zip(b, preds[-c_order:]))
            x = sigmas[i] / sigmas[i - 1] * math.exp(-(tau_t ** 2) * h) * x + corr
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in(x))
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_fn(sigmas[i + 1])
            alpha_t = float(sigmas[i + 1]) * math.exp(lam_f[i + 1])
            b = _b_coeffs(lam_f[i - p_order + 1:i + 1], lam_f[i], lam_f[i + 1], tau_t, alpha_t)
            pred = sum(bj * d for bj, d in zip(b, preds[-p_order:]))
            h = lam_f[i + 1] - lam_f[i]
            x_pred = sigmas[i + 1] / sigmas[i] * math.exp(-(tau_t ** 2) * h) * x + pred
            if tau_t > 0 and s_noise > 0:
                noise = ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * tau_t ** 2 * h)) \
                    * s_noise
                x_pred = x_pred + noise
    return x_pred
