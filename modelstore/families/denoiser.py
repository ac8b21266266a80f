"""The flow-model interface every transformer family's MODEL object implements (what ``ModelRef.get()`` returns
for a diffusion model loaded by UNETLoader / a family checkpoint)."""
from __future__ import annotations

import torch

from .common import FamilyPlan


class FlowDenoiser(torch.nn.Module):
    """Wraps a diffusers transformer (``self.module``) behind one call: ``velocity(x, sigma, cond) -> v``.

    ``x``: (B, C, H, W) latent in model space ((latent - shift) * scale), any float dtype; ``sigma``: (B,) float
    flow time in [0, 1] (x = (1 - sigma) x0 + sigma noise); ``cond``: dict with ``context`` (B, L, D) tensor, or a
    list of (L_i, D) tensors when ``ragged_context``; optional ``pooled`` (B, P) and ``guidance`` (B,); FLUX
    also ``control``: a callable ``control(denoiser, transformer_kwargs, (H, W)) -> extra transformer kwargs``
    (ControlNet residuals, nodes/flow_control.py).
    Returns float32 v with x0 = x - sigma * v (ComfyUI's CONST parametrisation)."""

    ragged_context = False  # True: context is a list of unpadded (L_i, D) tensors (Z-Image)
    needs_pooled = False
    guidance_embed = False

    def __init__(self, module, plan: FamilyPlan):
        super().__init__()
        self.module = module
        self.family = plan.family
        self.config = dict(plan.config)
        self.latent = plan.latent
        self.sampling = plan.sampling

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the non-fp8 parameters (fp8 Linear weights are up-cast per call)."""
        for p in self.module.parameters():
            if p.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
                return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def velocity(self, x, sigma, cond: dict):  # pragma: no cover - abstract
        raise NotImplementedError
