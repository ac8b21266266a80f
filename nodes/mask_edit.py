"""Mask editing (ComfyUI's names and semantics): feather edges, crop, threshold, colour to mask.
MASK is (B,H,W) float, 1 = masked; a (H,W) mask is taken as a batch of one."""
from __future__ import annotations

from engine.node import MAX_RESOLUTION, Float, Int, Node, Output, Socket

from .mask_ops import _mask3


class FeatherMask(Node):
    """Fades the mask linearly to 0 over ``left``/``top``/``right``/``bottom`` pixels from each edge (the outermost
    pixel keeps 1/n of its value)."""
    display_name = "FeatherMask"
    category = "mask"
    python_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"), *(Int(n, 0, min=0, max=MAX_RESOLUTION, step=1)
                                        for n in ("left", "top", "right", "bottom")))
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, left, top, right, bottom):
        out = _mask3(mask).clone().float()
        H, W = out.shape[-2:]
        left, right, top, bottom = min(left, W), min(right, W), min(top, H), min(bottom, H)
        for x in range(left):
            out[:, :, x] *= (x + 1.0) / left
        for x in range(right):
            out[:, :, -x - 1] *= (x + 1.0) / right
        for y in range(top):
            out[:, y, :] *= (y + 1.0) / top
        for y in range(bottom):
            out[:, -y - 1, :] *= (y + 1.0) / bottom
        return (out,)


class CropMask(Node):
    """Crops width x height pixels at (x, y) out of the mask."""
    display_name = "CropMask"
    category = "mask"
    python_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
              Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION, step=1))
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, x, y, width, height):
        return (_mask3(mask)[:, y:y + height, x:x + width].clone(),)


class ThresholdMask(Node):
    """1 where the mask is above ``value``, else 0."""
    display_name = "ThresholdMask"
    category = "mask"
    python_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"), Float("value", 0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, value):
        return ((_mask3(mask) > value).float(),)


class ImageColorToMask(Node):
    """1 where the pixel's 8-bit RGB equals ``color`` (0xRRGGBB), else 0."""
    display_name = "ImageColorToMask"
    category = "mask"
    python_module = "comfy_extras.nodes_mask"
    inputs = (Socket("image", "IMAGE"), Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color"))
    outputs = (Output("MASK"),)

    def run(self, ctx, image, color):
        import torch

        t = (image[..., :3].clamp(0, 1) * 255.0).round().to(torch.int64)
        packed = (t[..., 0] << 16) + (t[..., 1] << 8) + t[..., 2]
        return ((packed == int(color)).float(),)


NODES = [FeatherMask, CropMask, ThresholdMask, ImageColorToMask]
