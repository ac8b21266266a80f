"""Pixel-space compositing and masks: ImageCompositeMasked, ImagePadForOutpaint, ImageScaleToTotalPixels and
Loom's feathered mask blend. IMAGE is (B,H,W,C) float 0..1; MASK is (B,H,W), 1 = masked / foreground."""
from __future__ import annotations

import math

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output, Socket

from .latents import common_upscale

IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def repeat_batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` with its batch (dim 0) repeated and cut to ``n`` items (ComfyUI's repeat-to-batch-size)."""
    if t.shape[0] == n:
        return t
    return t.repeat((math.ceil(n / t.shape[0]),) + (1,) * (t.ndim - 1))[:n]


def _mask4(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()


def paste_masked(dest: torch.Tensor, src: torch.Tensor, x: int, y: int, mask: torch.Tensor | None) -> None:
    """Blends ``src`` (B,C,h,w) into ``dest`` (B,C,H,W) IN PLACE with its top-left corner at (x, y), cut at
    dest's edges, through ``mask`` (any MASK layout, resized to src; None = opaque). Callers pass a copy."""
    import torch
    import torch.nn.functional as F

    H, W = dest.shape[-2:]
    x, y = min(x, W), min(y, H)
    h, w = min(src.shape[2], H - y), min(src.shape[3], W - x)
    if h <= 0 or w <= 0:
        return
    m = torch.ones_like(src[:, :1]) if mask is None else repeat_batch(F.interpolate(
        _mask4(mask), size=src.shape[-2:], mode="bilinear", align_corners=False), src.shape[0])
    m, s = m[:, :, :h, :w], src[:, :, :h, :w]
    dest[:, :, y:y + h, x:x + w] = s * m + dest[:, :, y:y + h, x:x + w] * (1 - m)


class ImageCompositeMasked(Node):
    """Pastes ``source`` onto ``destination`` at (x, y), through ``mask`` if given (resized to the source)."""
    category = "image"
    inputs = (Socket("destination", "IMAGE"), Socket("source", "IMAGE"),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
              Boolean("resize_source", False), Socket("mask", "MASK", optional=True))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, destination, source, x, y, resize_source, mask=None):
        import torch
        import torch.nn.functional as F

        dest = destination.movedim(-1, 1).clone()
        src = repeat_batch(source.movedim(-1, 1), dest.shape[0])
        if resize_source:
            src = F.interpolate(src, size=dest.shape[-2:], mode="bilinear", align_corners=False)
        if src.shape[1] != dest.shape[1]:
            src = src[:, :dest.shape[1]] if src.shape[1] > dest.shape[1] else \
                torch.cat([src, torch.ones_like(src[:, :1]).expand(-1, dest.shape[1] - src.shape[1], -1, -1)], 1)
        paste_masked(dest, src, x, y, mask)
        return (dest.movedim(1, -1).contiguous(),)


class ImagePadForOutpaint(Node):
    """Pads an image with grey for outpainting; the mask is 1 on the new border and fades (quadratically) into
    the image over ``feathering`` pixels."""
    display_name = "Pad Image for Outpainting"
    category = "image"
    inputs = (Socket("image", "IMAGE"),
              Int("left", 0, min=0, max=MAX_RESOLUTION, step=8), Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("right", 0, min=0, max=MAX_RESOLUTION, step=8), Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"), Output("MASK"))

    @classmethod
    def estimate_bytes(cls, image, left, top, right, bottom, **_):
        B, H, W, C = image.shape
        return tensor_bytes(B, H + top + bottom, W + left + right, C) + tensor_bytes(H + top + bottom, W + left + right)

    def run(self, ctx, image, left, top, right, bottom, feathering):
        import torch

        B, H, W, C = image.shape
        out = torch.full((B, H + top + bottom, W + left + right, C), 0.5, dtype=torch.float32)
        out[:, top:top + H, left:left + W, :] = image
        mask = torch.ones((H + top + bottom, W + left + right), dtype=torch.float32)
        inner = torch.zeros((H, W), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < H and feathering * 2 < W:
            i = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
            j = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
            big_h, big_w = torch.full_like(i, H), torch.full_like(j, W)
            d = torch.minimum(torch.minimum(i if top else big_h, (H - i) if bottom else big_h),
                              torch.minimum(j if left else big_w, (W - j) if right else big_w))
            v = (feathering - d) / feathering
            inner = torch.where(d < feathering, v * v, inner)
        mask[top:top + H, left:left + W] = inner
        return (out, mask.unsqueeze(0))


class ImageScaleToTotalPixels(Node):
    """Resizes an image to about ``megapixels`` million pixels (x 1024 x 1024), keeping the aspect ratio."""
    category = "image/upscaling"
    inputs = (Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_UPSCALE_METHODS),
              Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, megapixels, **_):
        return tensor_bytes(image.shape[0], round(megapixels * 1024 * 1024) + 1, image.shape[3])

    def run(self, ctx, image, upscale_method, megapixels):
        H, W = image.shape[1], image.shape[2]
        s = math.sqrt(megapixels * 1024 * 1024 / (W * H))
        w, h = max(1, round(W * s)), max(1, round(H * s))
        out = common_upscale(image.movedim(-1, 1), w, h, upscale_method, "disabled")
        return (out.movedim(1, -1).contiguous(),)


def gaussian_blur_mask(m: torch.Tensor, radius: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,1,H,W) with sigma = radius / 2 (kernel 2*radius+1), edge-replicated."""
    import torch
    import torch.nn.functional as F

    if radius <= 0:
        return m
    r = int(math.ceil(radius))
    sigma = max(radius / 2.0, 1e-3)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    m = F.pad(m, (r, r, 0, 0), mode="replicate")
    m = F.conv2d(m, k.view(1, 1, 1, -1))
    m = F.pad(m, (0, 0, r, r), mode="replicate")
    return F.conv2d(m, k.view(1, 1, -1, 1))


class ImageMaskBlend(Node):
    """Loom: blends ``foreground`` over ``background`` through ``mask`` (1 = foreground) softened by a Gaussian
    feather of ``feather`` pixels - e.g. paste an inpainted result back into the original with invisible seams.
    The foreground is resized to the background if needed; the mask is resized to the background."""
    display_name = "Image Mask Blend (Feathered)"
    category = "image"
    inputs = (Socket("background", "IMAGE"), Socket("foreground", "IMAGE"), Socket("mask", "MASK"),
              Int("feather", 8, min=0, max=256, step=1, tooltip="Gaussian feather radius in pixels."),
              Boolean("invert_mask", False))
    outputs = (Output("IMAGE"), Output("MASK", "blend_mask"))

    def run(self, ctx, background, foreground, mask, feather, invert_mask):
        import torch.nn.functional as F

        bg = background.movedim(-1, 1)
        B, _, H, W = bg.shape
        fg = repeat_batch(foreground.movedim(-1, 1), B)
        if fg.shape[-2:] != (H, W):
            fg = F.interpolate(fg, size=(H, W), mode="bilinear", align_corners=False)
        m = _mask4(mask)
        if m.shape[-2:] != (H, W):
            m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
        m = repeat_batch(m, B)
        if invert_mask:
            m = 1.0 - m
        m = gaussian_blur_mask(m, feather).clamp(0, 1)
        out = fg[:, :bg.shape[1]] * m + bg * (1 - m)
        return (out.movedim(1, -1).contiguous(), m[:, 0].contiguous())


NODES = [ImageCompositeMasked, ImagePadForOutpaint, ImageScaleToTotalPixels, ImageMaskBlend]
