"""Self-Attention Guidance on the tiny SD1 UNet: scale 0 is the unpatched result exactly, a real scale changes it,
the capture processor is gone after the run (a later plain run equals the base), the pieces (blur, attention mask,
map size) do what they say, and a flow model refuses it."""
from __future__ import annotations

import threading

import pytest
import torch

from nodes import self_attention_guidance as S
from nodes.conditioning import encode_text
from nodes.sampler_core import Noise, sample
from nodes.samplers import Plan


def run(refs, model, steps=3, cfg=4.0):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    return sample(None, model, pos, neg, lat, Plan("euler", "normal", steps), 0, steps, cfg=cfg,
                  noise=Noise(2)).samples


def processor(refs):
    with refs[0].store.using(refs[0]) as (unet,):
        return unet.mid_block.attentions[0].transformer_blocks[0].attn1.processor


def test_scale_zero_is_the_base_and_a_scale_changes_it(refs):
    before = processor(refs)
    base = run(refs, refs[0])
    zero = S.SelfAttentionGuidance().run(None, refs[0], 0.0, 2.0)[0]
    assert torch.equal(run(refs, zero), base)
    sag = S.SelfAttentionGuidance().run(None, refs[0], 1.0, 2.0)[0]
    assert refs[0].option("sag") is None  # the input ref is unchanged
    guided = run(refs, sag)
    assert (guided - base).abs().max() > 1e-3
    assert processor(refs) is before  # the capture processor is removed after the run
    assert torch.equal(run(refs, refs[0]), base)
    # cfg 1 (no unconditional pass): the conditional pass's attention and x0 are used
    assert (run(refs, sag, cfg=1.0) - run(refs, refs[0], cfg=1.0)).abs().max() > 1e-3


def test_another_thread_is_unaffected(refs):
    base = run(refs, refs[0])
    sag = S.SelfAttentionGuidance().run(None, refs[0], 1.0, 2.0)[0]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("plain", run(refs, refs[0])))
    t.start()
    guided = run(refs, sag)
    t.join()
    assert torch.equal(out["plain"], base) and not torch.equal(guided, base)


def test_capture_records_the_attention_the_processor_computes(refs):
    with refs[0].store.using(refs[0]) as (unet,):
        attn = S._mid_attention(unet)
        x = torch.randn(2, 4, attn.to_q.in_features)
        plain = attn(x)
        calls = []
        with S.installed(unet), S.capturing(unet, calls):
            captured = attn(x)
        assert not isinstance(attn.processor, S._CapturingAttention)
        assert torch.allclose(captured, plain, atol=1e-5)  # the explicit softmax attention is the same attention
        assert len(calls) == 1 and calls[0].shape == (2, 4)
        assert torch.allclose(calls[0].sum(-1), torch.full((2,), 4.0), atol=1e-4)  # each query row sums to 1


def test_blur_mask_and_map_size():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    b = S.gaussian_blur(x, 1.0)
    assert abs(float(b.sum()) - 1.0) < 1e-5 and float(b[..., 4, 4]) < 0.2 and float(b[..., 4, 5]) > 0.05
    assert torch.equal(S.gaussian_blur(x, 0.0), x)
    assert S.map_size(8, 8, 4) == (2, 2) and S.map_size(9, 5, 6) == (3, 2)
    with pytest.raises(ValueError):
        S.map_size(8, 8, 5)
    received = torch.tensor([[2.0, 0.5, 1.0, 0.5]])  # only the first position gets more than average
    m = S.attention_mask(received, (4, 4), 3)
    assert m.shape == (1, 3, 4, 4) and float(m.sum()) == 3 * 4 and float(m[0, 0, :2, :2].min()) == 1.0


def test_area_conditionings_pick_the_full_area_rows(refs):
    """With area and full-area entries batched together, the map is read from the full-area entry's rows; with only
    area-limited unconditional entries the conditional pass's map is used."""
    from nodes.conditioning import ConditioningSetArea
    from nodes.sampler_core import Denoiser

    full, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    area = ConditioningSetArea().run(None, encode_text(refs[1], "a dog"), 64, 64, 0, 0, 1.0)[0]
    lat = {"samples": torch.zeros(1, 4, 16, 16)}

    def go(model, pos, negative):
        return sample(None, model, pos, negative, lat, Plan("euler", "normal", 2), 0, 2, cfg=4.0,
                      noise=Noise(2)).samples
    sag = S.SelfAttentionGuidance().run(None, refs[0], 1.0, 2.0)[0]
    zero = S.SelfAttentionGuidance().run(None, refs[0], 0.0, 2.0)[0]
    for pos, negative in ((area + full, neg), (full, area)):
        base = go(refs[0], pos, negative)
        assert torch.equal(go(zero, pos, negative), base)
        assert (go(sag, pos, negative) - base).abs().max() > 1e-3
    with refs[0].store.using(refs[0]) as (unet,):
        den = Denoiser(unet, area + full, neg, 4.0, 1, (16, 16), "cpu", 0.18215)
        # calls: (uncond, full cat) batched first (uncond jobs come first), then (area dog) alone
        assert den.call_rows(0, torch.tensor([500.0]), None) == (0, 0)
        assert den.call_rows(1, torch.tensor([500.0]), None) == (0, 1)
        assert Denoiser(unet, full + area, neg, 4.0, 1, (16, 16), "cpu", 0.18215).call_rows(1, 500, None) == (0, 1)
        neg_area = Denoiser(unet, full, area, 4.0, 1, (16, 16), "cpu", 0.18215)
        assert neg_area.call_rows(1, 500, None) == (1, 0)  # (area uncond) is its own first call
        assert neg_area.call_rows(0, 500, None) is None
