"""Loom's sampling core: k-diffusion's sigma-space formulation (Karras et al. 2022) with ComfyUI's samplers,
schedulers and model samplings, written from the papers and pinned by ComfyUI 0.3.75's numbers
(tests/sampling/data). Torch only; no imports from nodes/, service/ or cli."""
from .ksampler import run
from .model_sampling import from_spec
from .registry import SAMPLER_NAMES, sampler_function
from .schedulers import SCHEDULER_NAMES, calculate_sigmas, ksampler_sigmas

__all__ = ["run", "from_spec", "SAMPLER_NAMES", "sampler_function", "SCHEDULER_NAMES", "calculate_sigmas",
           "ksampler_sigmas"]
