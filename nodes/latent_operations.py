"""Latent operations (ComfyUI's LATENT_OPERATION values): an operation node makes a function of a latent batch;
LatentApplyOperation applies it. Both operations act on each pixel's channel vector: its direction and its
magnitude (the "luminance" of a latent) are treated separately.

- TonemapReinhard: magnitudes m become m / (1 + m) after scaling so that ``(mean + 5 std) x multiplier`` of the
  magnitudes maps to 1 (and back), so large magnitudes are compressed smoothly; directions are kept.
- Sharpen: the direction field is sharpened with ImageSharpen's kernel (radius, sigma, alpha), magnitudes kept.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.node import Float, Int, Node, Output, Socket

MOD = "comfy_extras.nodes_latent"


@dataclass(frozen=True)
class TonemapReinhard:
    multiplier: float

    def __call__(self, latent):
        import torch

        mag = torch.linalg.vector_norm(latent, dim=1, keepdim=True)
        direction = latent / mag.clamp_min(1e-12)
        top = (mag.std(dim=(1, 2, 3), keepdim=True) * 5 + mag.mean(dim=(1, 2, 3), keepdim=True)) * self.multiplier
        m = mag / top
        return direction * (m / (m + 1.0)) * top


@dataclass(frozen=True)
class Sharpen:
    radius: int
    sigma: float
    alpha: float

    def __call__(self, latent):
        import torch.nn.functional as F

        from .image_ops import gaussian_kernel

        mag = latent.norm(dim=1, keepdim=True) + 1e-6
        direction = latent / mag
        size = 2 * self.radius + 1
        k = gaussian_kernel(size, self.sigma) * -(self.alpha * 10)
        k[self.radius, self.radius] += 1.0 - k.sum()
        c = latent.shape[1]
        x = F.pad(direction, (self.radius,) * 4, mode="reflect")
        sharp = F.conv2d(x, k.to(latent.dtype).expand(c, 1, size, size), groups=c)
        return sharp * mag


class LatentApplyOperation(Node):
    """Applies a latent operation to every latent of the batch."""
    display_name = "LatentApplyOperation"
    category = "latent/advanced/operations"
    python_module = MOD
    experimental = True
    inputs = (Socket("samples", "LATENT"), Socket("operation", "LATENT_OPERATION"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, operation):
        out = dict(samples)
        out["samples"] = operation(samples["samples"].float())
        return (out,)


class LatentOperationTonemapReinhard(Node):
    """Compresses large latent magnitudes smoothly (Reinhard tone mapping of each pixel's channel-vector length);
    tames over-saturated, burnt results of high guidance."""
    display_name = "LatentOperationTonemapReinhard"
    category = "latent/advanced/operations"
    python_module = MOD
    experimental = True
    inputs = (Float("multiplier", 1.0, min=0.0, max=100.0, step=0.01),)
    outputs = (Output("LATENT_OPERATION"),)

    def run(self, ctx, multiplier):
        return (TonemapReinhard(float(multiplier)),)


class LatentOperationSharpen(Node):
    """Sharpens the latent's direction field (an unsharp mask of radius, sigma and alpha like ImageSharpen)."""
    display_name = "LatentOperationSharpen"
    category = "latent/advanced/operations"
    python_module = MOD
    experimental = True
    inputs = (Int("sharpen_radius", 9, min=1, max=31, step=1), Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
              Float("alpha", 0.1, min=0.0, max=5.0, step=0.01))
    outputs = (Output("LATENT_OPERATION"),)

    def run(self, ctx, sharpen_radius, sigma, alpha):
        return (Sharpen(int(sharpen_radius), float(sigma), float(alpha)),)


NODES = [LatentApplyOperation, LatentOperationTonemapReinhard, LatentOperationSharpen]
