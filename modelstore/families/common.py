"""Shared pieces of the model families (SD3, Flux, Z-Image ...): key helpers, the family error, and the
flow-model adapter interface every transformer family implements.

Torch-free at import (diffusers/transformers are imported inside the build functions of each family).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import key_indices as indices  # noqa: F401  (re-exported for the family modules)
from ..tensorfile import CheckpointError

DIFFUSION_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")


class UnknownModelFile(CheckpointError):
    """A file's tensors match no known family. ``unmatched`` lists the probe keys that were looked for."""

    def __init__(self, name: str, role: str, sample_keys: list[str], known: list[str]):
        self.name, self.role, self.sample_keys, self.known = name, role, sample_keys, known
        keys = ", ".join(sample_keys[:8]) or "(no tensors)"
        super().__init__(f"{name}: not a {role} of a known family. Its tensors ({keys} ...) match none of the "
                         f"known families: {', '.join(known)}")


def strip_prefix(shapes: dict, prefixes=DIFFUSION_PREFIXES) -> tuple[str, dict]:
    """(prefix, {key without prefix: shape}) for the first prefix that any key starts with (ComfyUI split
    files have none; all-in-one checkpoints use ``model.diffusion_model.``)."""
    for p in prefixes:
        if p and any(k.startswith(p) for k in shapes):
            return p, {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    return "", dict(shapes)


def dequantize_scaled_fp8(sd: dict) -> dict:
    """ComfyUI's "scaled fp8" files (e.g. ``qwen_2.5_vl_7b_fp8_scaled.safetensors``): a ``scaled_fp8`` marker tensor,
    fp8 ``<layer>.weight`` with a float32 scalar ``<layer>.scale_weight`` (true weight = weight * scale_weight) and an
    optional ``<layer>.scale_input`` (activation scale, unused when computing in the weights' dequantised dtype).
    Returns ``sd`` with the scales folded into the weights (in the weights' loaded dtype) and the extra keys removed;
    other files are returned unchanged."""
    scales = [k for k in sd if k.endswith(".scale_weight")]
    if not scales and "scaled_fp8" not in sd:
        return sd
    out = {k: v for k, v in sd.items() if k != "scaled_fp8" and not k.endswith((".scale_weight", ".scale_input"))}
    for k in scales:
        w, s = k[:-len(".scale_weight")] + ".weight", sd[k]
        if w not in out:
            raise CheckpointError(f"scaled fp8: {k} scales {w}, which is not in the file")
        # a scalar: anything bigger would broadcast the weight into a larger tensor (or fail with torch's text)
        if s.numel() != 1 or not s.float().isfinite().all():
            raise CheckpointError(f"scaled fp8: {k} must be one finite number, got shape {tuple(s.shape)}"
                                  + ("" if s.numel() != 1 else f" value {s.float().item()}"))
        out[w] = (out[w].float() * s.float().reshape(())).to(out[w].dtype)
    return out


UNET_KEYS = ("input_blocks.0.0.weight", "out.2.weight")


def is_ldm_unet(shapes) -> bool:
    """True for a UNet-only file of the SD family (LDM keys, bare or under ``model.diffusion_model.``)."""
    return all(k in shapes or "model.diffusion_model." + k in shapes for k in UNET_KEYS)


def need(shapes, key: str, family: str):
    """The shape of ``key``, or a CheckpointError naming the family and the missing key."""
    if key not in shapes:
        raise CheckpointError(f"{family}: tensor {key} missing: cannot infer the model config")
    return shapes[key]


@dataclass(frozen=True)
class LatentFormat:
    """How a family's VAE latents relate to its diffusion model's space and to RGB.

    ``channels``: latent channels; model space = (latent - shift) * scale (ComfyUI's process_in), or, when
    ``mean``/``std`` are given (one value per channel: the Wan 2.1 / Qwen-Image VAE), (latent - mean) * scale / std;
    ``rgb``: rows of per-channel (R, G, B) factors for the cheap latent preview, ``rgb_bias`` its bias;
    ``downscale``: pixels per latent pixel."""
    name: str
    channels: int
    scale: float
    shift: float = 0.0
    rgb: tuple = ()
    rgb_bias: tuple | None = None
    downscale: int = 8
    mean: tuple = ()
    std: tuple = ()


@dataclass(frozen=True)
class FlowSampling:
    """Flow-matching model sampling (ComfyUI's CONST): x_sigma = (1 - sigma) x0 + sigma * noise, the model
    predicts a velocity v with x0 = x - sigma * v. ``kind`` 'discrete_flow' (SD3/AuraFlow: shift s maps
    t -> s t / (1 + (s - 1) t)) or 'flux' (exponential shift mu: t -> e^mu / (e^mu + 1/t - 1));
    ``multiplier``: timestep = sigma * multiplier as ComfyUI feeds it to the model."""
    kind: str = "discrete_flow"
    shift: float = 3.0
    multiplier: float = 1000.0


@dataclass
class FamilyPlan:
    """Everything known about a diffusion-model file before reading weights: ``family`` name, ``prefix`` of its
    keys in the file, diffusers ``config``, default model sampling and latent format."""
    family: str
    prefix: str
    config: dict
    sampling: FlowSampling
    latent: LatentFormat
    extra: dict = field(default_factory=dict)

    def latent_meta(self) -> tuple:
        """Ref meta pairs for a per-channel latent normalisation (``latents_mean``/``latents_std``), else ()."""
        lf = self.latent
        return (("latents_mean", lf.mean), ("latents_std", lf.std)) if lf.mean else ()
