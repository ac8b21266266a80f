"""Latent formats per family: channels, the VAE latent -> model space affine map, preview factors.

Scale/shift values are the published VAE ``scaling_factor``/``shift_factor`` of each family's VAE (the
diffusers configs of SD1.5, SDXL, SD3 and FLUX.1 say the same). Preview factors exist for the 4-channel SD
latents (see nodes/sampler_core.py); 16-channel families preview with a channel-mean grey image until factors are
fitted for them.
"""
from __future__ import annotations

from .common import LatentFormat

SD1 = LatentFormat("sd1", 4, 0.18215)
SDXL = LatentFormat("sdxl", 4, 0.13025)
SD3 = LatentFormat("sd3", 16, 1.5305, 0.0609)
FLUX = LatentFormat("flux", 16, 0.3611, 0.1159)

#: family name -> latent format (Z-Image and Lumina2 use FLUX.1's 16-channel VAE, "ae.safetensors").
BY_FAMILY = {"sd1": SD1, "sd2": SD1, "sdxl": SDXL, "sdxl_refiner": SDXL, "sd3": SD3, "flux": FLUX,
             "zimage": FLUX}


def latent_format(family: str) -> LatentFormat:
    """The latent format of ``family`` (KeyError names the known ones)."""
    try:
        return BY_FAMILY[family]
    except KeyError:
        raise KeyError(f"no latent format for family {family!r}; known: {sorted(BY_FAMILY)}") from None
