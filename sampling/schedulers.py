"""Noise schedules: descending sigma lists ending in 0 (length steps + 1), ComfyUI's scheduler names.

``calculate_sigmas(ms, name, steps)`` covers ComfyUI's KSampler list; the free functions below are also used by
the custom-sampling scheduler nodes (Karras, exponential, polyexponential, VP, Laplace, beta, AYS, SDTurbo).
All results are float32 tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .names import DISCARD_PENULTIMATE, SCHEDULER_NAMES  # noqa: F401 (re-exported)


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-linear from sigma_max to sigma_min."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log-sigma following a power ramp (rho 1 = exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """Continuous VP SDE (Song et al. 2021) sigmas at t linear from 1 to eps_s."""
    t = torch.linspace(1, eps_s, n)
    return append_zero(torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1))


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Laplace-distributed log-SNR (Hang et al. 2024): log sigma = mu - beta sign(0.5-x) log(1 - 2|0.5-x|)."""
    x = torch.linspace(0, 1, n)
    clamp = lambda v: torch.clamp(v, min=sigma_min, max=sigma_max)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return append_zero(clamp(torch.exp(lmb)))


def simple(ms, steps: int) -> torch.Tensor:
    """Every (len(table)/steps)-th table sigma from the top."""
    s = ms.sigmas
    ss = len(s) / steps
    return torch.FloatTensor([float(s[-(1 + int(x * ss))]) for x in range(steps)] + [0.0])


def ddim_uniform(ms, steps: int) -> torch.Tensor:
    """Table sigmas at 1, 1+k, 1+2k, ... (k = len//steps), reversed (DDIM's "leading" spacing + 1)."""
    s = ms.sigmas
    ss = max(len(s) // steps, 1)
    sigs = [float(s[x]) for x in range(1, len(s), ss)][::-1]
    return torch.FloatTensor(sigs + [0.0])


def normal(ms, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps linear between timestep(sigma_max) and timestep(sigma_min), mapped back through sigma(t).
    sgm_uniform: steps+1 points, the last dropped. If the schedule reaches sigma 0 itself no 0 is appended."""
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    add_zero = True
    if sgm:
        ts = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps += 1
            add_zero = False
        ts = torch.linspace(float(start), float(end), steps)
    sigs = [float(ms.sigma(t)) for t in ts]
    if add_zero:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def beta(ms, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Beta-distribution quantiles over the table index (Lee et al. 2024, "Beta sampling is all you need"),
    repeated indices removed."""
    import scipy.stats

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta_) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic(ms, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None):
    """Mochi's schedule: linear to ``threshold_noise`` for the first half of the steps, then quadratic to 1,
    as 1 - s, times sigma_max."""
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        lin = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        qsteps = steps - linear_steps
        qc = diff / (linear_steps * qsteps ** 2)
        lc = threshold_noise / linear_steps - 2 * diff / (qsteps ** 2)
        const = qc * (linear_steps ** 2)
        quad = [qc * (i ** 2) + lc * i + const for i in range(linear_steps, steps)]
        sched = [1.0 - x for x in lin + quad + [1.0]]
    return torch.FloatTensor(sched) * ms.sigma_max.cpu()


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL-optimal schedule (Sabour et al. 2024, "Align your steps"): linear in arctan(sigma). n = 1 gives
    [nan, 0] (0/0), as ComfyUI does."""
    idx = torch.arange(n, dtype=torch.float).div_(n - 1) if n > 1 else torch.full((1,), float("nan"))
    out = torch.zeros(n + 1, dtype=torch.float)
    out[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return out


def calculate_sigmas(ms, name: str, steps: int) -> torch.Tensor:
    """The named scheduler's sigmas for a ModelSampling (float32, steps+1 values ending in 0; beta may be
    shorter when quantiles repeat)."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    if name == "simple":
        return simple(ms, steps)
    if name == "sgm_uniform":
        return normal(ms, steps, sgm=True)
    if name == "karras":
        return karras(steps, smin, smax)
    if name == "exponential":
        return exponential(steps, smin, smax)
    if name == "ddim_uniform":
        return ddim_uniform(ms, steps)
    if name == "beta":
        return beta(ms, steps)
    if name == "normal":
        return normal(ms, steps)
    if name == "linear_quadratic":
        return linear_quadratic(ms, steps)
    if name == "kl_optimal":
        return kl_optimal(steps, smin, smax)
    raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULER_NAMES)}")


def ksampler_sigmas(ms, scheduler: str, sampler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """KSampler's sigmas: for denoise < 1 the last steps+1 of a schedule for int(steps/denoise) steps; the
    DISCARD_PENULTIMATE samplers compute steps+1 sigmas and drop the second-to-last. denoise <= 0: empty."""
    def full(n):
        if sampler in DISCARD_PENULTIMATE:
            s = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1):]
