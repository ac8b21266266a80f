"""Empty latents of the transformer families: 16 channels at 1/8 (SD3/SD3.5, FLUX.1, Z-Image, Qwen-Image) and
FLUX.2's 128 channels at 1/16."""
from __future__ import annotations

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Int, Node, Output


class EmptySD3LatentImage(Node):
    """An empty (zero) batch of 16-channel latents, width/8 x height/8, for SD3, FLUX.1, Z-Image and Qwen-Image."""
    category = "latent/sd3"
    inputs = (Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("batch_size", 1, min=1, max=4096))
    outputs = (Output("LATENT"),)

    @classmethod
    def estimate_bytes(cls, width, height, batch_size, **_):
        return tensor_bytes(batch_size, 16, height // 8, width // 8)

    def run(self, ctx, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


class EmptyFlux2LatentImage(Node):
    """An empty (zero) batch of FLUX.2 latents: (batch, 128, height/16, width/16). The FLUX.2 VAE makes 32 channels
    at 1/8; the model works on its 2x2 patches, 4 x 32 = 128 channels at 1/16 (diffusers' Flux2Pipeline
    ``prepare_latents``). Loom has no FLUX.2 model yet: the latent is for graphs and latent nodes."""
    display_name = "Empty Flux 2 Latent"
    category = "latent"
    python_module = "comfy_extras.nodes_flux"
    inputs = (Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("batch_size", 1, min=1, max=4096))
    outputs = (Output("LATENT"),)

    @classmethod
    def estimate_bytes(cls, width, height, batch_size, **_):
        return tensor_bytes(batch_size, 128, height // 16, width // 16)

    def run(self, ctx, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 128, height // 16, width // 16])},)


NODES = [EmptySD3LatentImage, EmptyFlux2LatentImage]
