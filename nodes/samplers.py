"""Sampler and scheduler names (ComfyUI's, in ComfyUI's order) and how each maps onto a diffusers scheduler.

A ComfyUI *sampler* is an integration method; a ComfyUI *scheduler* is the noise schedule it walks. In diffusers
both live in one scheduler class, so a (sampler, scheduler) pair becomes one configured scheduler:

- the sampler picks the class and its solver options (``SAMPLERS``);
- the scheduler picks the timestep spacing / sigma conversion (``SCHEDULES``):
  ``simple``       = ComfyUI's "every (1000/steps)-th training sigma from the top": trailing spacing; classes that
                     take custom timesteps get ComfyUI's exact integer list (t = 999 - floor(k*1000/steps)).
  ``ddim_uniform`` = t = 1 + k*(1000//steps), reversed: leading spacing with steps_offset 1 (exact list likewise).
  ``normal``       = timesteps linear from 999 to 0: linspace spacing (diffusers interpolates sigma linearly between
                     integer timesteps where ComfyUI interpolates log-sigma: relative sigma difference < 1e-3).
  ``karras``       = rho-7 Karras sigmas between the model's sigma_min and sigma_max (``use_karras_sigmas``).
  ``exponential``  = log-linear sigmas between sigma_max and sigma_min (``use_exponential_sigmas``).
  ``sgm_uniform``, ``beta``, ``linear_quadratic``, ``kl_optimal``: no diffusers equivalent; rejected.

A pair that has no faithful diffusers configuration is rejected at validation (``unsupported_reason``) with a
message naming what works instead; nothing is silently substituted. ``*_gpu`` variants differ from their base in
ComfyUI only in where the Brownian noise is drawn; Loom draws all noise on the CPU from the seed, so they are
the same configured scheduler (listed in ``ALIASES``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

# ComfyUI 0.3.75 KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"], in order.
SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


@dataclass(frozen=True)
class SamplerSpec:
    cls: str                      # diffusers class name
    kwargs: tuple = ()            # extra config (name, value) pairs
    schedules: tuple = ("simple", "normal", "ddim_uniform", "karras", "exponential")
    stochastic: bool = False      # draws noise inside step() (needs the generator)
    note: str = ""


_INT_T = ("simple", "ddim_uniform")  # integer-timestep classes: ComfyUI's exact timestep lists only

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerSpec("EulerAncestralDiscreteScheduler", stochastic=True),
    "heun": SamplerSpec("HeunDiscreteScheduler"),
    "dpm_2": SamplerSpec("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": SamplerSpec("KDPM2AncestralDiscreteScheduler", stochastic=True),
    "lms": SamplerSpec("LMSDiscreteScheduler"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"), ("solver_order", 2))),
    "dpmpp_2m_sde": SamplerSpec("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),
                                                                ("solver_order", 2), ("solver_type", "midpoint")),
                                stochastic=True),
    "dpmpp_2m_sde_heun": SamplerSpec("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),
                                                                     ("solver_order", 2), ("solver_type", "heun")),
                                     stochastic=True),
    "dpmpp_3m_sde": SamplerSpec("DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),
                                                                ("solver_order", 3)), stochastic=True),
    "dpmpp_sde": SamplerSpec("DPMSolverSDEScheduler", stochastic=True, note="needs the torchsde package"),
    "ddpm": SamplerSpec("DDPMScheduler", schedules=_INT_T, stochastic=True),
    "lcm": SamplerSpec("LCMScheduler", schedules=_INT_T, stochastic=True),
    "deis": SamplerSpec("DEISMultistepScheduler", (("solver_order", 3),)),
    "ddim": SamplerSpec("DDIMScheduler", schedules=_INT_T),
    # diffusers' bh1 divides by zero on a final sigma of 0 (NaN): end at sigma_min (~0.03) instead
    "uni_pc": SamplerSpec("UniPCMultistepScheduler", (("solver_type", "bh1"), ("final_sigmas_type", "sigma_min")),
                          note="ends at the model's sigma_min instead of 0 (diffusers' bh1 fails on 0)"),
    "uni_pc_bh2": SamplerSpec("UniPCMultistepScheduler", (("solver_type", "bh2"),)),
}
ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
           "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun", "dpmpp_3m_sde_gpu": "dpmpp_3m_sde"}
# Classes that follow a custom sigma list set after set_timesteps (single-step k-diffusion samplers).
SIGMA_OVERRIDE = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"}

_REJECTED_SCHEDULES = {
    "sgm_uniform": "diffusers has no 'linspace over steps+1, drop the last' spacing",
    "beta": "diffusers' use_beta_sigmas interpolates in sigma space, ComfyUI takes Beta quantiles over timesteps",
    "linear_quadratic": "no diffusers equivalent",
    "kl_optimal": "no diffusers equivalent",
}


def spec_for(sampler_name: str) -> SamplerSpec | None:
    return SAMPLERS.get(ALIASES.get(sampler_name, sampler_name))


def supported_pairs() -> dict[str, list[str]]:
    """{sampler: [schedulers it supports]} for every runnable sampler (for docs and the UI)."""
    out = {}
    for name in SAMPLER_NAMES:
        s = spec_for(name)
        if s is not None and unsupported_reason(name, None) is None:
            out[name] = [x for x in SCHEDULER_NAMES if x in s.schedules or
                         (s.cls in SIGMA_OVERRIDE and x in ("karras", "exponential"))]
    return out


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def unsupported_reason(sampler_name: str, scheduler_name: str | None, custom_sigmas: bool = False) -> str | None:
    """None if the pair runs; else a clear message. ``scheduler_name`` None checks the sampler alone;
    ``custom_sigmas`` checks the sampler can follow an arbitrary sigma list (KarrasScheduler and the like)."""
    s = spec_for(sampler_name)
    works = ", ".join(n for n in SAMPLER_NAMES if spec_for(n) is not None)
    if s is None:
        if sampler_name in SAMPLER_NAMES:
            return (f"sampler '{sampler_name}' has no diffusers equivalent in Loom; supported samplers: {works}")
        return f"unknown sampler '{sampler_name}'"
    if s.cls == "DPMSolverSDEScheduler":
        if not _has_module("torchsde"):
            return f"sampler '{sampler_name}' needs the torchsde package (pip install torchsde)"
    if custom_sigmas:
        if s.cls not in SIGMA_OVERRIDE:
            return (f"sampler '{sampler_name}' cannot follow a custom sigma list in diffusers; use one of "
                    "euler, euler_ancestral, lms with this SIGMAS input")
        return None
    if scheduler_name is None:
        return None
    if scheduler_name in _REJECTED_SCHEDULES:
        return (f"scheduler '{scheduler_name}' is not supported ({_REJECTED_SCHEDULES[scheduler_name]}); "
                "use simple, normal, karras, exponential or ddim_uniform")
    if scheduler_name not in SCHEDULER_NAMES:
        return f"unknown scheduler '{scheduler_name}'"
    ok = scheduler_name in s.schedules or (s.cls in SIGMA_OVERRIDE and scheduler_name in ("karras", "exponential"))
    if not ok:
        allowed = [x for x in SCHEDULER_NAMES if x in s.schedules]
        return (f"sampler '{sampler_name}' ({s.cls}) supports only the schedulers {', '.join(allowed)}; "
                f"'{scheduler_name}' would need non-integer timesteps")
    return None


# ------------------------------------------------------------------------------------------ schedules
def comfy_timesteps(scheduler_name: str, steps: int, num_train: int = 1000) -> list[int] | None:
    """ComfyUI's exact integer timesteps for the integer schedules (descending), else None."""
    if scheduler_name == "simple":
        ss = num_train / steps
        return [num_train - 1 - int(k * ss) for k in range(steps)]
    if scheduler_name == "ddim_uniform":
        ss = max(num_train // steps, 1)
        return list(range(1, num_train, ss))[::-1]
    return None


def _config(base: dict, spec: SamplerSpec, scheduler_name: str) -> dict:
    cfg = dict(base)
    cfg.update(dict(spec.kwargs))
    cfg["steps_offset"] = 0
    cfg["timestep_spacing"] = {"simple": "trailing", "ddim_uniform": "leading"}.get(scheduler_name, "linspace")
    if scheduler_name == "ddim_uniform":
        cfg["steps_offset"] = 1
    for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        cfg.pop(k, None)
    if spec.cls not in SIGMA_OVERRIDE or spec.cls == "EulerDiscreteScheduler":
        if scheduler_name == "karras":
            cfg["use_karras_sigmas"] = True
        elif scheduler_name == "exponential":
            cfg["use_exponential_sigmas"] = True
    return cfg


@dataclass
class Plan:
    """Everything needed to rebuild one schedule: sampler/scheduler names and the full step count, or a custom
    sigma list. Sampling runs steps ``[start, end)`` of it."""
    sampler_name: str
    scheduler_name: str | None
    steps: int
    sigmas: tuple | None = None   # custom sigmas (descending, ending in 0), when not from a named scheduler


def make_scheduler(plan: Plan, model_config: dict, device="cpu"):
    """A fresh diffusers scheduler for ``plan`` with ``set_timesteps`` already called."""
    import diffusers
    import numpy as np
    import torch

    why = unsupported_reason(plan.sampler_name, plan.scheduler_name, custom_sigmas=plan.sigmas is not None)
    if why:
        raise ValueError(why)
    spec = spec_for(plan.sampler_name)
    cls = getattr(diffusers, spec.cls)
    sched_name = plan.scheduler_name or "normal"
    cfg = _config(model_config, spec, sched_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    sched = cls.from_config({k: v for k, v in cfg.items() if k in accepted or k in ("num_train_timesteps",)})
    set_params = set(inspect.signature(sched.set_timesteps).parameters)
    exact_ts = comfy_timesteps(sched_name, plan.steps, sched.config.num_train_timesteps)

    if plan.sigmas is not None or (spec.cls in SIGMA_OVERRIDE and spec.cls != "EulerDiscreteScheduler"
                                   and sched_name in ("karras", "exponential", "simple", "ddim_uniform")):
        # Single-step k-samplers: compute the sigma list with EulerDiscreteScheduler, then hand it over.
        helper_cfg = _config(model_config, SAMPLERS["euler"], sched_name)
        helper = diffusers.EulerDiscreteScheduler.from_config(helper_cfg)
        if plan.sigmas is not None:
            helper.set_timesteps(sigmas=list(plan.sigmas), device=device)
        elif exact_ts is not None:
            helper.set_timesteps(timesteps=exact_ts, device=device)
        else:
            helper.set_timesteps(plan.steps, device=device)
        if spec.cls == "EulerDiscreteScheduler":
            return helper
        sched.set_timesteps(len(helper.timesteps), device=device)
        sched.sigmas = helper.sigmas.to(sched.sigmas.dtype)
        sched.timesteps = helper.timesteps.clone()
        return sched
    if exact_ts is not None and "timesteps" in set_params and not cfg.get("use_karras_sigmas") \
            and not cfg.get("use_exponential_sigmas"):
        sched.set_timesteps(timesteps=exact_ts, device=device)
    else:
        sched.set_timesteps(plan.steps, device=device)
    return sched


def is_k_space(sched) -> bool:
    """True for schedulers whose latents are x0 + sigma*noise (Euler family); False for VP-space ones
    (DDIM, DPM-Solver, UniPC, ...) whose latents are sqrt(a)*x0 + sqrt(1-a)*noise."""
    v = sched.init_noise_sigma
    return float(v) != 1.0


def sigma_of(sched, t) -> float:
    """Sigma at (possibly fractional) training timestep ``t``, interpolating log-sigma like ComfyUI."""
    import math

    ac = sched.alphas_cumprod
    t = float(t)
    t = min(max(t, 0.0), len(ac) - 1.0)
    lo, hi = int(math.floor(t)), int(math.ceil(t))
    s = lambda i: math.log(((1 - float(ac[i])) / float(ac[i])) ** 0.5)
    w = t - lo
    return math.exp((1 - w) * s(lo) + w * s(hi))


def plan_sigmas(plan: Plan, model_config: dict) -> list[float]:
    """The sigma list (descending, ending in 0, length steps+1) a plan walks, for SIGMAS outputs and display."""
    sched = make_scheduler(plan, model_config)
    if hasattr(sched, "sigmas") and is_k_space(sched) and getattr(sched, "order", 1) == 1:
        return [float(x) for x in sched.sigmas]
    ts = list(sched.timesteps)[:: getattr(sched, "order", 1)]
    return [sigma_of(sched, t) for t in ts] + [0.0]
