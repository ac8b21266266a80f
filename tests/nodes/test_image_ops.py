"""Image transforms, batches, post-processing, mask editing and the Canny preprocessor."""
from __future__ import annotations

import torch

from nodes import image_ops as I
from nodes import mask_edit as M
from nodes.preprocessors import Canny


def img(b=1, h=4, w=6, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_batch_crop_flip_rotate():
    a, b = img(2), img(1, 8, 12, seed=1)
    out = I.ImageBatch().run(None, a, b)[0]
    assert out.shape == (3, 4, 6, 3) and torch.equal(out[:2], a)
    assert torch.equal(I.ImageCrop().run(None, a, 2, 3, 1, 1)[0], a[:, 1:4, 1:3])
    assert I.ImageCrop().run(None, a, 10, 10, 100, 100)[0].shape == (2, 1, 1, 3)  # corner clamped
    assert torch.equal(I.ImageFlip().run(None, a, "x-axis: vertically")[0][:, 0], a[:, -1])
    assert torch.equal(I.ImageFlip().run(None, a, "y-axis: horizontally")[0][:, :, 0], a[:, :, -1])
    r = I.ImageRotate().run(None, a, "90 degrees")[0]
    assert r.shape == (2, 6, 4, 3)
    assert torch.equal(r[0, 0, :], a[0, :, 0].flip(0))  # clockwise
    assert torch.equal(I.ImageRotate().run(None, r, "270 degrees")[0], a)


def test_stitch():
    a, b = img(1, 4, 6), img(1, 8, 4, seed=1)
    out = I.ImageStitch().run(None, a, "right", True, 2, "red", b)[0]
    assert out.shape == (1, 4, 6 + 2 + 2, 3)  # b scaled to height 4 -> width 2
    assert torch.equal(out[0, 0, 6], torch.tensor([1.0, 0.0, 0.0]))
    up = I.ImageStitch().run(None, a, "up", False, 0, "white", b)[0]
    assert up.shape == (1, 12, 6, 3) and torch.equal(up[:, 8:], a)
    assert I.ImageStitch().run(None, a, "right", True, 0, "white", None)[0] is a


def test_batch_helpers_and_size():
    a = img(3)
    assert I.RepeatImageBatch().run(None, a, 2)[0].shape == (6, 4, 6, 3)
    assert torch.equal(I.ImageFromBatch().run(None, a, 1, 5)[0], a[1:])
    assert I.GetImageSize().run(None, a) == (6, 4, 3)


def test_add_noise_is_seeded_and_clamped():
    a = img()
    x, y = I.ImageAddNoise().run(None, a, 3, 0.5)[0], I.ImageAddNoise().run(None, a, 3, 0.5)[0]
    assert torch.equal(x, y) and not torch.equal(x, a) and x.min() >= 0 and x.max() <= 1
    assert not torch.equal(x, I.ImageAddNoise().run(None, a, 4, 0.5)[0])


def test_resize_and_pad_and_max_dimension():
    a = torch.zeros(1, 10, 20, 3)
    out = I.ResizeAndPadImage().run(None, a, 8, 8, "white", "bilinear")[0]
    assert out.shape == (1, 8, 8, 3) and out[0, 0, 0, 0] == 1 and out[0, 4, 4, 0] == 0
    assert I.ImageScaleToMaxDimension().run(None, a, "area", 10)[0].shape == (1, 5, 10, 3)


def test_blur_keeps_flat_images_and_smooths_an_edge():
    flat = torch.full((1, 6, 6, 3), 0.3)
    assert torch.allclose(I.ImageBlur().run(None, flat, 2, 1.0)[0], flat, atol=1e-6)
    edge = torch.zeros(1, 6, 6, 3)
    edge[:, :, 3:] = 1
    b = I.ImageBlur().run(None, edge, 1, 1.0)[0]
    assert 0 < b[0, 0, 2, 0] < 0.5 < b[0, 0, 3, 0] < 1
    s = I.ImageSharpen().run(None, edge * 0.5 + 0.25, 1, 1.0, 1.0)[0]
    assert s[0, 0, 2, 0] < 0.25 and s[0, 0, 3, 0] > 0.75  # overshoot at the edge
    assert torch.allclose(I.ImageSharpen().run(None, flat, 1, 1.0, 1.0)[0], flat, atol=1e-5)


def test_quantize_reduces_colours():
    a = img(1, 16, 16)
    for dither in ("none", "floyd-steinberg", "bayer-4"):
        q = I.ImageQuantize().run(None, a, 4, dither)[0]
        assert q.shape == a.shape
        assert len(torch.unique(q.reshape(-1, 3), dim=0)) <= 4


def test_blend_modes():
    a, b = torch.full((1, 2, 2, 3), 0.6), torch.full((1, 2, 2, 3), 0.5)
    blend = lambda mode, f=1.0: I.ImageBlend().run(None, a, b, f, mode)[0][0, 0, 0, 0].item()
    assert abs(blend("normal") - 0.5) < 1e-6 and abs(blend("normal", 0.0) - 0.6) < 1e-6
    assert abs(blend("multiply") - 0.3) < 1e-6
    assert abs(blend("screen") - 0.8) < 1e-6
    assert abs(blend("overlay") - (1 - 2 * 0.4 * 0.5)) < 1e-6
    assert abs(blend("difference") - 0.1) < 1e-6
    assert abs(blend("soft_light") - 0.6) < 1e-6  # b = 0.5 is neutral


def test_morphology():
    x = torch.zeros(1, 7, 7, 3)
    x[:, 3, 3] = 1
    assert I.Morphology().run(None, x, "dilate", 3)[0][0, :, :, 0].sum() == 9
    assert I.Morphology().run(None, x, "erode", 3)[0].sum() == 0
    assert torch.equal(I.Morphology().run(None, x, "top_hat", 3)[0], x)  # the dot vanishes on opening
    sq = I.Morphology().run(None, x, "dilate", 3)[0]
    assert torch.equal(I.Morphology().run(None, sq, "open", 3)[0], sq)


def test_yuv_round_trip():
    a = img(2, 5, 5)
    y, u, v = I.ImageRGBToYUV().run(None, a)
    assert torch.allclose(y[..., 0], 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2])
    assert torch.allclose(I.ImageYUVToRGB().run(None, y, u, v)[0], a, atol=2e-3)


def test_alpha_split_join():
    rgba = img(1, 4, 4, 4)
    rgb, mask = I.SplitImageWithAlpha().run(None, rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.allclose(mask, 1 - rgba[..., 3])
    back = I.JoinImageWithAlpha().run(None, rgb, mask)[0]
    assert torch.allclose(back, rgba, atol=1e-6)
    assert I.SplitImageWithAlpha().run(None, img())[1].eq(0).all()


def test_mask_edit():
    m = torch.ones(1, 4, 8)
    f = M.FeatherMask().run(None, m, 4, 0, 0, 2)[0]
    assert torch.allclose(f[0, 0, :4], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(f[0, -1, 4:], torch.full((4,), 0.5)) and f[0, 0, 7] == 1
    assert M.CropMask().run(None, torch.rand(2, 5, 5), 1, 2, 3, 10)[0].shape == (2, 3, 3)
    t = M.ThresholdMask().run(None, torch.tensor([[[0.2, 0.6]]]), 0.5)[0]
    assert torch.equal(t, torch.tensor([[[0.0, 1.0]]]))
    image = torch.zeros(1, 2, 2, 3)
    image[0, 0, 0] = torch.tensor([1.0, 128 / 255, 0.0])
    cm = M.ImageColorToMask().run(None, image, 0xFF8000)[0]
    assert cm.sum() == 1 and cm[0, 0, 0] == 1


def test_canny_finds_the_edges_of_a_square_and_nothing_in_flat_areas():
    x = torch.zeros(1, 32, 32, 3)
    x[:, 8:24, 8:24] = 1.0
    e = Canny().run(None, x, 0.2, 0.5)[0]
    assert e.shape == (1, 32, 32, 3)
    edge = e[0, :, :, 0]
    assert edge[16, 16] == 0 and edge[2, 2] == 0  # flat inside and outside
    assert edge[16, 6:10].sum() >= 1 and edge[6:10, 16].sum() >= 1  # left and top borders
    assert edge[16, 6:10].sum() <= 2  # thin (non-maximum suppression)
    # a higher threshold than the step's gradient finds nothing
    assert Canny().run(None, x * 0.1, 0.5, 0.9)[0].sum() == 0
