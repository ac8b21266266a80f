"""Mask making and editing — ComfyUI's core mask nodes: SolidMask, InvertMask, MaskComposite, ImageToMask,
MaskToImage, GrowMask. MASK is (B,H,W) float 0..1 (1 = masked / repaint); IMAGE is (B,H,W,C) float 0..1."""
from __future__ import annotations

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output, Socket

from .masks import repeat_batch

COMPOSITE_OPS = ["multiply", "add", "subtract", "and", "or", "xor"]
CHANNELS = ["red", "green", "blue", "alpha"]


def _mask3(mask: torch.Tensor) -> torch.Tensor:
    """Any MASK layout ((H,W), (B,H,W), (B,1,H,W)) as (B,H,W) float32."""
    import torch

    return mask.reshape(-1, mask.shape[-2], mask.shape[-1]).to(torch.float32)


class SolidMask(Node):
    """A (1, height, width) mask filled with ``value``."""
    category = "mask"
    inputs = (Float("value", 1.0, min=0.0, max=1.0, step=0.01),
              Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION, step=1))
    outputs = (Output("MASK"),)

    @classmethod
    def estimate_bytes(cls, width, height, **_):
        return tensor_bytes(1, height, width)

    def run(self, ctx, value, width, height):
        import torch

        return (torch.full((1, height, width), float(value), dtype=torch.float32),)


class InvertMask(Node):
    """1 - mask."""
    category = "mask"
    inputs = (Socket("mask", "MASK"),)
    outputs = (Output("MASK"),)

    def run(self, ctx, mask):
        return (1.0 - _mask3(mask),)


class MaskComposite(Node):
    """Combines ``source`` into ``destination`` with its top-left corner at (x, y) pixels; only the overlap changes.
    multiply / add / subtract are clamped to 0..1; and / or / xor treat values >= 0.5 as set and give 0 or 1.
    A single-mask batch is repeated to the other's batch size."""
    category = "mask"
    inputs = (Socket("destination", "MASK"), Socket("source", "MASK"),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
              Combo("operation", COMPOSITE_OPS))
    outputs = (Output("MASK"),)

    def run(self, ctx, destination, source, x, y, operation):
        import torch

        dest, src = _mask3(destination), _mask3(source)
        n = max(dest.shape[0], src.shape[0])
        dest, src = repeat_batch(dest, n).clone(), repeat_batch(src, n)
        H, W = dest.shape[-2:]
        h, w = min(src.shape[-2], H - y), min(src.shape[-1], W - x)
        if h <= 0 or w <= 0:  # the source lies outside the destination
            return (dest,)
        d, s = dest[:, y:y + h, x:x + w], src[:, :h, :w]
        if operation == "multiply":
            r = d * s
        elif operation == "add":
            r = d + s
        elif operation == "subtract":
            r = d - s
        else:
            a, b = d >= 0.5, s >= 0.5
            r = {"and": a & b, "or": a | b, "xor": a ^ b}[operation].to(torch.float32)
        dest[:, y:y + h, x:x + w] = r.clamp(0.0, 1.0)
        return (dest,)


class ImageToMask(Node):
    """One channel of an image as a mask (alpha needs an RGBA image)."""
    display_name = "Convert Image to Mask"
    category = "mask"
    inputs = (Socket("image", "IMAGE"), Combo("channel", CHANNELS))
    outputs = (Output("MASK"),)

    def run(self, ctx, image, channel):
        import torch

        c = CHANNELS.index(channel)
        if c >= image.shape[-1]:
            raise ValueError(f"the image has {image.shape[-1]} channels, so it has no {channel} channel "
                             f"(alpha needs an RGBA image)")
        return (image[..., c].to(torch.float32).contiguous(),)


class MaskToImage(Node):
    """A mask as a grey RGB image (B,H,W,3)."""
    display_name = "Convert Mask to Image"
    category = "mask"
    inputs = (Socket("mask", "MASK"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx, mask):
        return (_mask3(mask).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),)


def _max3x3(m: torch.Tensor, cross: bool) -> torch.Tensor:
    """One step of grey dilation of (B,1,H,W) with a 3x3 square, or a plus-shaped ("tapered corners") kernel."""
    import torch
    import torch.nn.functional as F

    if not cross:
        return F.max_pool2d(m, 3, stride=1, padding=1)
    p = F.pad(m, (1, 1, 1, 1), value=float("-inf"))
    H, W = m.shape[-2:]
    shifts = [p[..., 1:H + 1, 1:W + 1], p[..., 0:H, 1:W + 1], p[..., 2:H + 2, 1:W + 1],
              p[..., 1:H + 1, 0:W], p[..., 1:H + 1, 2:W + 2]]
    return torch.stack(shifts).amax(0)


class GrowMask(Node):
    """Grows the mask by ``expand`` pixels (shrinks it when negative), one 3x3 step per pixel; with
    ``tapered_corners`` the step kernel is a plus sign, so corners grow rounded instead of square."""
    category = "mask"
    inputs = (Socket("mask", "MASK"), Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
              Boolean("tapered_corners", True))
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, expand, tapered_corners):
        m = _mask3(mask).unsqueeze(1)
        sign = 1.0 if expand >= 0 else -1.0  # erosion = dilation of the negated mask
        m = m * sign
        for _ in range(min(abs(expand), max(m.shape[-2:]))):  # more steps than the size change nothing
            ctx.check_cancelled()
            m = _max3x3(m, tapered_corners)
        return ((m * sign)[:, 0].contiguous(),)


NODES = [SolidMask, InvertMask, MaskComposite, ImageToMask, MaskToImage, GrowMask]
