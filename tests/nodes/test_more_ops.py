"""Attention multiply patches, latent operations and animated image saving."""
from __future__ import annotations

import torch

from nodes import animation as A
from nodes import attention_multiply as AM
from nodes import latent_operations as LO


def test_attention_multiply_scales_exactly_the_named_projections(refs):
    store = refs[0].store
    patched = AM.UNetSelfAttentionMultiply().run(None, refs[0], 2.0, 1.0, 0.5, 1.0)[0]
    assert AM.UNetCrossAttentionMultiply().run(None, refs[0], 1.0, 1.0, 1.0, 1.0)[0] == refs[0]  # all 1: no patch
    with store.using(refs[0], patched) as (a, b):
        sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if ".attn1.to_q." in k:
            assert torch.allclose(sb[k], sa[k] * 2.0), k
        elif ".attn1.to_v." in k:
            assert torch.allclose(sb[k], sa[k] * 0.5), k
        else:
            assert torch.equal(sb[k], sa[k]), k
    clip = AM.CLIPAttentionMultiply().run(None, refs[1], 1.0, 3.0, 1.0, 1.0)[0]
    with store.using(refs[1], clip) as (ta, tb):
        ka, kb = ta.encoders[0].state_dict(), tb.encoders[0].state_dict()
    name = next(k for k in ka if k.endswith("self_attn.k_proj.weight"))
    assert torch.allclose(kb[name], ka[name] * 3.0)
    other = next(k for k in ka if k.endswith("self_attn.q_proj.weight"))
    assert torch.equal(kb[other], ka[other])


def test_latent_operations():
    g = torch.Generator().manual_seed(0)
    lat = {"samples": torch.randn(2, 4, 8, 8, generator=g) * 3, "batch_index": [0, 1]}
    tm = LO.LatentOperationTonemapReinhard().run(None, 1.0)[0]
    out = LO.LatentApplyOperation().run(None, lat, tm)[0]
    assert out["batch_index"] == [0, 1] and out["samples"].shape == lat["samples"].shape
    m0, m1 = lat["samples"].norm(dim=1), out["samples"].norm(dim=1)
    assert (m1 < m0).all()  # magnitudes compressed ...
    cos = torch.nn.functional.cosine_similarity(lat["samples"], out["samples"], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # ... directions kept
    # monotone: a larger magnitude stays larger
    for b in range(2):  # each latent is tone-mapped with its own statistics
        assert torch.equal(m0[b].flatten().argsort(), m1[b].flatten().argsort())
    sh = LO.LatentApplyOperation().run(None, lat, LO.LatentOperationSharpen().run(None, 2, 1.0, 0.0)[0])[0]
    assert torch.allclose(sh["samples"], lat["samples"], atol=1e-4)  # alpha 0: identity
    sh = LO.LatentApplyOperation().run(None, lat, LO.LatentOperationSharpen().run(None, 2, 1.0, 0.5)[0])[0]
    assert not torch.allclose(sh["samples"], lat["samples"], atol=1e-2)
    assert sh["samples"].shape == lat["samples"].shape


def test_animated_webp_and_png(tmp_path):
    from PIL import Image

    from engine import Env

    class Ctx:
        env = Env(input_dir=tmp_path, output_dir=tmp_path / "out", temp_dir=tmp_path)
    frames = torch.zeros(3, 8, 10, 3)
    for i in range(3):
        frames[i, :, :, i] = 1.0
    r = A.SaveAnimatedWEBP().run(Ctx(), frames, "anim", 5.0, True, 80, "fastest", prompt={"1": {}})
    path = tmp_path / "out" / r.ui["images"][0]["filename"]
    assert r.ui["animated"] == (True,) and path.suffix == ".webp"
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.size == (10, 8)
        im.seek(1)
        assert im.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
    r = A.SaveAnimatedPNG().run(Ctx(), frames, "anim", 4.0, 6, prompt={"1": {}}, extra_pnginfo={"workflow": {}})
    path = tmp_path / "out" / r.ui["images"][0]["filename"]
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.info.get("duration") == 250
        assert im.text["prompt"] == '{"1": {}}'
        im.seek(2)
        assert im.convert("RGB").getpixel((0, 0)) == (0, 0, 255)


def test_porter_duff_modes():
    from nodes.compositing import PorterDuffImageComposite as PD

    red, blue = torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    half, full = torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2)
    # premultiplied source: red at alpha 0.5 is (0.5, 0, 0)
    run = lambda mode, sa=half, da=full: PD().run(None, red * 0.5, sa, blue, da, mode)
    img, a = run("SRC_OVER")
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.5, 0.0, 0.5])) and torch.allclose(a, full)
    img, a = run("DST_OVER")
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    img, a = run("SRC_IN")
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.5, 0.0, 0.0])) and torch.allclose(a, half)
    img, a = run("XOR")
    assert torch.allclose(a, half)  # 0.5 x 0 + 1 x 0.5
    img, a = run("CLEAR")
    assert img.sum() == 0 and a.sum() == 0
    img, a = run("ADD", full, full)
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.5, 0.0, 1.0]))
    img, a = run("DST")
    assert torch.equal(img, blue) and torch.equal(a, full)
    # a smaller source is resized to the destination
    img, _ = PD().run(None, torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1), blue, full, "SRC")
    assert img.shape == blue.shape and img.eq(1).all()


def test_preview_any_through_the_engine(tmp_path):
    from engine import Env, Executor
    from nodes import default_registry
    from nodes.preview_any import as_text

    assert as_text({"a": [1, 2]}) == '{\n    "a": [\n        1,\n        2\n    ]\n}'
    assert as_text(torch.zeros(2, 3)) == "Tensor of shape (2, 3)"
    ex = Executor(default_registry(), Env(input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path))
    wf = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 42}},
          "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    r = ex.run(wf)
    assert r.status == "success", r.error
    assert r.outputs["2"]["text"] == ["42"]
