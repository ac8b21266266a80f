"""The values sampler nodes pass around: NOISE (a seed and Loom's noise interpolation), SAMPLER (a name plus its
options) and GUIDER (model, conditionings, cfg), and ComfyUI's initial noise. Kept apart from the sampler core so
both the SD path (sampler_core) and the flow-family path (family_sampling) use them without importing each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Noise:
    """NOISE: a seed (None for DisableNoise); optionally interpolated towards the noise of ``seed2`` by
    ``factor`` (slerp or lerp, Loom's NoiseInterpolate). Step noise of stochastic samplers follows ``seed``."""
    seed: int | None
    seed2: int | None = None
    factor: float = 0.0
    method: str = "slerp"

    def make(self, shape, batch_index=None) -> torch.Tensor:
        noise = make_noise(self.seed, shape, batch_index)[0]
        if self.seed2 is not None and self.factor != 0.0:
            other = make_noise(self.seed2, shape, batch_index)[0]
            if self.method == "lerp":
                noise = noise * (1 - self.factor) + other * self.factor
            else:
                from .latents import slerp

                noise = slerp(noise.flatten(1), other.flatten(1), self.factor, dim=1).reshape(noise.shape)
        return noise


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a sampler name from sampling.SAMPLER_NAMES plus its options (Sampler* parameter nodes)."""
    name: str
    options: tuple = ()


@dataclass
class Guider:
    """GUIDER: model + conditionings + cfg (BasicGuider: negative None, cfg 1). DualCFGGuider: ``cond2`` and
    ``cfg2`` (cfg between cond2 and negative), ``nested`` for its nested style."""
    model: Any
    positive: list
    negative: list | None
    cfg: float
    cond2: list | None = None
    cfg2: float = 1.0
    nested: bool = False


# ------------------------------------------------------------------------------------------------ noise
def make_noise(seed: int, shape, batch_index=None) -> tuple[torch.Tensor, None]:
    """ComfyUI's initial noise (sampling.noise.prepare_noise) for a latent of ``shape``; returns (noise, None)."""
    import torch

    from sampling import noise as snoise

    return snoise.prepare_noise(torch.empty(shape), int(seed) & 0xFFFF_FFFF_FFFF_FFFF, batch_index), None
