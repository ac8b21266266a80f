"""ImageUpscaleWithModel: runs an UPSCALE_MODEL (a model-store ref from UpscaleModelLoader; the architectures
live in ``modelstore.kinds.upscale``). torch is imported when the node runs, not when the catalogue loads."""
from __future__ import annotations

from engine.node import Node, Output, Socket


class ImageUpscaleWithModel(Node):
    """Upscales an image with a super-resolution model (in 512-pixel tiles with 32-pixel overlap)."""
    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    inputs = (Socket("upscale_model", "UPSCALE_MODEL"), Socket("image", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, upscale_model, image):
        import torch

        from .vae import tiled

        um = upscale_model.get()
        p = next(um.model.parameters())
        x = image[..., :3].movedim(-1, 1).to(p.device, p.dtype).contiguous()
        with torch.no_grad():
            def fn(t):
                if ctx is not None:
                    ctx.check_cancelled()
                return um.model(t)
            out = tiled(fn, x, 512, 32, um.scale, 3)
        return (out.float().cpu().clamp(0, 1).movedim(1, -1).contiguous(),)


NODES = [ImageUpscaleWithModel]
