"""The Qwen-Image VAE (``diffusers.AutoencoderKLQwenImage``: Wan 2.1's causal 3D VAE, 16 latent channels, 8x
spatial downscale) as a 2D image VAE, loaded from a standalone file by VAELoader.

Layouts read:
- ``wan``: ComfyUI's ``qwen_image_vae.safetensors`` = the original Wan 2.1 VAE keys (``encoder.conv1``,
  ``encoder.downsamples.N.residual.{0,2,3,6}``, ``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``, ``conv1``/``conv2``
  for the quant convs, ``decoder.upsamples.N``), converted by diffusers 0.42's ``convert_wan_vae_to_diffusers`` (the
  single-file mapping diffusers uses for AutoencoderKLWan; the Qwen-Image VAE has the same modules);
- ``qwen_diffusers``: diffusers' own ``AutoencoderKLQwenImage`` keys (``encoder.conv_in``, ``decoder.mid_block``...).
The converter handles the real structure only (4 levels, 2 residual blocks per level), so other structures are
refused with a clear error. Latent normalisation (per-channel mean/std) is the MODEL's latent format, not the VAE's.
"""
from __future__ import annotations

from ..tensorfile import CheckpointError

WAN_KEY = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_KEY = "decoder.mid_block.resnets.0.norm1.gamma"


def layout(shapes) -> str | None:
    """'wan' / 'qwen_diffusers' for a Qwen-Image (Wan 2.1) VAE file, else None."""
    if WAN_KEY in shapes:
        return "wan"
    if DIFFUSERS_KEY in shapes and len(shapes.get("encoder.conv_in.weight", ())) == 5:
        return "qwen_diffusers"
    return None


def config(shapes, name: str = "VAE") -> dict:
    """``AutoencoderKLQwenImage`` config from the file's shapes (either layout)."""
    wan = WAN_KEY in shapes
    conv_in = "encoder.conv1.weight" if wan else "encoder.conv_in.weight"
    down = "encoder.downsamples." if wan else "encoder.down_blocks."
    if conv_in not in shapes:
        raise CheckpointError(f"{name}: Qwen-Image VAE without {conv_in}")
    base = shapes[conv_in][0]
    n = 1 + max(int(k[len(down):].split(".")[0]) for k in shapes if k.startswith(down))
    if n != 11:  # 4 levels x 2 residual blocks + 3 resamples: the only structure the Wan converter maps
        raise CheckpointError(f"{name}: Qwen-Image / Wan 2.1 VAE with {n} encoder blocks; only the released structure "
                              "(4 levels of 2 residual blocks) is supported")
    res = "residual.2.weight" if wan else "conv1.weight"
    mult = [shapes[f"{down}{i}.{res}"][0] // base for i in (0, 3, 6, 9)]
    temporal = [f"{down}{i}.time_conv.weight" in shapes for i in (2, 5, 8)]
    z = shapes["conv2.weight" if wan else "post_quant_conv.weight"][0]
    return dict(base_dim=base, z_dim=z, dim_mult=mult, num_res_blocks=2, attn_scales=[], temperal_downsample=temporal)


def build(cfg: dict, sd: dict, layout_: str, device=None):
    """A ``QwenImageVAE`` (2D interface) over the diffusers module built from ``sd``."""
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from ..build import instantiate

    conv = convert_wan_vae_to_diffusers(dict(sd)) if layout_ == "wan" else dict(sd)
    return QwenImageVAE(instantiate(lambda: AutoencoderKLQwenImage(**cfg), conv, device))


def _module_base():
    import torch

    return torch.nn.Module


class _Posterior:
    def __init__(self, dist):
        self.dist = dist

    def mode(self):
        return self.dist.mode()[:, :, 0]

    def sample(self, generator=None):
        return self.dist.sample(generator)[:, :, 0]


class _Encoded:
    def __init__(self, dist):
        self.latent_dist = _Posterior(dist)


class QwenImageVAE(_module_base()):
    """The image interface of Loom's VAE nodes over a video VAE: ``encode(x)`` with x (B, 3, H, W) in -1..1 returns
    an object whose ``latent_dist.mode()`` is (B, 16, H/8, W/8); ``decode(z)`` returns ((B, 3, 8h, 8w),). Images are
    one-frame videos (T = 1)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.config = vae.config

    def encode(self, x, return_dict: bool = True):
        return _Encoded(self.vae.encode(x[:, :, None], return_dict=False)[0])

    def decode(self, z, return_dict: bool = False):
        return (self.vae.decode(z[:, :, None], return_dict=False)[0][:, :, 0],)
