"""DPM-Solver (Lu et al. 2022) in k-diffusion's sigma space: dpm_fast (fixed order-3 steps, uniform in
t = -log sigma) and dpm_adaptive (embedded order 2/3 pair with a PID step-size controller)."""
from __future__ import annotations

import math

import torch

from .common import ancestral_step


class _PID:
    """PID step-size control on the inverse error (Söderlind 2003), accepting when the factor >= safety."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = []

    def propose(self, error) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class _DPMSolver:
    def __init__(self, model, x):
        self.model = model
        self.ones = x.new_ones([x.shape[0]])

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        sigma = self.sigma(t) * self.ones
        e = (x - self.model(x, sigma)) / self.sigma(t)
        return e, {key: e, **cache}

    def step1(self, x, t, t_next, cache):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * e, cache

    def step2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * e
        e1, cache = self.eps(cache, "eps_r1", u1, s1)
        x2 = x - self.sigma(t_next) * h.expm1() * e - self.sigma(t_next) / (2 * r1) * h.expm1() * (e1 - e)
        return x2, cache

    def step3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * e
        e1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * e \
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e1 - e)
        e2, cache = self.eps(cache, "eps_r2", u2, s2)
        x3 = x - self.sigma(t_next) * h.expm1() * e - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (e2 - e)
        return x3, cache


def _ends(sigmas):
    smin = sigmas[-1]
    if smin == 0:
        smin = sigmas[-2]
    return smin, sigmas[0]


def dpm_fast(model, x, sigmas, ctx, eta=0.0, s_noise=1.0, noise_sampler=None):
    """len(sigmas)-1 model evaluations as order-3 steps (then 2/1), uniform in t between sigma_max and the
    smallest nonzero sigma; only the ends of ``sigmas`` matter."""
    if len(sigmas) <= 1:
        return x
    smin, smax = _ends(sigmas)
    nfe = len(sigmas) - 1
    ns = noise_sampler or ctx.noise_sampler(x)
    s = _DPMSolver(model, x)
    t_start, t_end = s.t(torch.tensor(smax)), s.t(torch.tensor(smin))
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, su = ancestral_step(s.sigma(t), s.sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, s.t(sd))
            su = (s.sigma(t_next) ** 2 - s.sigma(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        e, cache = s.eps(cache, "eps", x, t)
        ctx.report(i, x - s.sigma(t) * e, x)
        step = {1: s.step1, 2: s.step2, 3: s.step3}[order]
        x, cache = step(x, t, t_next_, cache)
        if su:
            x = x + su * s_noise * ns(s.sigma(t), s.sigma(t_next))
    return x


def dpm_adaptive(model, x, sigmas, ctx, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0,
                 dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
    """Adaptive DPM-Solver: order-3 step with an embedded order-2 estimate for error control."""
    if len(sigmas) <= 1:
        return x
    smin, smax = _ends(sigmas)
    ns = noise_sampler or ctx.noise_sampler(x)
    sv = _DPMSolver(model, x)
    t_start, t_end = sv.t(torch.tensor(smax)), sv.t(torch.tensor(smin))
    forward = t_end > t_start
    h_init = abs(h_init) * (1 if forward else -1)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PID(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    steps = 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        if eta:
            sd, su = ancestral_step(sv.sigma(s), sv.sigma(t), eta)
            t_ = torch.minimum(t_end, sv.t(sd))
            su = (sv.sigma(t) ** 2 - sv.sigma(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        e, cache = sv.eps(cache, "eps", x, s)
        denoised = x - sv.sigma(s) * e
        if order == 2:
            x_low, cache = sv.step1(x, s, t_, cache)
            x_high, cache = sv.step2(x, s, t_, cache)
        else:
            x_low, cache = sv.step2(x, s, t_, cache, r1=1 / 3)
            x_high, cache = sv.step3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = x_high
            if su:
                x = x + su * s_noise * ns(sv.sigma(s), sv.sigma(t))
            s = t
            ctx.report(steps, denoised, x)
        steps += 1
    return x
