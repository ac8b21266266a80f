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


def rescale_cfg(multiplier: float):
    """RescaleCFG (Lin et al. 2023, sec. 3.4): match the guided eps/v prediction's std to the conditional one's,
    blended by ``multiplier``; done on the v-prediction implied by the denoised estimates."""
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


def cfg_norm(strength: float):
    """CFGNorm: scale the guided estimate down so its per-pixel channel norm does not exceed the conditional
    one's (strength 1 = full correction)."""
    def fn(denoised, cond, uncond, cfg, x, sigma):
        pred_norm = torch.norm(cond, dim=1, keepdim=True)
        noise_norm = torch.norm(denoised, dim=1, keepdim=True)
        scale = (pred_norm / (noise_norm + 1e-8)).clamp(min=0.0, max=1.0)
        return denoised * (scale * strength + (1 - strength))
    return fn
