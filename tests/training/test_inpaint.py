"""The 9-channel inpainting variant's construction: a grown first conv that starts as the 4-channel model, the
training masks, and the latent-grid reduction shared with the sampler."""
import os

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training import train_inpaint  # noqa: E402
from training.train_unet import build_unet  # noqa: E402


def _unet4():
    torch.manual_seed(0)
    return build_unet(dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                           block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
                           up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32,
                           attention_head_dim=8, norm_num_groups=32)).eval()


def test_expanded_unet_takes_9_channels_and_starts_as_the_4_channel_model():
    u4 = _unet4()
    u9 = train_inpaint.expand_conv_in(u4).eval()
    assert u9.config.in_channels == 9 and u9.conv_in.weight.shape[1] == 9
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    extra = torch.randn(2, 5, 8, 8)  # mask + masked latent: ignored while their weights are zero
    with torch.no_grad():
        a = u4(x, 500, encoder_hidden_states=ctx).sample
        b = u9(torch.cat([x, extra], 1), 500, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and the new channels are real inputs once trained: a non-zero weight changes the output
    with torch.no_grad():
        u9.conv_in.weight[:, 4:] += 0.1
        c = u9(torch.cat([x, extra], 1), 500, encoder_hidden_states=ctx).sample
    assert (c - a).abs().max() > 1e-3


def test_training_masks_are_full_or_one_box_of_16_to_48_pixels():
    m = train_inpaint.random_masks(torch.Generator().manual_seed(0), 400)
    assert m.shape == (400, 1, 64, 64) and set(m.unique().tolist()) == {0.0, 1.0}
    full = (m.mean(dim=(1, 2, 3)) == 1.0)
    assert 0.15 < full.float().mean() < 0.35
    for box in m[~full]:
        ys, xs = torch.nonzero(box[0], as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 16 <= h <= 48 and 16 <= w <= 48 and box.sum() == h * w  # one solid rectangle


def test_latent_mask_uses_the_samplers_rule():
    m = train_inpaint.random_masks(torch.Generator().manual_seed(1), 8)
    lm = train_inpaint.latent_mask(m)
    assert lm.shape == (8, 1, 8, 8)
    assert torch.equal(lm, F.interpolate(m, size=(8, 8), mode="bilinear").round())
