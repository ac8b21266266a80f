"""Latent nodes: empty latents, resizing, blending, compositing, batch handling, noise masks, and Loom's latent
interpolation (slerp/lerp). Every node copies before changing: inputs are shared, immutable values."""
from __future__ import annotations

import math

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Socket

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


# ------------------------------------------------------------------------------------------ helpers
def slerp(a: torch.Tensor, b: torch.Tensor, t, dim: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation along ``dim`` (vectors normalised for the angle; magnitudes lerped)."""
    import torch

    na, nb = a.norm(dim=dim, keepdim=True), b.norm(dim=dim, keepdim=True)
    ua, ub = a / na.clamp_min(eps), b / nb.clamp_min(eps)
    dot = (ua * ub).sum(dim, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    t = torch.as_tensor(t, dtype=a.dtype)
    w1 = torch.where(so > eps, torch.sin((1 - t) * omega) / so.clamp_min(eps), 1 - t)
    w2 = torch.where(so > eps, torch.sin(t * omega) / so.clamp_min(eps), t)
    direction = w1 * ua + w2 * ub
    return direction * (na * (1 - t) + nb * t)


def _bislerp_axis(x: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    import torch

    n = x.shape[axis]
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) * n / size - 0.5
    pos = pos.clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    t = pos - lo
    a, b = x.index_select(axis, lo), x.index_select(axis, hi)
    shape = [1] * x.ndim
    shape[axis] = size
    return slerp(a, b, t.reshape(shape), dim=1)


def bislerp(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Bilinear resize where each interpolation is a slerp over the channel vector."""
    x = x.float()
    return _bislerp_axis(_bislerp_axis(x, w, 3), h, 2)


def common_upscale(x: torch.Tensor, w: int, h: int, method: str, crop: str) -> torch.Tensor:
    """Resize (B,C,H,W) to (w, h) with ComfyUI's methods; ``crop='center'`` first crops to the target aspect."""
    import torch.nn.functional as F

    if crop == "center":
        ow, oh = x.shape[3], x.shape[2]
        old_aspect, new_aspect = ow / oh, w / h
        x0 = y0 = 0
        if old_aspect > new_aspect:
            x0 = round((ow - ow * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y0 = round((oh - oh * (old_aspect / new_aspect)) / 2)
        x = x[:, :, y0:oh - y0, x0:ow - x0]
    if method == "bislerp":
        return bislerp(x, w, h)
    if method == "lanczos":
        return lanczos(x, w, h)
    kw = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(h, w), mode=method, **kw)


def lanczos(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Per-channel PIL Lanczos resize of (B,C,H,W) float images."""
    import torch

    import numpy as np
    from PIL import Image

    out = []
    for item in x.float().cpu():
        chans = [torch.from_numpy(np.asarray(Image.fromarray(c.numpy(), mode="F").resize((w, h), Image.LANCZOS)))
                 for c in item]
        out.append(torch.stack(chans))
    return torch.stack(out).to(x.dtype)


def _copy(latent: dict, samples: torch.Tensor, **kw) -> dict:
    out = dict(latent)
    out["samples"] = samples
    out.update(kw)
    return out


# ------------------------------------------------------------------------------------------ nodes
class EmptyLatentImage(Node):
    """Create a new batch of empty latent images to be denoised via sampling."""
    display_name = "Empty Latent Image"
    category = "latent"
    inputs = (Int("width", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="The width of the latent images in pixels."),
              Int("height", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="The height of the latent images in pixels."),
              Int("batch_size", 1, min=1, max=4096, tooltip="The number of latent images in the batch."))
    outputs = (Output("LATENT", tooltip="The empty latent image batch."),)

    @classmethod
    def estimate_bytes(cls, width, height, batch_size, **_):
        return tensor_bytes(batch_size, 4, height // 8, width // 8)

    def run(self, ctx, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentUpscale(Node):
    """Resizes a latent to width x height pixels (0 keeps the aspect ratio from the other side)."""
    display_name = "Upscale Latent"
    category = "latent"
    inputs = (Socket("samples", "LATENT"), Combo("upscale_method", UPSCALE_METHODS),
              Int("width", 512, min=0, max=MAX_RESOLUTION, step=8), Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
              Combo("crop", CROP_METHODS))
    outputs = (Output("LATENT"),)

    @classmethod
    def estimate_bytes(cls, samples, width, height, **_):
        b, c, h, w = samples["samples"].shape[:4]
        return tensor_bytes(b, c, height // 8 or h, width // 8 or w)

    def run(self, ctx, samples, upscale_method, width, height, crop):
        s = samples["samples"]
        if width == 0 and height == 0:
            return (_copy(samples, s),)
        if width == 0:
            height = max(64, height)
            width = max(64, round(s.shape[-1] * height / s.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(s.shape[-2] * width / s.shape[-1]))
        return (_copy(samples, common_upscale(s, width // 8, height // 8, upscale_method, crop)),)


class LatentUpscaleBy(Node):
    """Resizes a latent by a factor."""
    display_name = "Upscale Latent By"
    category = "latent"
    inputs = (Socket("samples", "LATENT"), Combo("upscale_method", UPSCALE_METHODS),
              Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01))
    outputs = (Output("LATENT"),)

    @classmethod
    def estimate_bytes(cls, samples, scale_by, **_):
        b, c, h, w = samples["samples"].shape[:4]
        return tensor_bytes(b, c, round(h * scale_by), round(w * scale_by))

    def run(self, ctx, samples, upscale_method, scale_by):
        s = samples["samples"]
        w, h = round(s.shape[-1] * scale_by), round(s.shape[-2] * scale_by)
        return (_copy(samples, common_upscale(s, w, h, upscale_method, "disabled")),)


class LatentBlend(Node):
    """samples1 * blend_factor + samples2 * (1 - blend_factor) (samples2 resized to samples1 if needed)."""
    display_name = "Latent Blend"
    category = "_for_testing"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Float("blend_factor", 0.5, min=0, max=1, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2, blend_factor):
        a, b = samples1["samples"], samples2["samples"]
        if a.shape != b.shape:
            b = common_upscale(b.movedim(0, 0), a.shape[3], a.shape[2], "bicubic", "center")
        return (_copy(samples1, a * blend_factor + b * (1 - blend_factor)),)


class LatentComposite(Node):
    """Pastes samples_from into samples_to at (x, y) pixels, optionally feathering the inner edges."""
    display_name = "Latent Composite"
    category = "latent"
    inputs = (Socket("samples_to", "LATENT"), Socket("samples_from", "LATENT"),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("feather", 0, min=0, max=MAX_RESOLUTION, step=8))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples_to, samples_from, x, y, feather):
        import torch

        x, y, feather = x // 8, y // 8, feather // 8
        s = samples_to["samples"].clone()
        src = samples_from["samples"]
        H, W = s.shape[2], s.shape[3]
        if y >= H or x >= W:
            return (_copy(samples_to, s),)
        h, w = min(src.shape[2], H - y), min(src.shape[3], W - x)
        src = src[:, :, :h, :w]
        if src.shape[0] != s.shape[0]:
            src = src[:1].expand(s.shape[0], -1, -1, -1) if src.shape[0] == 1 else src[: s.shape[0]]
        if feather == 0:
            s[:, :, y:y + h, x:x + w] = src
        else:
            m = torch.ones_like(src[:1, :1])
            for t in range(feather):
                f = (t + 1) / feather
                if y != 0:
                    m[:, :, t:t + 1, :] *= f
                if y + h < H:
                    m[:, :, h - 1 - t:h - t, :] *= f
                if x != 0:
                    m[:, :, :, t:t + 1] *= f
                if x + w < W:
                    m[:, :, :, w - 1 - t:w - t] *= f
            s[:, :, y:y + h, x:x + w] = src * m + s[:, :, y:y + h, x:x + w] * (1 - m)
        return (_copy(samples_to, s),)


class LatentFromBatch(Node):
    """Takes ``length`` items starting at ``batch_index`` from a latent batch (keeping their noise indices)."""
    display_name = "Latent From Batch"
    category = "latent/batch"
    inputs = (Socket("samples", "LATENT"), Int("batch_index", 0, min=0, max=63), Int("length", 1, min=1, max=64))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, batch_index, length):
        s = samples["samples"]
        i = min(s.shape[0] - 1, batch_index)
        n = min(s.shape[0] - i, length)
        out = dict(samples)
        out["samples"] = s[i:i + n].clone()
        if "noise_mask" in samples:
            m = samples["noise_mask"]
            if m.shape[0] == 1:
                out["noise_mask"] = m.clone()
            else:
                if m.shape[0] < s.shape[0]:
                    m = m.repeat(math.ceil(s.shape[0] / m.shape[0]), 1, 1, 1)[: s.shape[0]]
                out["noise_mask"] = m[i:i + n].clone()
        bi = samples.get("batch_index")
        out["batch_index"] = [bi[k] for k in range(i, i + n)] if bi is not None else list(range(i, i + n))
        return (out,)


class RepeatLatentBatch(Node):
    """Repeats a latent batch ``amount`` times (noise indices continue so copies get new noise)."""
    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    inputs = (Socket("samples", "LATENT"), Int("amount", 1, min=1, max=64))
    outputs = (Output("LATENT"),)

    @classmethod
    def estimate_bytes(cls, samples, amount, **_):
        n = amount * samples["samples"].numel() * samples["samples"].element_size()
        m = samples.get("noise_mask")
        return n + (amount * m.numel() * m.element_size() if m is not None else 0)

    def run(self, ctx, samples, amount):
        s = samples["samples"]
        out = dict(samples)
        out["samples"] = s.repeat((amount,) + (1,) * (s.ndim - 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            m = samples["noise_mask"]
            if m.shape[0] < s.shape[0]:
                m = m.repeat(math.ceil(s.shape[0] / m.shape[0]), 1, 1, 1)[: s.shape[0]]
            out["noise_mask"] = m.repeat((amount,) + (1,) * (m.ndim - 1))
        if "batch_index" in samples:
            bi = samples["batch_index"]
            off = max(bi) - min(bi) + 1
            out["batch_index"] = bi + [x + i * off for i in range(1, amount) for x in bi]
        return (out,)


class SetLatentNoiseMask(Node):
    """Attaches a mask to the latent: sampling only changes the masked area (1 = repaint)."""
    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    inputs = (Socket("samples", "LATENT"), Socket("mask", "MASK"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, mask):
        out = dict(samples)
        out["noise_mask"] = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).clone()
        return (out,)


class LatentSlerp(Node):
    """Loom: interpolates between two latents, spherically (slerp: keeps the norm of noise-like latents, so
    in-between points stay on the noise shell) or linearly. factor 0 gives samples1, 1 gives samples2. With
    batches of equal size item i pairs with item i; a single latent pairs with every item of the other."""
    display_name = "Latent Interpolate (Slerp/Lerp)"
    category = "latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Float("factor", 0.5, min=0.0, max=1.0, step=0.01), Combo("method", ["slerp", "lerp"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2, factor, method):
        a, b = samples1["samples"].float(), samples2["samples"].float()
        if a.shape[1:] != b.shape[1:]:
            b = common_upscale(b, a.shape[3], a.shape[2], "bilinear", "disabled")
        if a.shape[0] != b.shape[0]:
            n = max(a.shape[0], b.shape[0])
            a, b = a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)
        if method == "lerp":
            s = a * (1 - factor) + b * factor
        else:
            s = slerp(a.flatten(1), b.flatten(1), factor, dim=1).reshape(a.shape)
        out = {k: v for k, v in samples1.items() if k not in ("samples", "batch_index")}
        out["samples"] = s.contiguous()
        return (out,)


NODES = [EmptyLatentImage, LatentUpscale, LatentUpscaleBy, LatentBlend, LatentComposite, LatentFromBatch,
         RepeatLatentBatch, SetLatentNoiseMask, LatentSlerp]
