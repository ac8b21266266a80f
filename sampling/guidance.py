"""Classifier-free guidance in denoised (x0) space, with the post-CFG hooks ComfyUI users patch in.

``GuidedDenoiser(predict, cfg)``: ``predict(x, sigma)`` returns (cond_denoised, uncond_denoised or None) for a
batch; the guided estimate is ``uncond + (cond - uncond) * cfg`` (Ho & Salimans 2022), optionally replaced by a
``cfg_function`` (RescaleCFG) and then passed through ``post_cfg`` hooks (CFGNorm). After each call
``uncond_denoised`` holds the unguided estimate (the CFG++ samplers re-noise with it).
"""
from __future__ import annotations

from typing import Callable

import torch


class GuidedDenoiser:
    def __init__(self, predict: Callable, cfg: float, cfg_function: Callable | None = None,
                 post_cfg: tuple = (), model_sampling=None):
        self.predict = predict
        self.cfg = float(cfg)
        self.cfg_function = cfg_function
        self.post_cfg = tuple(post_cfg)
        self.model_sampling = model_sampling
        self.uncond_denoised = None
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        cond, uncond = self.predict(x, sigma)
        if uncond is None:
            uncond = cond
            out = cond
        elif self.cfg_function is not None:
            out = self.cfg_function(cond=cond, uncond=uncond, cfg=self.cfg, x=x, sigma=sigma)
        else:
            out = uncond + (cond - uncond) * self.cfg
        for hook in self.post_cfg:
            out = hook(denoised=out, cond=cond, uncond=uncond, cfg=self.cfg, x=x, sigma=sigma)
        self.uncond_denoised = uncond
        return out


def rescale_cfg(multiplier: float, flow: bool = False):
    """RescaleCFG (Lin et al. 2023, sec. 3.4): match the std of the guided prediction to the conditional one's,
    blended by ``multiplier``, in the space of the network's own prediction, derived from the denoised estimates.

    EPS/V models (``flow`` False): the VP v-prediction v = alpha*eps - sigma_vp*x0 of k-diffusion's sigma.
    Flow-matching (CONST) models (``flow`` True): the velocity v = (x - x0) / sigma the network predicts; as v is
    affine in x0 with the same coefficients for cond and guided, this is x0 = x - (x - x0_cfg) * k with
    k = multiplier * std(x - x0_cond) / std(x - x0_cfg) + (1 - multiplier), per batch item (no division by sigma)."""
    if flow:
        def flow_fn(cond, uncond, cfg, x, sigma):
            guided = uncond + (cond - uncond) * cfg
            ro_pos = torch.std(x - cond, dim=tuple(range(1, cond.ndim)), keepdim=True)
            ro_cfg = torch.std(x - guided, dim=tuple(range(1, cond.ndim)), keepdim=True)
            k = multiplier * (ro_pos / ro_cfg) + (1.0 - multiplier)
            return x - (x - guided) * k
        return flow_fn

    def fn(cond, uncond, cfg, x, sigma):
        s = sigma.reshape(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        sc = (s * s + 1.0) ** 0.5
        # v-space: v = alpha*eps - sigma_vp*x0 with alpha = 1/sc, sigma_vp = s/sc, eps = (x - x0)/s
        to_v = lambda x0: (x - x0) / s / sc - (s / sc) * x0
        v_cond, v_unc = to_v(cond), to_v(uncond)
        v_cfg = v_unc + cfg * (v_cond - v_unc)
        ro_pos = torch.std(v_cond, dim=(1, 2, 3), keepdim=True)
        ro_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
        v_rescaled = v_cfg * (ro_pos / ro_cfg)
        v_final = multiplier * v_rescaled + (1 - multiplier) * v_cfg
        # back to x0: x0 = alpha*x_vp - sigma_vp*v, x_vp = x / sc
        return (x / sc) / sc - (s / sc) * v_final
    return fn


def dual_cfg(cond1, cond2, negative, cfg: float, cfg2: float, nested: bool) -> tuple:
    """DualCFGGuider's combination of three denoised estimates -> (cond, uncond) for a GuidedDenoiser.

    regular: negative -> cond2 by ``cfg2``, then cond2 -> cond1 by ``cfg``; the result is final (uncond None; run the
    GuidedDenoiser with cfg 1). ``negative`` None (cfg2 == 1): cond2 itself is the base.
    nested: cond2 -> cond1 by ``cfg`` gives the cond, guided against ``negative`` by cfg2 (the GuidedDenoiser's
    cfg; uncond None when cfg2 == 1)."""
    if nested:
        return cond2 + (cond1 - cond2) * cfg, (negative if cfg2 != 1.0 else None)
    base = cond2 if negative is None or cfg2 == 1.0 else negative + (cond2 - negative) * cfg2
    return base + (cond1 - cond2) * cfg, None


def cfg_norm(strength: float):
    """CFGNorm: scale the guided estimate down so its per-pixel channel norm does not exceed the conditional
    one's (strength 1 = full correction)."""
    def fn(denoised, cond, uncond, cfg, x, sigma):
        pred_norm = torch.norm(cond, dim=1, keepdim=True)
        noise_norm = torch.norm(denoised, dim=1, keepdim=True)
        scale = (pred_norm / (noise_norm + 1e-8)).clamp(min=0.0, max=1.0)
        return denoised * (scale * strength + (1 - strength))
    return fn
