"""Conditioning arithmetic and regions, through the tiny SD1 model's sampler: masks, timestep ranges and areas in
percent change what the sampler does exactly as their options say."""
from __future__ import annotations

import torch

from nodes import conditioning as N
from nodes import conditioning_ops as O
from nodes.cond_regions import active, resolve_area
from nodes.conditioning import encode_text
from nodes.sampler_core import Noise, sample
from nodes.samplers import Plan


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-3)  # separate vs batched UNet calls: float rounding only


def run(refs, pos, neg, steps=4):
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    return sample(None, refs[0], pos, neg, lat, Plan("euler", "normal", steps), 0, steps, cfg=5.0,
                  noise=Noise(1)).samples


def test_average_and_concat(refs):
    a, b = encode_text(refs[1], "a cat"), encode_text(refs[1], "a dog " * 40)  # b: two 77-token windows
    full = O.ConditioningAverage().run(None, a, b, 1.0)[0]
    assert torch.equal(full[0][0], a[0][0])
    zero = O.ConditioningAverage().run(None, a, b, 0.0)[0]
    assert torch.equal(zero[0][0], b[0][0][:, :77])  # cut to conditioning_to's length
    half = O.ConditioningAverage().run(None, b, a, 0.5)[0][0][0]
    assert torch.allclose(half[:, 77:], b[0][0][:, 77:] * 0.5)  # a is zero-padded
    cat = O.ConditioningConcat().run(None, a, b)[0]
    assert cat[0][0].shape[1] == 77 + 154 and torch.equal(cat[0][0][:, 77:], b[0][0])
    assert a[0][0].shape[1] == 77  # inputs untouched


def test_mask_weights_the_entry(refs):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    dog = encode_text(refs[1], "a dog")
    alone = run(refs, pos, neg)
    none = O.ConditioningSetMask().run(None, dog, torch.zeros(1, 64, 64), 1.0, "default")[0]
    assert close(run(refs, pos + none, neg), alone)  # a zero mask adds nothing
    every = O.ConditioningSetMask().run(None, dog, torch.ones(64, 64), 1.0, "default")[0]
    both = N.ConditioningCombine().run(None, pos, dog)[0]
    assert close(run(refs, pos + every, neg), run(refs, both, neg))
    half = torch.zeros(1, 64, 64)
    half[:, :, 32:] = 1
    masked = run(refs, pos + O.ConditioningSetMask().run(None, dog, half, 1.0, "default")[0], neg)
    assert not close(masked, alone)
    bounds = O.ConditioningSetMask().run(None, dog, half, 1.0, "mask bounds")[0]
    assert resolve_area(bounds[0][1], 8, 8) == (8, 4, 0, 4)
    assert torch.isfinite(run(refs, pos + bounds, neg)).all()


def test_timestep_range_gates_the_entry(refs):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    dog = encode_text(refs[1], "a dog")
    assert active(0.0, 0.5, 999) and active(0.0, 0.5, 500) and not active(0.0, 0.5, 400)
    never = O.ConditioningSetTimestepRange().run(None, dog, 0.95, 1.0)[0]  # timesteps <= ~50: never in 4 steps
    assert close(run(refs, pos + never, neg), run(refs, pos, neg))
    always = O.ConditioningSetTimestepRange().run(None, dog, 0.0, 1.0)[0]
    assert close(run(refs, pos + always, neg), run(refs, pos + dog, neg))
    first = O.ConditioningSetTimestepRange().run(None, dog, 0.0, 0.5)[0]
    r = run(refs, pos + first, neg)
    assert not close(r, run(refs, pos, neg))
    assert not close(r, run(refs, pos + dog, neg))


def test_area_percentage_equals_area_in_pixels(refs):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    dog = encode_text(refs[1], "a dog")
    pct = O.ConditioningSetAreaPercentage().run(None, dog, 0.5, 0.5, 0.5, 0.0, 1.0)[0]
    px = N.ConditioningSetArea().run(None, dog, 32, 32, 32, 0, 1.0)[0]
    assert resolve_area(pct[0][1], 8, 8) == (4, 4, 0, 4)
    assert close(run(refs, pos + pct, neg), run(refs, pos + px, neg))
    strong = O.ConditioningSetAreaStrength().run(None, dog, 2.5)[0]
    assert strong[0][1]["strength"] == 2.5 and "strength" not in dog[0][1]


def test_positive_out_of_range_is_a_zero_x0(refs):
    """ComfyUI averages entries in x0 space and gives 0 where none is active: a positive on [0, 0.5] alone, cfg 1,
    leaves euler's last step with x0 = 0, so the result is exactly the zero latent (an eps of 0 would keep x)."""
    pos = encode_text(refs[1], "a cat")
    first = O.ConditioningSetTimestepRange().run(None, pos, 0.0, 0.5)[0]
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    out = sample(None, refs[0], first, None, lat, Plan("euler", "normal", 4), 0, 4, cfg=1.0, noise=Noise(1)).samples
    assert out.abs().max().item() < 1e-5
    full = sample(None, refs[0], pos, None, lat, Plan("euler", "normal", 4), 0, 4, cfg=1.0, noise=Noise(1)).samples
    assert full.abs().max().item() > 0.1
