"""VAE nodes: pixels <-> latents. LATENT samples are the raw VAE latent (unscaled, like ComfyUI); the sampler
applies the model's scaling factor. Encoding takes the posterior mode (deterministic, like ComfyUI)."""
from __future__ import annotations

import math

from engine.budget import tensor_bytes
from engine.node import Int, Node, Output, Socket

RATIO = 8


def crop_to_multiple(pixels: torch.Tensor, m: int = RATIO) -> torch.Tensor:
    """Center-crop (B,H,W,C) so H and W are multiples of ``m`` (ComfyUI's VAE crop)."""
    h, w = (pixels.shape[1] // m) * m, (pixels.shape[2] // m) * m
    if h == pixels.shape[1] and w == pixels.shape[2]:
        return pixels
    y, x = (pixels.shape[1] % m) // 2, (pixels.shape[2] % m) // 2
    return pixels[:, y:y + h, x:x + w, :]


def _dev_dtype(m):
    p = next(m.parameters())
    return p.device, p.dtype


def encode(vae_ref, pixels: torch.Tensor) -> torch.Tensor:
    """(B,H,W,C) 0..1 -> raw latent (B,4,H/8,W/8), CPU float32."""
    import torch

    pixels = crop_to_multiple(pixels)[..., :3]
    with vae_ref.store.using(vae_ref) as (vae,):
        dev, dt = _dev_dtype(vae)
        x = (pixels.movedim(-1, 1) * 2.0 - 1.0).contiguous().to(dev, dt)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
    return z.to("cpu", torch.float32).contiguous()


def decode(vae_ref, samples: torch.Tensor) -> torch.Tensor:
    """raw latent -> (B,H,W,3) float32 0..1 on the CPU."""
    import torch

    with vae_ref.store.using(vae_ref) as (vae,):
        dev, dt = _dev_dtype(vae)
        with torch.no_grad():
            img = vae.decode(samples.contiguous().to(dev, dt), return_dict=False)[0]
    return (img.float() / 2 + 0.5).clamp(0, 1).movedim(1, -1).to("cpu").contiguous()


def _ramp(n: int, overlap: int, lo: bool, hi: bool) -> torch.Tensor:
    import torch

    w = torch.ones(n)
    o = min(overlap, n // 2)
    if o > 0:
        r = torch.arange(1, o + 1, dtype=torch.float32) / (o + 1)
        if lo:
            w[:o] = r
        if hi:
            w[n - o:] = r.flip(0)
    return w


def tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale: float, out_ch: int) -> torch.Tensor:
    """Apply ``fn`` (B,C,h,w)->(B,out_ch,h*scale,w*scale) over overlapping tiles of x, blending overlaps with
    linear ramps. ``tile``/``overlap`` are in x's pixels."""
    import torch

    B, _, H, W = x.shape
    tile = max(1, min(tile, max(H, W)))
    overlap = max(0, min(overlap, tile // 2))
    stride = max(1, tile - overlap)
    ys = list(range(0, max(H - tile, 0) + 1, stride))
    xs = list(range(0, max(W - tile, 0) + 1, stride))
    if ys[-1] + tile < H:
        ys.append(H - tile)
    if xs[-1] + tile < W:
        xs.append(W - tile)
    oh, ow = round(H * scale), round(W * scale)
    out = torch.zeros((B, out_ch, oh, ow))
    acc = torch.zeros((1, 1, oh, ow))
    for y in ys:
        for x0 in xs:
            t = fn(x[:, :, y:y + tile, x0:x0 + tile]).float().cpu()
            th, tw = t.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            ov = round(overlap * scale)
            wy = _ramp(th, ov, y > 0, y + tile < H)
            wx = _ramp(tw, ov, x0 > 0, x0 + tile < W)
            wgt = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy:oy + th, ox:ox + tw] += t * wgt
            acc[:, :, oy:oy + th, ox:ox + tw] += wgt
    return out / acc.clamp_min(1e-8)


class VAEDecode(Node):
    """Decodes latent images back into pixel space images."""
    display_name = "VAE Decode"
    category = "latent"
    inputs = (Socket("samples", "LATENT", tooltip="The latent to be decoded."),
              Socket("vae", "VAE", tooltip="The VAE model used for decoding the latent."))
    outputs = (Output("IMAGE", tooltip="The decoded image."),)

    @classmethod
    def estimate_bytes(cls, samples, **_):
        s = samples["samples"].shape  # decoded images: 8x the latent's size, 3 channels (video: per frame)
        return tensor_bytes(s[0] * (s[2] if len(s) == 5 else 1), s[-2] * 8, s[-1] * 8, 3)

    def run(self, ctx, samples, vae):
        s = samples["samples"]
        if s.ndim == 5:  # video latents: frames into the batch
            s = s.movedim(2, 1).reshape(-1, s.shape[1], s.shape[-2], s.shape[-1])
        return (decode(vae, s),)


class VAEEncode(Node):
    """Encodes images into latents (first three channels; cropped to a multiple of 8)."""
    display_name = "VAE Encode"
    category = "latent"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, pixels, vae):
        return ({"samples": encode(vae, pixels)},)


class VAEDecodeTiled(Node):
    """Decodes a latent in overlapping tiles (less memory for large images)."""
    display_name = "VAE Decode (Tiled)"
    category = "_for_testing"
    inputs = (Socket("samples", "LATENT"), Socket("vae", "VAE"),
              Int("tile_size", 512, min=64, max=4096, step=32), Int("overlap", 64, min=0, max=4096, step=32),
              Int("temporal_size", 64, min=8, max=4096, step=4,
                  tooltip="Only used for video VAEs: Amount of frames to decode at a time."),
              Int("temporal_overlap", 8, min=4, max=4096, step=4,
                  tooltip="Only used for video VAEs: Amount of frames to overlap."))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, samples, **_):
        s = samples["samples"].shape
        return tensor_bytes(s[0] * (s[2] if len(s) == 5 else 1), s[-2] * 8, s[-1] * 8, 3)

    def run(self, ctx, samples, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        s = samples["samples"]
        dec = lambda t: decode(vae, t).movedim(-1, 1)
        img = tiled(dec, s, tile_size // RATIO, overlap // RATIO, RATIO, 3)
        return (img.movedim(1, -1).clamp(0, 1).contiguous(),)


class VAEEncodeTiled(Node):
    """Encodes an image in overlapping tiles (less memory for large images)."""
    display_name = "VAE Encode (Tiled)"
    category = "_for_testing"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"),
              Int("tile_size", 512, min=64, max=4096, step=64), Int("overlap", 64, min=0, max=4096, step=32),
              Int("temporal_size", 64, min=8, max=4096, step=4,
                  tooltip="Only used for video VAEs: Amount of frames to encode at a time."),
              Int("temporal_overlap", 8, min=4, max=4096, step=4,
                  tooltip="Only used for video VAEs: Amount of frames to overlap."))
    outputs = (Output("LATENT"),)

    def run(self, ctx, pixels, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        px = crop_to_multiple(pixels)[..., :3].movedim(-1, 1)
        enc = lambda t: encode(vae, t.movedim(1, -1))
        z = tiled(enc, px, tile_size, overlap, 1 / RATIO, 4)
        return ({"samples": z.contiguous()},)


class VAEEncodeForInpaint(Node):
    """Encodes an image for inpainting: masked pixels become grey and the mask (grown by ``grow_mask_by``
    pixels) becomes the latent's noise mask."""
    display_name = "VAE Encode (for Inpainting)"
    category = "latent/inpaint"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"), Socket("mask", "MASK"),
              Int("grow_mask_by", 6, min=0, max=64, step=1))
    outputs = (Output("LATENT"),)

    def run(self, ctx, pixels, vae, mask, grow_mask_by):
        import torch
        import torch.nn.functional as F

        H, W = pixels.shape[1], pixels.shape[2]
        m = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(), size=(H, W), mode="bilinear")
        px = crop_to_multiple(pixels)[..., :3]
        m = crop_to_multiple(m.movedim(1, -1)).movedim(-1, 1)
        if grow_mask_by == 0:
            grown = m
        else:
            k = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            pad = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(F.conv2d(m.round(), k, padding=pad), 0, 1)[:, :, :m.shape[2], :m.shape[3]]
        keep = (1.0 - m.round()).squeeze(1).unsqueeze(-1)
        px = (px - 0.5) * keep + 0.5
        return ({"samples": encode(vae, px), "noise_mask": grown.round()},)


NODES = [VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled, VAEEncodeForInpaint]
