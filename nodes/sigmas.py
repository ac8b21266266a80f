"""SIGMAS nodes: named and parametric schedulers and sigma-list operations. A SIGMAS value is a 1-D float32
tensor of descending sigmas (usually ending in 0), as in ComfyUI."""
from __future__ import annotations

import math

from engine.node import Combo, Float, Int, Node, Output, Socket

from .sampler_core import model_sampling_of
from .samplers import SCHEDULER_NAMES

_SIG = dict(min=0.0, max=5000.0, step=0.01, round=False)
CAT = "sampling/custom_sampling/schedulers"
CAT_OPS = "sampling/custom_sampling/sigmas"


class BasicScheduler(Node):
    """The sigmas of a named scheduler for a model (denoise < 1 keeps the last ``steps`` of int(steps/denoise))."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Combo("scheduler", SCHEDULER_NAMES), Int("steps", 20, min=1, max=10000),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    @classmethod
    def check(cls, env, scheduler=None, **_):
        if isinstance(scheduler, str) and scheduler not in SCHEDULER_NAMES:
            return {"scheduler": f"unknown scheduler '{scheduler}'"}
        return None

    def run(self, ctx, model, scheduler, steps, denoise):
        import torch

        from sampling import schedulers as S

        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.FloatTensor([]),)
            total = int(steps / denoise)
        sig = S.calculate_sigmas(model_sampling_of(model), scheduler, total).cpu()
        return (sig[-(steps + 1):],)


class KarrasScheduler(Node):
    """Karras et al. (2022) sigmas: rho-spaced between sigma_max and sigma_min, then 0."""
    category = CAT
    inputs = (Int("steps", 20, min=1, max=10000), Float("sigma_max", 14.614642, **_SIG),
              Float("sigma_min", 0.0291675, **_SIG), Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        from sampling import schedulers as S

        return (S.karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    """Log-linear sigmas from sigma_max to sigma_min, then 0."""
    category = CAT
    inputs = (Int("steps", 20, min=1, max=10000), Float("sigma_max", 14.614642, **_SIG),
              Float("sigma_min", 0.0291675, **_SIG))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min):
        from sampling import schedulers as S

        return (S.exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    """Log-sigma on a power ramp between sigma_max and sigma_min (rho 1 = exponential), then 0."""
    category = CAT
    inputs = (Int("steps", 20, min=1, max=10000), Float("sigma_max", 14.614642, **_SIG),
              Float("sigma_min", 0.0291675, **_SIG), Float("rho", 1.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        from sampling import schedulers as S

        return (S.polyexponential(steps, sigma_min, sigma_max, rho),)


class VPScheduler(Node):
    """Sigmas of the continuous VP SDE (Song et al. 2021) at t linear from 1 to eps_s, then 0."""
    category = CAT
    inputs = (Int("steps", 20, min=1, max=10000), Float("beta_d", 19.9, **_SIG), Float("beta_min", 0.1, **_SIG),
              Float("eps_s", 0.001, min=0.0, max=1.0, step=0.0001, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, beta_d, beta_min, eps_s):
        from sampling import schedulers as S

        return (S.vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    """Beta-distribution quantiles over the model's sigma table (alpha, beta shape parameters)."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Int("steps", 20, min=1, max=10000),
              Float("alpha", 0.6, min=0.0, max=50.0, step=0.01, round=False),
              Float("beta", 0.6, min=0.0, max=50.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, model, steps, alpha, beta):
        from sampling import schedulers as S

        return (S.beta(model_sampling_of(model), steps, alpha, beta),)


class LaplaceScheduler(Node):
    """Laplace-distributed log-sigma (location mu, scale beta), clamped to [sigma_min, sigma_max], then 0."""
    category = CAT
    inputs = (Int("steps", 20, min=1, max=10000), Float("sigma_max", 14.614642, **_SIG),
              Float("sigma_min", 0.0291675, **_SIG), Float("mu", 0.0, min=-10.0, max=10.0, step=0.1, round=False),
              Float("beta", 0.5, min=0.0, max=10.0, step=0.1, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min, mu, beta):
        from sampling import schedulers as S

        return (S.laplace(steps, sigma_min, sigma_max, mu, beta),)


class SDTurboScheduler(Node):
    """SD-Turbo's timesteps 999, 899, ... (every 100th), shifted by denoise, as sigmas of the model, then 0."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Int("steps", 1, min=1, max=10),
              Float("denoise", 1.0, min=0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, model, steps, denoise):
        import torch

        start = 10 - int(10 * denoise)
        ts = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
        sig = model_sampling_of(model).sigma(ts)
        return (torch.cat([sig.float(), sig.new_zeros([1]).float()]),)


# Align Your Steps (Sabour et al. 2024): the paper's optimised 10-step schedules
AYS_NOISE_LEVELS = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def _loglinear_interp(values, n):
    """Resample a decreasing list to n points, linear in log-space."""
    import torch

    xs = torch.linspace(0, 1, len(values)).numpy()
    ys = torch.tensor(values[::-1], dtype=torch.float64).log().numpy()
    import numpy as np

    new_xs = np.linspace(0, 1, n)
    return np.exp(np.interp(new_xs, xs, ys))[::-1].copy()


class AlignYourStepsScheduler(Node):
    """Align Your Steps schedules for SD1, SDXL and SVD (log-linearly resampled to ``steps``), then 0."""
    category = CAT
    inputs = (Combo("model_type", ["SD1", "SDXL", "SVD"]), Int("steps", 10, min=1, max=10000),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, model_type, steps, denoise):
        import torch

        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.FloatTensor([]),)
            total = round(steps * denoise)
        levels = AYS_NOISE_LEVELS[model_type][:]
        if steps + 1 != len(levels):
            levels = _loglinear_interp(levels, steps + 1)
        sig = torch.FloatTensor(list(levels)[-(total + 1):])
        sig[-1] = 0
        return (sig,)


class SplitSigmas(Node):
    """Splits sigmas at ``step``: high_sigmas = sigmas[:step+1], low_sigmas = sigmas[step:] (they share one)."""
    category = CAT_OPS
    inputs = (Socket("sigmas", "SIGMAS"), Int("step", 0, min=0, max=10000))
    outputs = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def run(self, ctx, sigmas, step):
        return (sigmas[:step + 1].clone(), sigmas[step:].clone())


class SplitSigmasDenoise(Node):
    """Splits sigmas so the low part has round(steps * denoise) steps."""
    category = CAT_OPS
    inputs = (Socket("sigmas", "SIGMAS"), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def run(self, ctx, sigmas, denoise):
        steps = max(sigmas.shape[-1] - 1, 0)
        total = round(steps * denoise)
        hi = sigmas[:-total] if total > 0 else sigmas
        lo = sigmas[-(total + 1):]
        return (hi.clone(), lo.clone())


class FlipSigmas(Node):
    """Reverses the sigmas (for inversion); a first sigma of 0 becomes 1e-4."""
    category = CAT_OPS
    inputs = (Socket("sigmas", "SIGMAS"),)
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, sigmas):
        if len(sigmas) == 0:
            return (sigmas,)
        s = sigmas.flip(0).clone()
        if s[0] == 0:
            s[0] = 0.0001
        return (s,)


class SetFirstSigma(Node):
    """Replaces the first sigma."""
    category = CAT_OPS
    inputs = (Socket("sigmas", "SIGMAS"), Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, sigmas, sigma):
        s = sigmas.clone()
        if len(s):
            s[0] = sigma
        return (s,)


class ExtendIntermediateSigmas(Node):
    """Inserts ``steps`` extra sigmas between each pair whose upper sigma lies in [end_at_sigma, start_at_sigma]
    (start -1 = no upper bound), spaced linearly, or cosine/sine-eased."""
    category = CAT_OPS
    inputs = (Socket("sigmas", "SIGMAS"), Int("steps", 2, min=1, max=100),
              Float("start_at_sigma", -1.0, min=-1.0, max=20000.0, step=0.01, round=False),
              Float("end_at_sigma", 12.0, min=0.0, max=20000.0, step=0.01, round=False),
              Combo("spacing", ["linear", "cosine", "sine"]))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
        import torch

        if start_at_sigma < 0:
            start_at_sigma = float("inf")
        ease = {"linear": lambda x: x, "cosine": lambda x: torch.sin(x * math.pi / 2),
                "sine": lambda x: 1 - torch.cos(x * math.pi / 2)}[spacing]
        out = []
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            out.append(a[None])
            if end_at_sigma <= a <= start_at_sigma:
                f = ease(torch.linspace(0, 1, steps + 2)[1:-1])
                out.append(a + (b - a) * f)
        out.append(sigmas[-1:])
        return (torch.cat(out),)


NODES = [BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, VPScheduler,
         BetaSamplingScheduler, LaplaceScheduler, SDTurboScheduler, AlignYourStepsScheduler, SplitSigmas,
         SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas]
