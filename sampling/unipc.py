"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework"), multistep, data prediction,
variants bh1 (B(h) = h) and bh2 (B(h) = e^h - 1), order 3 with lower orders at the start and the end.

It runs in VP space: x_vp = x / sqrt(1 + sigma^2), alpha = 1 / sqrt(1 + sigma^2), lambda = log(alpha/std) =
-log(sigma). As in ComfyUI a final sigma of 0 is replaced by 0.001 (lambda must stay finite), and the result is
divided by alpha(0.001); the run's inverse noise scaling then also uses 0.001 (see registry.final_sigma).
"""
from __future__ import annotations

import torch


class _VP:
    @staticmethod
    def log_alpha(sigma):
        return 0.5 * torch.log(1 / (sigma * sigma + 1))

    def alpha(self, sigma):
        return torch.exp(self.log_alpha(sigma))

    def std(self, sigma):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(sigma)))

    def lam(self, sigma):
        la = self.log_alpha(sigma)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def uni_pc(model, x, sigmas, ctx, variant="bh1"):
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    vp = _VP()
    ones = x.new_ones([x.shape[0]])

    def data(xv, sigma):
        return model(xv / vp.alpha(sigma), sigma * ones)

    xv = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)

    def update(xv, model_prev, t_prev, t, order, use_corrector):
        t0 = t_prev[-1]
        m0 = model_prev[-1]
        lam0, lam_t = vp.lam(t0), vp.lam(t)
        s0, s_t = vp.std(t0), vp.std(t)
        alpha_t = torch.exp(vp.log_alpha(t))
        h = lam_t - lam0
        rks, d1s = [], []
        for i in range(1, order):
            rk = (vp.lam(t_prev[-(i + 1)]) - lam0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks, device=xv.device)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        fact = 1
        B_h = hh if variant == "bh1" else torch.expm1(hh)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * fact / B_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        R = torch.stack(R)
        b = torch.tensor(b, device=xv.device)
        if d1s:
            d1s = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5], device=xv.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            d1s = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=xv.device) if order == 1 else torch.linalg.solve(R, b)
        x_t_ = s_t / s0 * xv - alpha_t * h_phi_1 * m0
        pred = torch.einsum("k,bkchw->bchw", rhos_p, d1s) if d1s is not None else 0
        x_t = x_t_ - alpha_t * B_h * pred
        model_t = None
        if use_corrector:
            model_t = data(x_t, t)
            corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) if d1s is not None else 0
            x_t = x_t_ - alpha_t * B_h * (corr + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    t_prev = [ts[0]]
    model_prev = [data(xv, ts[0])]
    ctx.report(0, model_prev[-1], xv)
    for step in range(1, order):
        xv, mx = update(xv, model_prev, t_prev, ts[step], step, True)
        if mx is None:
            mx = data(xv, ts[step])
        ctx.report(step, mx, xv)
        t_prev.append(ts[step])
        model_prev.append(mx)
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)
        use_corrector = step != steps
        xv, mx = update(xv, model_prev, t_prev, ts[step], step_order, use_corrector)
        for i in range(order - 1):
            t_prev[i] = t_prev[i + 1]
            model_prev[i] = model_prev[i + 1]
        t_prev[-1] = ts[step]
        if step < steps:
            if mx is None:
                mx = data(xv, ts[step])
            model_prev[-1] = mx
            ctx.report(step, mx, xv)
    return xv / vp.alpha(ts[-1])
