"""Latent->RGB previews of the 16-channel families (SD3, FLUX.1, Z-Image, Qwen-Image): ComfyUI's published factor tables
(nodes/latent_rgb.py), checked for orientation (a latent built to decode to red previews red) and wired into
sampling (a FLUX.1 KSampler run reports coloured, not grey, previews)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.latent_rgb import LATENT_RGB, latent_to_rgb


@pytest.mark.parametrize("arch", ["sd3", "flux", "zimage", "qwen_image", "sd1", "sdxl"])
@pytest.mark.parametrize("target", [(0.8, -0.6, -0.6), (-0.6, 0.8, -0.6), (-0.6, -0.6, 0.8)])
def test_factor_tables_map_channels_to_colours(arch, target):
    fac, bias = LATENT_RGB[arch]
    f = torch.tensor(fac)
    assert f.shape[1] == 3 and f.shape[0] == (16 if arch in ("sd3", "flux", "zimage", "qwen_image") else 4)
    want = torch.tensor(target) - (torch.tensor(bias) if bias is not None else 0)
    pix = torch.linalg.lstsq(f.T, want[:, None]).solution[:, 0]  # the latent pixel that projects to target
    lat = pix[None, :, None, None].expand(1, -1, 2, 3)
    img = np.asarray(latent_to_rgb(lat, arch)).astype(float)
    assert img.shape == (2, 3, 3)
    dominant = int(np.argmax(target))
    px = img[0, 0]
    assert px[dominant] > 200 and np.delete(px, dominant).max() < 60, (arch, target, px)


class _Ctx:
    env = None

    def __init__(self):
        self.previews = []

    def progress(self, value, total, preview=None):
        if preview is not None:
            self.previews.append(preview())

    def check_cancelled(self):
        pass


def test_flux_sampling_previews_are_coloured(family_models):
    from engine.folders import ModelFolders
    from modelstore.families import store as fs
    from modelstore.models import ModelStore
    from nodes.family_encode import encode
    from nodes.sampling import KSampler

    root = family_models[0]
    st = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
    model = fs.load_diffusion_model(st, root / "diffusion_models" / "flux1-dev.safetensors", "flux1-dev.safetensors")
    clip = fs.FamilyClip("flux", tuple(fs.load_text_encoder(st, root / "text_encoders" / n)
                                       for n in ("clip_l.safetensors", "t5xxl_fp16.safetensors")), store=st)
    ctx = _Ctx()
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    KSampler().run(ctx, model, 5, 3, 1.0, "euler", "simple", encode(clip, "red"), encode(clip, ""), lat, 1.0)
    assert len(ctx.previews) == 3
    for im in ctx.previews:
        a = np.asarray(im).astype(float)
        assert a.shape == (8, 8, 3)
        # grey previews have R == G == B everywhere; the FLUX.1 table gives the channels different mixes
        assert np.abs(a[..., 0] - a[..., 1]).max() > 2 or np.abs(a[..., 1] - a[..., 2]).max() > 2
