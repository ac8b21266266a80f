"""MODEL patches that change how a model is sampled: its parameterisation and sigma schedule
(ModelSampling*), and guidance post-processing (RescaleCFG, CFGNorm). They return the same weights with an
option on the MODEL ref; nodes/sampler_core reads it (sampling.model_sampling.from_spec)."""
from __future__ import annotations

from engine.node import Boolean, Combo, Float, Int, Node, Output, Socket

CAT = "advanced/model"
_SHIFT = dict(min=0.0, max=100.0, step=0.01)


class ModelSamplingDiscrete(Node):
    """Discrete 1000-step schedule with the given prediction type (eps, v_prediction, lcm, x0, img_to_img);
    zsnr rescales it to zero terminal SNR (Lin et al. 2023)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
              Boolean("zsnr", False))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, zsnr):
        spec = ("lcm", bool(zsnr)) if sampling == "lcm" else ("discrete", sampling, bool(zsnr))
        return (model.with_options(model_sampling=spec),)


class ModelSamplingContinuousEDM(Node):
    """Continuous log-uniform sigmas in [sigma_min, sigma_max] with EDM, v or eps prediction
    (edm_playground_v2.5: EDM with sigma_data 0.5)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""),
              Combo("sampling", ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]),
              Float("sigma_max", 120.0, min=0.0, max=1000.0, step=0.001, round=False),
              Float("sigma_min", 0.002, min=0.0, max=1000.0, step=0.001, round=False))
    outputs = (Output("MODEL"),)

    @classmethod
    def check(cls, env, sampling=None, **_):
        if sampling == "cosmos_rflow":
            return {"sampling": "cosmos_rflow needs the Cosmos model family, which Loom does not load"}
        return None

    def run(self, ctx, model, sampling, sigma_max, sigma_min):
        kind, sd = {"v_prediction": ("v_prediction", 1.0), "edm": ("edm", 1.0), "edm_playground_v2.5": ("edm", 0.5),
                    "eps": ("eps", 1.0)}[sampling]
        return (model.with_options(model_sampling=("edm", kind, float(sigma_min), float(sigma_max), sd)),)


class ModelSamplingContinuousV(Node):
    """Continuous v-prediction with sigmas in [sigma_min, sigma_max] (timestep = atan(sigma) 2/pi)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Combo("sampling", ["v_prediction"]),
              Float("sigma_max", 500.0, min=0.0, max=1000.0, step=0.001, round=False),
              Float("sigma_min", 0.03, min=0.0, max=1000.0, step=0.001, round=False))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, sigma_max, sigma_min):
        return (model.with_options(model_sampling=("continuous_v", float(sigma_min), float(sigma_max))),)


class ModelSamplingSD3(Node):
    """Rectified flow with a time shift (SD3: sigma = shift t / (1 + (shift - 1) t), timestep = 1000 sigma)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Float("shift", 3.0, **_SHIFT))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, shift):
        return (model.with_options(model_sampling=("flow", float(shift), 1000.0)),)


class ModelSamplingAuraFlow(Node):
    """Rectified flow with a time shift and timestep = sigma (AuraFlow, Lumina, Z-Image)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Float("shift", 1.73, **_SHIFT))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, shift):
        return (model.with_options(model_sampling=("flow", float(shift), 1.0)),)


class ModelSamplingFlux(Node):
    """Flux's resolution-dependent shift: linear in the number of 16x16 image tokens from base_shift (256
    tokens) to max_shift (4096 tokens)."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Float("max_shift", 1.15, **_SHIFT),
              Float("base_shift", 0.5, **_SHIFT),
              Int("width", 1024, min=16, max=16384, step=8), Int("height", 1024, min=16, max=16384, step=8))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, max_shift, base_shift, width, height):
        from sampling.model_sampling import flux_shift_for

        shift = flux_shift_for(width, height, max_shift, base_shift)
        return (model.with_options(model_sampling=("flux", float(shift))),)


class RescaleCFG(Node):
    """Rescales the guided prediction's standard deviation to the conditional one's (Lin et al. 2023),
    blended by ``multiplier``; counters over-exposure at high cfg, mostly for v-prediction models."""
    category = CAT
    inputs = (Socket("model", "MODEL", tooltip=""), Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, multiplier):
        return (model.with_options(rescale_cfg=float(multiplier)),)


class CFGNorm(Node):
    """Caps the guided x0 estimate's per-pixel norm at the conditional one's (strength 1 = full cap)."""
    category = "advanced/guidance"
    inputs = (Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=100.0, step=0.01))
    outputs = (Output("MODEL", "patched_model"),)

    def run(self, ctx, model, strength):
        return (model.with_options(cfg_norm=float(strength)),)


NODES = [ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV, ModelSamplingSD3,
         ModelSamplingAuraFlow, ModelSamplingFlux, RescaleCFG, CFGNorm]
