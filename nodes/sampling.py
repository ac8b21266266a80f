"""Sampling nodes: KSampler, KSamplerAdvanced, SamplerCustom(Advanced), the NOISE nodes and Loom's
SchedulerStepRange and NoiseInterpolate. All of them run nodes/sampler_core (the ``sampling`` package)."""
from __future__ import annotations

from engine.node import Boolean, Combo, Float, Int, Node, Output, Seed, Socket

from .sampler_core import Guider, Noise, SamplerChoice, out_latent, sample, sample_sigmas
from .samplers import SAMPLER_NAMES, SCHEDULER_NAMES, Plan, unsupported_reason

CFG = dict(min=0.0, max=100.0, step=0.1, round=0.01)


def _pair_check(sampler_name, scheduler):
    if not isinstance(sampler_name, str) or not isinstance(scheduler, str):
        return None  # linked inputs are checked when the node runs
    why = unsupported_reason(sampler_name, scheduler)
    if why:
        return {"scheduler" if why.startswith("unknown scheduler") else "sampler_name": why}
    return None


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
        from .family_sampling import is_flow_model

        if is_flow_model(model):  # SD3 / FLUX.1 / Z-Image on the sigma-space core
            from .family_sampling import sample as flow_sample

            samples = flow_sample(ctx, model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                                  sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)
            return (out_latent(latent_image, samples),)
        _check_run(sampler_name, scheduler)
        if denoise <= 0.0:
            return (out_latent(latent_image, latent_image["samples"]),)
        r = sample(ctx, model, positive, negative, latent_image, Plan(sampler_name, scheduler, steps), 0, 10 ** 9,
                   cfg=cfg, noise=Noise(seed), denoise=denoise)
        return (out_latent(latent_image, r.samples),)


class KSamplerAdvanced(Node):
    """KSampler with explicit step range: run steps [start_at_step, end_at_step) of a ``steps``-step schedule,
    optionally without adding noise and returning the leftover noise for a later sampler."""
    display_name = "KSampler (Advanced)"
    category = "sampling"
    inputs = (Socket("model", "MODEL"), Combo("add_noise", ["enable", "disable"]), Seed("noise_seed", tooltip=""),
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
        # ComfyUI: disabled noise still seeds the samplers' step noise with noise_seed
        noise = Noise(noise_seed) if add_noise == "enable" else _ZeroNoise(noise_seed)
        r = sample(ctx, model, positive, negative, latent_image, Plan(sampler_name, scheduler, steps),
                   start_at_step, end_at_step, cfg=cfg, noise=noise,
                   force_full_denoise=return_with_leftover_noise == "disable")
        return (out_latent(latent_image, r.samples),)


class _ZeroNoise(Noise):
    """No initial noise, but step noise seeded with ``seed`` (KSamplerAdvanced add_noise=disable)."""

    def make(self, shape, batch_index=None):
        import torch

        return torch.zeros(shape)


class RandomNoise(Node):
    """Noise drawn on the CPU from a seed, exactly as ComfyUI draws it."""
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


def _custom(ctx, guider: Guider, noise: Noise, sampler: SamplerChoice, sigmas, latent: dict):
    why = unsupported_reason(sampler.name, None)
    if why:
        raise ValueError(why)
    if sigmas is None or len(sigmas) <= 1:
        return out_latent(latent, latent["samples"]), out_latent(latent, latent["samples"])
    r = sample_sigmas(ctx, guider, sampler, sigmas, latent, noise=noise)
    return out_latent(latent, r.samples), out_latent(latent, r.denoised)


class SamplerCustom(Node):
    """Samples with an explicit sampler and sigmas. ``denoised_output`` is the last x0 prediction."""
    category = "sampling/custom_sampling"
    inputs = (Socket("model", "MODEL"), Boolean("add_noise", True), Seed("noise_seed", tooltip=""),
              Float("cfg", 8.0, **CFG), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("sampler", "SAMPLER"), Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def run(self, ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        noise = Noise(noise_seed) if add_noise else _ZeroNoise(noise_seed)
        return _custom(ctx, Guider(model, positive, negative, cfg), noise, sampler, sigmas, latent_image)


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
    and scheduler reproduce a single full run for single-step deterministic samplers (euler, heun, dpm_2, ...);
    multistep solvers restart their history at each range, and ancestral/SDE samplers restart their step noise."""
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
        noise = Noise(noise_seed) if add_noise and start_step == 0 else _ZeroNoise(noise_seed)
        r = sample(ctx, model, positive, negative, latent_image, Plan(sampler_name, scheduler, steps), start_step,
                   end, cfg=cfg, noise=noise, force_full_denoise=False)
        return (out_latent(latent_image, r.samples),)


NODES = [KSampler, KSamplerAdvanced, RandomNoise, DisableNoise, NoiseInterpolate, SamplerCustom,
         SamplerCustomAdvanced, SchedulerStepRange]
