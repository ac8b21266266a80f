"""Noise, exactly as ComfyUI draws it (pinned by tests/sampling/data/noise.safetensors).

- Initial noise (``prepare_noise``): ``torch.manual_seed(seed)`` then one CPU ``randn`` of the whole latent
  shape; with a LATENT ``batch_index`` list, ``max(index)+1`` separate (1, C, H, W) draws, rows picked by index.
- Step noise of the ancestral/SDE samplers that use plain Gaussian noise (``default_noise_sampler``): a fresh
  CPU generator seeded with the same seed, one ``randn`` of the latent's shape per call (so its first draw
  equals the initial noise of a batch-1 latent).
- Brownian noise (``BrownianTreeNoiseSampler``, dpmpp_sde / dpmpp_2m_sde / dpmpp_3m_sde): a torchsde
  Brownian tree over [sigma_min, sigma_max] seeded with the seed; a call (sigma, sigma_next) returns the
  Brownian increment over that interval divided by sqrt(|sigma_next - sigma|), i.e. unit-variance noise that
  is consistent however the interval is subdivided.
"""
from __future__ import annotations

import torch


def prepare_noise(latent: torch.Tensor, seed: int, batch_index=None) -> torch.Tensor:
    """Initial noise for ``latent`` (B, C, H, W), float32 on the CPU."""
    gen = torch.manual_seed(int(seed))
    if batch_index is None:
        return torch.randn(latent.size(), dtype=torch.float32, layout=latent.layout, generator=gen, device="cpu")
    inds = [int(i) for i in batch_index]
    uniq = sorted(set(inds))
    draws = {}
    for i in range(uniq[-1] + 1):
        n = torch.randn([1] + list(latent.size())[1:], dtype=torch.float32, layout=latent.layout, generator=gen,
                        device="cpu")
        if i in uniq:
            draws[i] = n
    return torch.cat([draws[i] for i in inds], dim=0)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """(sigma, sigma_next) -> standard normal noise shaped like x, from a generator seeded with ``seed``
    (on x's device; unseeded: torch's global generator)."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))

    def sample(sigma=None, sigma_next=None):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=gen)

    return sample


class BatchedBrownianTree:
    """One torchsde Brownian tree (or one per seed when ``seed`` is a list of batch-size length)."""

    def __init__(self, x, t0, t1, seed=None, cpu=True):
        import torchsde

        self.cpu_tree = cpu
        t0, t1, self.sign = self._sort(t0, t1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = torch.randint(0, 2 ** 63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        seeds = list(seed) if self.batched else [seed]
        if self.batched:
            w0 = w0[0]
        dev = "cpu" if cpu else x.device
        self.trees = [torchsde.BrownianTree(t0.to(dev), w0.to(dev), t1.to(dev), entropy=int(s), tol=1e-6,
                                            pool_size=24) for s in seeds]

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1):
        t0, t1, sign = self._sort(t0, t1)
        dev = t0.device
        if self.cpu_tree:
            w = torch.stack([tree(t0.cpu().float(), t1.cpu().float()).to(dev) for tree in self.trees])
        else:
            w = torch.stack([tree(t0, t1) for tree in self.trees])
        w = w * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """(sigma, sigma_next) -> unit-variance Brownian noise; ``transform`` maps sigma to the tree's time."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda v: v, cpu=True):
        self.transform = transform
        t0 = transform(torch.as_tensor(sigma_min))
        t1 = transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def __call__(self, sigma, sigma_next):
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()
