"""Initial noise, raw randn streams and the in-sampler noise samplers against ComfyUI's fixtures (bit-exact)."""
import torch

from sampling.noise import BrownianTreeNoiseSampler, default_noise_sampler, prepare_noise

from .fixtures import noise_tensors


def _cases(prefix):
    return sorted(k for k in noise_tensors() if k.startswith(prefix))


def test_prepare_noise_every_seed_and_batch_layout():
    keys = _cases("prepare_noise/")
    assert len(keys) == 13
    for key in keys:
        parts = key.split("/")
        shape = [int(v) for v in parts[1].split("=")[1].split("x")]
        seed = int(parts[2].split("=")[1])
        inds = [int(v) for v in parts[3].split("=")[1].split("_")] if len(parts) > 3 else None
        got = prepare_noise(torch.zeros(shape), seed, inds)
        assert torch.equal(got, noise_tensors()[key]), key


def test_randn_streams():
    keys = _cases("randn/")
    assert len(keys) == 14
    for key in keys:
        parts = key.split("/")
        n = int(parts[2].split("=")[1])
        gen = torch.manual_seed(42)
        got = torch.randn(n, generator=gen)
        if len(parts) > 3:
            got = torch.cat([got, torch.randn(int(parts[3].split("=")[1]), generator=gen)])
        assert torch.equal(got, noise_tensors()[key]), key


def test_default_noise_sampler_continues_the_seeded_stream():
    ref = noise_tensors()["default_noise_sampler/seed=42/draws=3"]
    ns = default_noise_sampler(torch.zeros(1, 4, 8, 8), seed=42)
    got = torch.stack([ns(None, None) for _ in range(3)])
    assert torch.equal(got, ref)
    assert torch.equal(ref[0], noise_tensors()["prepare_noise/shape=1x4x8x8/seed=42"])


def test_brownian_tree_draws():
    t = noise_tensors()
    sig = t["brownian_tree_noise_sampler/seed=42/karras10_sigmas"]
    ref = t["brownian_tree_noise_sampler/seed=42/draws"]
    x = torch.zeros(1, 4, 8, 8)
    ns = BrownianTreeNoiseSampler(x, sig[sig > 0].min(), sig.max(), seed=42, cpu=True)
    got = torch.stack([ns(sig[i], sig[i + 1]) for i in range(9)])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
