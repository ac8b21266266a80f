"""ComfyUI's core mask nodes: their declarations match ComfyUI's object_info and they do what the names say."""

import pytest
import torch

from engine.schema import object_info
from nodes import default_registry
from nodes.mask_ops import GrowMask, ImageToMask, InvertMask, MaskComposite, MaskToImage, SolidMask
from tests.comfy_spec import comfy_object_info

NAMES = ["SolidMask", "InvertMask", "MaskComposite", "ImageToMask", "MaskToImage", "GrowMask"]


@pytest.mark.parametrize("name", NAMES)
def test_declaration_matches_comfyui(name):
    ref, mine = comfy_object_info()[name], object_info(default_registry())[name]
    for field in ("input_order", "output", "output_name", "display_name", "category", "output_node"):
        assert mine[field] == ref[field], field
    for iname, rspec in ref["input"]["required"].items():
        spec = mine["input"]["required"][iname]
        assert spec[0] == rspec[0], iname
        opts, ropts = (spec[1] if len(spec) > 1 else {}), (rspec[1] if len(rspec) > 1 else {})
        for k in ("default", "min", "max", "step"):
            assert opts.get(k) == ropts.get(k), (iname, k)


def run(node, **kw):
    return node().run(None, **kw)[0]


def test_solid_and_invert():
    m = run(SolidMask, value=0.25, width=5, height=3)
    assert m.shape == (1, 3, 5) and torch.all(m == 0.25)
    assert torch.all(run(InvertMask, mask=m) == 0.75)


def test_composite_pastes_source_at_xy_and_only_changes_the_overlap():
    dest = torch.zeros(1, 8, 8)
    src = torch.ones(1, 4, 4)
    out = run(MaskComposite, destination=dest, source=src, x=6, y=2, operation="add")
    assert out[0, 2:6, 6:8].eq(1).all() and out.sum() == 8  # clipped at the right edge: 4 rows x 2 columns
    assert dest.sum() == 0  # the input is not modified
    half = torch.full((1, 8, 8), 0.5)
    assert run(MaskComposite, destination=half, source=src, x=0, y=0, operation="subtract")[0, 0, 0] == 0
    assert run(MaskComposite, destination=half, source=src * 0.4, x=0, y=0, operation="multiply")[0, 0, 0] == \
        pytest.approx(0.2)
    assert run(MaskComposite, destination=half, source=src, x=0, y=0, operation="xor")[0, 0, 0] == 0
    assert run(MaskComposite, destination=half, source=src * 0.2, x=0, y=0, operation="or")[0, 0, 0] == 1
    # batches: a single source is repeated over the destination batch
    assert run(MaskComposite, destination=torch.zeros(3, 8, 8), source=src, x=0, y=0, operation="add").shape == (3, 8, 8)


def test_image_to_mask_and_back():
    img = torch.rand(2, 4, 5, 3)
    m = run(ImageToMask, image=img, channel="green")
    assert torch.equal(m, img[..., 1])
    back = run(MaskToImage, mask=m)
    assert back.shape == (2, 4, 5, 3) and torch.equal(back[..., 2], m)
    with pytest.raises(ValueError, match="alpha"):
        run(ImageToMask, image=img, channel="alpha")


class _Ctx:
    def check_cancelled(self):
        pass


def test_grow_mask_grows_and_shrinks_with_square_or_tapered_corners():
    m = torch.zeros(1, 9, 9)
    m[0, 4, 4] = 1
    sq = GrowMask().run(_Ctx(), m, 2, False)[0]
    assert sq.sum() == 25  # a 5x5 square
    tap = GrowMask().run(_Ctx(), m, 2, True)[0]
    assert tap.sum() == 13 and tap[0, 2, 2] == 0 and tap[0, 4, 2] == 1  # a diamond of radius 2
    block = torch.zeros(1, 9, 9)
    block[0, 2:7, 2:7] = 1
    assert GrowMask().run(_Ctx(), block, -1, False)[0].sum() == 9  # 5x5 -> 3x3
    assert torch.equal(GrowMask().run(_Ctx(), block, 0, True)[0], block)
