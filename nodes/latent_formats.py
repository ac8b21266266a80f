"""Empty latents of the transformer families: 16 channels at 1/8 (SD3/SD3.5, FLUX.1, Z-Image, Qwen-Image) and
FLUX.2's 128 channels at 1/16."""
from __future__ import annotations

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Int, Node, Output

SIZE_INPUTS = (Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
               Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
               Int("batch_size", 1, min=1, max=4096))


class _EmptyLatent(Node):
    """A zero latent of ``channels`` channels at 1/``down`` of the image size (not registered itself)."""
    channels: int
    down: int
    inputs = SIZE_INPUTS
    outputs = (Output("LATENT"),)

    @classmethod
    def _shape(cls, width, height, batch_size):
        return (batch_size, cls.channels, height // cls.down, width // cls.down)

    @classmethod
    def estimate_bytes(cls, width, height, batch_size, **_):
        return tensor_bytes(*cls._shape(width, height, batch_size))

    def run(self, ctx, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros(self._shape(width, height, batch_size))},)


class EmptySD3LatentImage(_EmptyLatent):
    """An empty (zero) batch of 16-channel latents, width/8 x height/8, for SD3, FLUX.1, Z-Image and Qwen-Image."""
    category = "latent/sd3"
    channels, down = 16, 8


class EmptyFlux2LatentImage(_EmptyLatent):
    """An empty (zero) batch of FLUX.2 latents: (batch, 128, height/16, width/16). The FLUX.2 VAE makes 32 channels
    at 1/8; the model works on its 2x2 patches, 4 x 32 = 128 channels at 1/16 (diffusers' Flux2Pipeline
    ``prepare_latents``). Loom has no FLUX.2 model yet: the latent is for graphs and latent nodes."""
    display_name = "Empty Flux 2 Latent"
    category = "latent"
    python_module = "comfy_extras.nodes_flux"
    channels, down = 128, 16


NODES = [EmptySD3LatentImage, EmptyFlux2LatentImage]
