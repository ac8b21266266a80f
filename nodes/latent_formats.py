"""Empty latents of the 16-channel families (SD3/SD3.5, FLUX.1, Z-Image: 8x downscale, 16 channels)."""
from __future__ import annotations

from engine.node import MAX_RESOLUTION, Int, Node, Output


class EmptySD3LatentImage(Node):
    """An empty (zero) batch of 16-channel latents, width/8 x height/8, for SD3, FLUX.1 and Z-Image."""
    category = "latent/sd3"
    inputs = (Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("batch_size", 1, min=1, max=4096))
    outputs = (Output("LATENT"),)

    def run(self, ctx, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


NODES = [EmptySD3LatentImage]
