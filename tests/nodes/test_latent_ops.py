"""Latent arithmetic, transforms and batches behave as ComfyUI documents them."""
from __future__ import annotations

import pytest
import torch

from nodes import latent_ops as L


def lat(*shape, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(*shape, generator=g), **kw}


def test_add_subtract_multiply():
    a, b = lat(2, 4, 8, 8), lat(2, 4, 8, 8, seed=1)
    assert torch.allclose(L.LatentAdd().run(None, a, b)[0]["samples"], a["samples"] + b["samples"])
    assert torch.allclose(L.LatentSubtract().run(None, a, b)[0]["samples"], a["samples"] - b["samples"])
    assert torch.allclose(L.LatentMultiply().run(None, a, -0.5)[0]["samples"], a["samples"] * -0.5)
    # samples2 of another size is resized to samples1's, and samples1's other keys are kept
    c = L.LatentAdd().run(None, {**a, "batch_index": [3, 4]}, lat(2, 4, 16, 16))[0]
    assert c["samples"].shape == (2, 4, 8, 8) and c["batch_index"] == [3, 4]
    assert a["samples"].shape == (2, 4, 8, 8)  # input untouched


def test_interpolate_endpoints_and_norm():
    a, b = lat(1, 4, 4, 4), lat(1, 4, 4, 4, seed=1)
    one = L.LatentInterpolate().run(None, a, b, 1.0)[0]["samples"]
    zero = L.LatentInterpolate().run(None, a, b, 0.0)[0]["samples"]
    assert torch.allclose(one, a["samples"], atol=1e-5) and torch.allclose(zero, b["samples"], atol=1e-5)
    mid = L.LatentInterpolate().run(None, a, b, 0.5)[0]["samples"]
    expect = (a["samples"].norm(dim=1) + b["samples"].norm(dim=1)) / 2
    assert torch.allclose(mid.norm(dim=1), expect, atol=1e-4)


def test_flip_rotate_crop():
    s = torch.arange(16.0).reshape(1, 1, 4, 4)
    x = {"samples": s}
    assert torch.equal(L.LatentFlip().run(None, x, "x-axis: vertically")[0]["samples"][0, 0, 0], s[0, 0, 3])
    assert torch.equal(L.LatentFlip().run(None, x, "y-axis: horizontally")[0]["samples"][0, 0, :, 0], s[0, 0, :, 3])
    r = L.LatentRotate().run(None, x, "90 degrees")[0]["samples"][0, 0]
    assert torch.equal(r[0], s[0, 0, :, 0].flip(0))  # clockwise: the left column, bottom-up, becomes the top row
    assert torch.equal(L.LatentRotate().run(None, x, "none")[0]["samples"], s)
    big = lat(1, 4, 32, 32)
    c = L.LatentCrop().run(None, big, 128, 64, 64, 16)[0]["samples"]
    assert c.shape == (1, 4, 8, 16) and torch.equal(c, big["samples"][:, :, 2:10, 8:24])
    # a corner past the edge is clamped so that 8 latent pixels remain
    assert L.LatentCrop().run(None, big, 64, 64, 4000, 4000)[0]["samples"].shape == (1, 4, 8, 8)


def test_composite_masked():
    dst, src = {"samples": torch.zeros(1, 4, 8, 8)}, {"samples": torch.ones(1, 4, 4, 4)}
    out = L.LatentCompositeMasked().run(None, dst, src, 16, 8, False)[0]["samples"]
    assert out[0, 0, 1:5, 2:6].eq(1).all() and out.sum() == 4 * 16
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1  # left half of the source
    out = L.LatentCompositeMasked().run(None, dst, src, 0, 0, False, mask)[0]["samples"]
    assert out[0, 0, 0, 0] == 1 and out[0, 0, 0, 3] == 0
    assert L.LatentCompositeMasked().run(None, dst, src, 0, 0, True)[0]["samples"].eq(1).all()


def test_batch_and_seed_behaviour():
    a, b = lat(2, 4, 8, 8), lat(1, 4, 16, 16)
    out = L.LatentBatch().run(None, a, b)[0]
    assert out["samples"].shape == (3, 4, 8, 8) and out["batch_index"] == [0, 1, 0]
    fixed = L.LatentBatchSeedBehavior().run(None, {**a, "batch_index": [5, 6]}, "fixed")[0]
    assert fixed["batch_index"] == [5, 5]
    assert "batch_index" not in L.LatentBatchSeedBehavior().run(None, {**a, "batch_index": [5, 6]}, "random")[0]


def test_fixed_seed_behaviour_gives_the_batch_one_noise():
    from nodes.sampler_core import make_noise

    fixed = L.LatentBatchSeedBehavior().run(None, lat(3, 4, 4, 4), "fixed")[0]
    n, _ = make_noise(7, fixed["samples"].shape, fixed["batch_index"])
    assert torch.equal(n[0], n[2])


def test_concat_and_cut():
    a, b = lat(1, 4, 4, 4), lat(1, 4, 4, 2, seed=1)
    out = L.LatentConcat().run(None, a, b, "x")[0]["samples"]
    assert out.shape == (1, 4, 4, 6) and torch.equal(out[..., 4:], b["samples"])
    out = L.LatentConcat().run(None, a, b, "-x")[0]["samples"]
    assert torch.equal(out[..., :2], b["samples"])
    with pytest.raises(ValueError, match="video"):
        L.LatentConcat().run(None, a, b, "t")
    cut = L.LatentCut().run(None, a, "y", -1, 5)[0]["samples"]
    assert cut.shape == (1, 4, 1, 4) and torch.equal(cut, a["samples"][:, :, 3:])


def test_save_and_load_latent_round_trip(tmp_path):
    from engine import Env
    from safetensors import safe_open

    env = Env(input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp")

    class Ctx:
        pass
    ctx = Ctx()
    ctx.env = env
    a = lat(2, 4, 8, 8)
    res = L.SaveLatent().run(ctx, a, "latents/test", prompt={"1": {}})
    info = res.ui["latents"][0]
    path = tmp_path / "out" / info["subfolder"] / info["filename"]
    assert info["filename"] == "test_00001_.latent" and path.is_file()
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["prompt"] == '{"1": {}}'
    env.input_dir.mkdir()
    (env.input_dir / "x.latent").write_bytes(path.read_bytes())
    assert L._latent_files(env) == ["x.latent"]
    back = L.LoadLatent().run(ctx, "x.latent")[0]["samples"]
    assert torch.equal(back, a["samples"])


def test_add_noise_scales_by_the_sigma_range(refs):
    from nodes.sampler_core import Noise, make_noise

    class S:
        values = torch.tensor([3.0, 1.0])
    a = lat(1, 4, 4, 4)
    out = L.AddNoise().run(None, refs[0], Noise(9), S(), a)[0]["samples"]
    n, _ = make_noise(9, a["samples"].shape)
    sf = refs[0].meta["scaling_factor"]
    assert torch.allclose(out, (a["samples"] * sf + n * 2.0) / sf, atol=1e-5)  # eps model: z + noise x sigma
    assert torch.equal(L.AddNoise().run(None, refs[0], Noise(9), type("E", (), {"values": []})(), a)[0]["samples"],
                       a["samples"])
