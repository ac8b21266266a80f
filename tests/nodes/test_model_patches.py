"""FreeU, FreeU_V2 and Perturbed-Attention Guidance on the tiny SD1 UNet: neutral settings change nothing, real
settings change the result, the patched forward matches the formula, and other users of the shared UNet (another
thread, the unpatched ref) are unaffected."""
from __future__ import annotations

import threading

import torch

from nodes import model_patches as P
from nodes.conditioning import encode_text
from nodes.sampler_core import Noise, sample
from nodes.samplers import Plan


def run(refs, model, steps=2):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    return sample(None, model, pos, neg, lat, Plan("euler", "normal", steps), 0, steps, cfg=4.0,
                  noise=Noise(2)).samples


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_fourier_filter():
    x = torch.randn(1, 2, 8, 8)
    assert torch.allclose(P.fourier_filter(x, 1, 1.0), x, atol=1e-5)
    y = P.fourier_filter(x, 1, 0.0)  # the DC term (and its 2x2 neighbours) removed
    assert abs(float(y.mean())) < 1e-5 and not torch.allclose(y, x)


def test_freeu_neutral_and_active(refs):
    base = run(refs, refs[0])
    neutral = P.FreeU().run(None, refs[0], 1.0, 1.0, 1.0, 1.0)[0]
    assert close(run(refs, neutral), base)
    for node in (P.FreeU(), P.FreeU_V2()):
        patched = node.run(None, refs[0], 1.4, 1.6, 0.9, 0.2)[0]
        assert refs[0].option("freeu") is None  # the input ref is unchanged
        assert not close(run(refs, patched), base)
    assert close(run(refs, refs[0]), base)  # the hooks stay on the shared UNet but act only when asked


def test_freeu_decoder_input_matches_the_formula(refs):
    store = refs[0].store
    with store.using(refs[0]) as (unet,):
        P._install_freeu(unet)
        res = unet.up_blocks[0].resnets[0]  # h = 64 channels = 2 x base (32): b2/s2 apply
        seen = {}
        handle = res.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone()))
        x = torch.randn(1, 128, 2, 2)
        temb = torch.randn(1, unet.time_embedding.linear_2.out_features)
        with P._flag("freeu", unet, (1.0, 1.5, 1.0, 0.5, False, 32)):
            res(x, temb)
        handle.remove()
        want = torch.cat([x[:, :32] * 1.5, x[:, 32:64], P.fourier_filter(x[:, 64:], 1, 0.5)], 1)
        assert torch.allclose(seen["x"], want, atol=1e-5)


def test_pag_changes_guidance_only_when_on(refs):
    base = run(refs, refs[0])
    assert close(run(refs, P.PerturbedAttentionGuidance().run(None, refs[0], 0.0)[0]), base)
    pag = P.PerturbedAttentionGuidance().run(None, refs[0], 3.0)[0]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("plain", run(refs, refs[0])))
    patched = run(refs, pag)
    t.start()
    t.join()
    assert not close(patched, base)
    assert close(out["plain"], base)  # another thread with the plain model is unaffected


def test_differential_diffusion(refs):
    g = torch.Generator().manual_seed(3)
    start = torch.randn(1, 4, 8, 8, generator=g)

    def inpaint(model, mask):
        pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
        lat = {"samples": start, "noise_mask": mask}
        return sample(None, model, pos, neg, lat, Plan("euler", "normal", 4), 0, 4, cfg=4.0, noise=Noise(2)).samples

    dd = P.DifferentialDiffusion().run(None, refs[0])[0]
    binary = torch.zeros(1, 1, 8, 8)
    binary[..., 4:] = 1
    # a 0/1 mask is the same mask at every threshold in (0, 1]: the same result as plain inpainting
    assert close(inpaint(dd, binary), inpaint(refs[0], binary))
    soft = torch.linspace(0, 1, 8).reshape(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    a, b = inpaint(dd, soft), inpaint(refs[0], soft)
    assert not close(a, b)
    assert torch.allclose(a[..., 0], start[..., 0], atol=1e-5)  # mask 0: never repainted
    from nodes.model_patches import mask_patch
    from nodes.sampler_core import model_sampling_of

    ms = model_sampling_of(refs[0])
    sig = torch.tensor([14.6, 5.0, 1.0, 0.0])
    fn = mask_patch(dd, ms, sig)
    m = torch.tensor([0.1, 0.5, 0.9])
    assert fn(sig[:1], m).tolist() == [0.0, 0.0, 0.0]  # first step: nothing below threshold 1
    late = fn(sig[2:3], m).tolist()
    assert late[0] == 0.0 and late[2] == 1.0
    half = P.DifferentialDiffusion().run(None, refs[0], 0.5)[0]
    assert torch.allclose(mask_patch(half, ms, sig)(sig[:1], m), m * 0.5)
