"""Sampling nodes: KSampler, KSamplerAdvanced, the decomposed SamplerCustom(Advanced) set, and Loom's
SchedulerStepRange and NoiseInterpolate. All of them run nodes/sampler_core.sample()."""
from __future__ import annotations

from engine.node import Boolean, Combo, Float, Int, Node, Output, Seed, Socket

from .sampler_core import Guider, Noise, SamplerChoice, Sigmas, out_latent, sample
from .samplers import SAMPLER_NAMES, SCHEDULER_NAMES, Plan, plan_sigmas, unsupported_reason

CFG = dict(min=0.0, max=100.0, step=0.1, round=0.01)


def _pair_check(sampler_name, scheduler):
    if not isinstance(sampler_name, str) or not isinstance(scheduler, str):
        return None  # linked inputs are checked when the node runs
    why = unsupported_reason(sampler_name, scheduler)
    if why:
        return {"scheduler" if "scheduler '" in why and why.startswith("scheduler") else "sampler_name": why}
    return None


def _sched_cfg(model) -> dict:
    return dict(model.meta.get("scheduler_config") or ())


def _check_run(sampler_name, scheduler):
    why = unsupported_reason(sampler_name, scheduler)
    if why:
        raise ValueError(why)


class KSampler(Node):
    """Uses the provided model, positive and negative conditioning to denoise the latent image."""
    category = "sampling"
    inputs = (Socket("model", "MODEL", tooltip="The model used for denoising the input latent."),
              Seed("seed"),
              Int("steps", 20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
              Float("cfg", 8.0, **CFG, tooltip="The Classifier-Free Guidance scale balances creativity and adherence "
                    "to the prompt. Higher values result in images more closely matching the prompt however too high "
                    "values will negatively impact quality."),
              Combo("sampler_name", SAMPLER_NAMES, tooltip="The algorithm used when sampling, this can affect the "
                    "quality, speed, and style of the generated output."),
              Combo("scheduler", SCHEDULER_NAMES, tooltip="The scheduler controls how noise is gradually removed to "
                    "form the image."),
              Socket("positive", "CONDITIONING", tooltip="The conditioning describing the attributes you want to "
                     "include in the image."),
              Socket("negative", "CONDITIONING", tooltip="The conditioning describing the attributes you want to "
                     "exclude from the image."),
              Socket("latent_image", "LATENT", tooltip="The latent image to denoise."),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01, tooltip="The amount of denoising applied, lower "
                    "values will maintain the structure of the initial image allowing for image to image sampling."))
    outputs = (Output("LATENT", tooltip="The denoised latent."),)

    @classmethod
    def check(cls, env, sampler_name=None, scheduler=None, **_):
        return _pair_check(sampler_name, scheduler)

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        _check_run(sampler_name, scheduler)
        if denoise <= 0.0:
            return (out_latent(latent_image, latent_image["samples"]),)
        total = steps if denoise >= 0.9999 else int(steps / denoise)
        plan = Plan(sampler_name, scheduler, total)
        r = sample(ctx, model, positive, negative, latent_image, plan, total - steps, total, cfg=cfg,
                   noise=Noise(seed), force_full_denoise=True)
        return (out_latent(latent_image, r.samples),)


class KSamplerAdvanced(Node):
    """KSampler with explicit step range: run steps [start_at_step, end_at_step) of a ``steps``-step schedule,
    optionally without adding noise and returning the leftover noise for a later sampler."""
    display_name = "KSampler (Advanced)"
    category = "sampling"
    inputs = (Socket("model", "MODEL"), Combo("add_noise", ["enable", "disable"]), Seed("noise_seed"),
              Int("steps", 20, min=1, max=10000), Float("cfg", 8.0, **CFG),
              Combo("sampler_name", SAMPLER_NAMES), Combo("scheduler", SCHEDULER_NAMES),
              Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("latent_image", "LATENT"), Int("start_at_step", 0, min=0, max=10000),
              Int("end_at_step", 10000, min=0, max=10000),
              Combo("return_with_leftover_noise", ["disable", "enable"]))
    outputs = (Output("LATENT"),)

    @classmethod
    def check(cls, env, sampler_name=None, scheduler=None, **_):
        return _pair_check(sampler_name, scheduler)

    def run(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        _check_run(sampler_name, scheduler)
        end = min(end_at_step, steps)
        if start_at_step >= end:
            return (out_latent(latent_image, latent_image["samples"]),)
        r = sample(ctx, model, positive, negative, latent_image, Plan(sampler_name, scheduler, steps),
                   start_at_step, end, cfg=cfg, noise=Noise(noise_seed if add_noise == "enable" else None),
                   force_full_denoise=return_with_leftover_noise == "disable")
        return (out_latent(latent_image, r.samples),)


class RandomNoise(Node):
    """Noise drawn on the CPU from a seed (per batch item)."""
    category = "sampling/custom_sampling/noise"
    inputs = (Seed("noise_seed", tooltip=""),)
    outputs = (Output("NOISE"),)

    def run(self, ctx, noise_seed):
        return (Noise(int(noise_seed)),)


class DisableNoise(Node):
    """No noise: sample the latent as it is (for latents that still hold leftover noise)."""
    category = "sampling/custom_sampling/noise"
    outputs = (Output("NOISE"),)

    def run(self, ctx):
        return (Noise(None),)


class NoiseInterpolate(Node):
    """Loom: noise between two seeds (slerp keeps it noise-like; lerp shrinks its norm mid-way). factor 0 is
    seed_a's noise, 1 is seed_b's. Walk factor from 0 to 1 to morph between two images."""
    display_name = "Noise Interpolate (Slerp/Lerp)"
    category = "sampling/custom_sampling/noise"
    inputs = (Seed("seed_a", tooltip=""), Seed("seed_b", tooltip=""),
              Float("factor", 0.5, min=0.0, max=1.0, step=0.01), Combo("method", ["slerp", "lerp"]))
    outputs = (Output("NOISE"),)

    def run(self, ctx, seed_a, seed_b, factor, method):
        return (Noise(int(seed_a), int(seed_b), float(factor), method),)


class KSamplerSelect(Node):
    """Selects a sampler by name."""
    category = "sampling/custom_sampling/samplers"
    inputs = (Combo("sampler_name", SAMPLER_NAMES),)
    outputs = (Output("SAMPLER"),)

    @classmethod
    def check(cls, env, sampler_name=None, **_):
        if isinstance(sampler_name, str):
            why = unsupported_reason(sampler_name, None)
            return {"sampler_name": why} if why else None
        return None

    def run(self, ctx, sampler_name):
        return (SamplerChoice(sampler_name),)


class BasicScheduler(Node):
    """The sigmas of a named scheduler for a model (denoise < 1 keeps the last ``steps`` of int(steps/denoise))."""
    category = "sampling/custom_sampling/schedulers"
    inputs = (Socket("model", "MODEL"), Combo("scheduler", SCHEDULER_NAMES), Int("steps", 20, min=1, max=10000),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    @classmethod
    def check(cls, env, scheduler=None, **_):
        if isinstance(scheduler, str):
            why = unsupported_reason("euler", scheduler)
            return {"scheduler": why} if why else None
        return None

    def run(self, ctx, model, scheduler, steps, denoise):
        import torch

        if denoise <= 0.0:
            return (Sigmas(torch.zeros(0), Plan("euler", scheduler, steps), steps, steps),)
        total = steps if denoise >= 0.9999 else int(steps / denoise)
        plan = Plan("euler", scheduler, total)
        sig = torch.tensor(plan_sigmas(plan, _sched_cfg(model)), dtype=torch.float32)
        return (Sigmas(sig[total - steps:], Plan(None, scheduler, total), total - steps, total),)


class KarrasScheduler(Node):
    """Karras et al. (2022) sigmas: rho-spaced between sigma_max and sigma_min, then 0. Only samplers that follow
    a custom sigma list in diffusers (euler, euler_ancestral, lms) can run them."""
    category = "sampling/custom_sampling/schedulers"
    inputs = (Int("steps", 20, min=1, max=10000),
              Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
              Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
              Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        import torch

        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        s = (hi + ramp * (lo - hi)) ** rho
        s = torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()
        return (Sigmas(s, Plan(None, None, steps, tuple(float(v) for v in s)), 0, steps),)


class SplitSigmas(Node):
    """Splits sigmas at ``step``: high_sigmas = steps [0, step), low_sigmas = the rest (they share sigma[step])."""
    category = "sampling/custom_sampling/sigmas"
    inputs = (Socket("sigmas", "SIGMAS"), Int("step", 0, min=0, max=10000))
    outputs = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def run(self, ctx, sigmas, step):
        v = sigmas.values
        k = min(step, max(len(v) - 1, 0))
        mid = min(sigmas.start + k, sigmas.end)
        hi = Sigmas(v[:step + 1].clone(), sigmas.plan, sigmas.start, mid)
        lo = Sigmas(v[step:].clone(), sigmas.plan, mid, sigmas.end)
        return (hi, lo)


class CFGGuider(Node):
    """Classifier-free guidance: model + positive/negative conditioning + cfg scale."""
    category = "sampling/custom_sampling/guiders"
    inputs = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Float("cfg", 8.0, **CFG))
    outputs = (Output("GUIDER"),)

    def run(self, ctx, model, positive, negative, cfg):
        return (Guider(model, positive, negative, float(cfg)),)


class BasicGuider(Node):
    """Conditioning only, no negative (cfg 1)."""
    category = "sampling/custom_sampling/guiders"
    inputs = (Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING"))
    outputs = (Output("GUIDER"),)

    def run(self, ctx, model, conditioning):
        return (Guider(model, conditioning, None, 1.0),)


def _custom(ctx, guider: Guider, noise: Noise, sampler: SamplerChoice, sigmas: Sigmas, latent: dict):
    if len(sigmas.values) <= 1 or sigmas.start >= sigmas.end:
        return out_latent(latent, latent["samples"]), out_latent(latent, latent["samples"])
    p = sigmas.plan
    plan = Plan(sampler.name, p.scheduler_name, p.steps, p.sigmas)
    why = unsupported_reason(sampler.name, p.scheduler_name, custom_sigmas=p.sigmas is not None)
    if why:
        raise ValueError(why)
    r = sample(ctx, guider.model, guider.positive, guider.negative, latent, plan, sigmas.start, sigmas.end,
               cfg=guider.cfg, noise=noise, force_full_denoise=False)
    return out_latent(latent, r.samples), out_latent(latent, r.denoised)


class SamplerCustom(Node):
    """Samples with an explicit sampler and sigmas. ``denoised_output`` is the last x0 prediction."""
    category = "sampling/custom_sampling"
    inputs = (Socket("model", "MODEL"), Boolean("add_noise", True), Seed("noise_seed", tooltip=""),
              Float("cfg", 8.0, **CFG), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("sampler", "SAMPLER"), Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def run(self, ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        return _custom(ctx, Guider(model, positive, negative, cfg), Noise(noise_seed if add_noise else None),
                       sampler, sigmas, latent_image)


class SamplerCustomAdvanced(Node):
    """Samples with explicit noise, guider, sampler and sigmas."""
    category = "sampling/custom_sampling"
    inputs = (Socket("noise", "NOISE"), Socket("guider", "GUIDER"), Socket("sampler", "SAMPLER"),
              Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def run(self, ctx, noise, guider, sampler, sigmas, latent_image):
        return _custom(ctx, guider, noise, sampler, sigmas, latent_image)


class SchedulerStepRange(Node):
    """Loom: runs steps [start_step, end_step) of one ``steps``-step schedule, so a graph can change prompt,
    model or mask between ranges. Noise is added only when the range starts at step 0 (and add_noise is on);
    a range that ends before the last step returns the latent with its leftover noise, ready for the next range;
    the range that ends at the last step returns the finished latent. Chained ranges with the same seed, sampler
    and scheduler reproduce a single full run for single-step samplers (euler, euler_ancestral, ddim, ...);
    multistep solvers restart their history at each range."""
    display_name = "Scheduler Step Range"
    category = "sampling"
    inputs = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("latent_image", "LATENT"), Seed("noise_seed"), Boolean("add_noise", True),
              Int("steps", 20, min=1, max=10000), Float("cfg", 8.0, **CFG),
              Combo("sampler_name", SAMPLER_NAMES), Combo("scheduler", SCHEDULER_NAMES),
              Int("start_step", 0, min=0, max=10000), Int("end_step", 10000, min=0, max=10000))
    outputs = (Output("LATENT"),)

    @classmethod
    def check(cls, env, sampler_name=None, scheduler=None, **_):
        return _pair_check(sampler_name, scheduler)

    def run(self, ctx, model, positive, negative, latent_image, noise_seed, add_noise, steps, cfg, sampler_name,
            scheduler, start_step, end_step):
        _check_run(sampler_name, scheduler)
        end = min(end_step, steps)
        if start_step >= end:
            return (out_latent(latent_image, latent_image["samples"]),)
        noise = Noise(noise_seed) if add_noise and start_step == 0 else None
        r = sample(ctx, model, positive, negative, latent_image, Plan(sampler_name, scheduler, steps), start_step,
                   end, cfg=cfg, noise=noise, force_full_denoise=False)
        return (out_latent(latent_image, r.samples),)


NODES = [KSampler, KSamplerAdvanced, RandomNoise, DisableNoise, NoiseInterpolate, KSamplerSelect, BasicScheduler,
         KarrasScheduler, SplitSigmas, CFGGuider, BasicGuider, SamplerCustom, SamplerCustomAdvanced,
         SchedulerStepRange]
