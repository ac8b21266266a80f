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
#: Qwen-Image VAE (= Wan 2.1's 16-channel VAE): per-channel normalisation with the published ``latents_mean`` /
#: ``latents_std`` of its diffusers config (AutoencoderKLQwenImage's defaults; ComfyUI's Wan21 latent format), scale 1
QWEN_IMAGE = LatentFormat("qwen_image", 16, 1.0, 0.0, mean=(
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921), std=(
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160))

#: family name -> latent format (Z-Image and Lumina2 use FLUX.1's 16-channel VAE, "ae.safetensors").
BY_FAMILY = {"sd1": SD1, "sd2": SD1, "sdxl": SDXL, "sdxl_refiner": SDXL, "sd3": SD3, "flux": FLUX,
             "zimage": FLUX, "qwen_image": QWEN_IMAGE}


def latent_format(family: str) -> LatentFormat:
    """The latent format of ``family`` (KeyError names the known ones)."""
    try:
        return BY_FAMILY[family]
    except KeyError:
        raise KeyError(f"no latent format for family {family!r}; known: {sorted(BY_FAMILY)}") from None
