"""Timestep ranges, areas and masks on the flow families (tiny Z-Image, FLUX.1 and SD3.5 files, nodes/flow_conditioning.py).

Checked against independent computations: a range split equals two chained KSamplerAdvanced runs; the positive
x0 of one model call equals ComfyUI's weighted average computed here by hand from separate ``velocity`` calls on the
whole latent and on the area's crop (feather ramp written out, not taken from the implementation)."""
from __future__ import annotations

import pytest
import torch

from nodes import conditioning as C
from nodes import conditioning_ops as O
from nodes import family_sampling as fsamp
from nodes.sampler_values import Guider
from nodes.sampling import KSampler, KSamplerAdvanced
from tests.families.test_family_sampler_nodes import _setup
from tests.families.test_flux_controlnet import cn_models  # noqa: F401  (fixture)

STEPS, SEED, CFG = 4, 23, 2.5


def _other(root, family):
    from modelstore.families import store as fs
    from nodes.family_encode import encode
    from tests.families.test_family_sampler_nodes import SETS

    from engine.folders import ModelFolders
    from modelstore.models import ModelStore

    st = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
    _, encs, type_ = SETS[family]
    clip = fs.FamilyClip(type_, tuple(fs.load_text_encoder(st, root / "text_encoders" / n) for n in encs), store=st)
    return encode(clip, "a blue square on green grass")


def _x0(model, positive, x, sigma, negative=None, cfg=1.0):
    """(cond x0, uncond x0) of one guided model call on model-space ``x`` at ``sigma``."""
    ms = fsamp.model_sampling(model)
    with model.store.using(model) as (den,), torch.no_grad():
        predict, _ = fsamp.make_predict(den, ms, Guider(model, positive, negative, cfg), x.shape[0], x.shape[-2:])
        return predict(x, torch.tensor([sigma]))


def _plain_x0(model, cond, x, sigma):
    """x0 of one entry's own velocity call on ``x`` (whole latent or a crop), no weighting."""
    ms = fsamp.model_sampling(model)
    with model.store.using(model) as (den,), torch.no_grad():
        from nodes.flow_conditioning import entry_cond

        emb, opts = cond[0]
        c = entry_cond(emb, opts, den.family, x.shape[0], den.config.get("pooled_projection_dim"), None)
        s = torch.tensor([sigma])
        return ms.calculate_denoised(s, den.velocity(x, s, c), x)


def _ramp(n: int) -> torch.Tensor:
    """ComfyUI's feather along one axis of an area whose both edges are inside the latent: (i+1)/8 in from each."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.clamp((i + 1) / 8, max=1.0) * torch.clamp((n - i) / 8, max=1.0)


@pytest.mark.parametrize("family", ["zimage", "flux", "sd3"])
def test_timestep_range_split_equals_chained_advanced_runs(family_models, family):
    """positive = A on [0, 0.4] + B on [0.4, 1]: with 4 simple steps the boundary sigma falls between steps 2 and 3,
    so exactly A guides steps 1-2 and B steps 3-4, as KSamplerAdvanced 0-2 with A then 2-4 with B."""
    model, pos, neg, lat = _setup(family_models[0], family)
    other = _other(family_models[0], family)
    a = O.ConditioningSetTimestepRange().run(None, pos, 0.0, 0.4)[0]
    b = O.ConditioningSetTimestepRange().run(None, other, 0.4, 1.0)[0]
    both = C.ConditioningCombine().run(None, a, b)[0]
    got = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", both, neg, lat, 1.0)[0]["samples"]
    first = KSamplerAdvanced().run(None, model, "enable", SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 0, 2,
                                   "enable")[0]
    ref = KSamplerAdvanced().run(None, model, "disable", SEED, STEPS, CFG, "euler", "simple", other, neg, first, 2,
                                 10000, "disable")[0]["samples"]
    diff = (got - ref).abs().max().item()
    print(f"{family}: A[0,0.4]+B[0.4,1] vs KSamplerAdvanced A 0-2 then B 2-4: max abs diff {diff:.2e}")
    assert diff < 1e-4
    plain = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert (got - plain).abs().max().item() > 1e-3  # B really guided the second half
    # [0, 1] is the entry itself; [0, 0.5] alone changes the picture (no positive at all in the second half)
    full = O.ConditioningSetTimestepRange().run(None, pos, 0.0, 1.0)[0]
    same = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", full, neg, lat, 1.0)[0]["samples"]
    assert (same - plain).abs().max().item() == 0.0
    half = O.ConditioningSetTimestepRange().run(None, pos, 0.0, 0.5)[0]
    cut = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", half, neg, lat, 1.0)[0]["samples"]
    assert torch.isfinite(cut).all() and (cut - plain).abs().max().item() > 1e-3


def test_side_without_an_active_entry_predicts_zero(family_models):
    """ComfyUI's 0 / count: a positive whose only entry is out of range gives x0 = 0 at that sigma; in range it is
    the entry's own x0."""
    model, pos, neg, _ = _setup(family_models[0], "zimage")
    late = O.ConditioningSetTimestepRange().run(None, pos, 0.5, 1.0)[0]
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    ms = fsamp.model_sampling(model)
    early, late_sigma = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)
    cond, unc = _x0(model, late, x, early, neg, CFG)
    assert cond.abs().max().item() == 0.0 and unc.abs().max().item() > 0.1
    cond, _ = _x0(model, late, x, late_sigma)
    assert (cond - _plain_x0(model, pos, x, late_sigma)).abs().max().item() < 1e-5
    # end to end: a positive on [0, 0.5] alone at cfg 1 leaves euler's last step with x0 = 0: the zero latent
    first = O.ConditioningSetTimestepRange().run(None, pos, 0.0, 0.5)[0]
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    out = KSampler().run(None, model, SEED, STEPS, 1.0, "euler", "simple", first, neg, lat, 1.0)[0]["samples"]
    scale, shift = fsamp.latent_affine(model.meta)
    assert ((out - shift) * scale).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", ["zimage", "flux"])
def test_area_is_the_weighted_average_of_whole_and_crop_calls(family_models, family):
    """A on the whole latent + B on an area (ConditioningSetArea, pixels): inside the area (A + w B_crop) / (1 + w)
    with w ComfyUI's 8-pixel feather on the inner edges, outside A alone."""
    model, pos, _, _ = _setup(family_models[0], family)
    other = _other(family_models[0], family)
    area = C.ConditioningSetArea().run(None, other, 64, 80, 32, 16, 1.0)[0]  # latent h 10, w 8, y 2, x 4
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = 0.7
    got, _ = _x0(model, pos + area, x, sigma)
    xa = _plain_x0(model, pos, x, sigma)
    xb = _plain_x0(model, other, x[:, :, 2:12, 4:12].contiguous(), sigma)
    w = _ramp(10)[:, None] * _ramp(8)[None, :]
    num, den = xa.clone(), torch.ones(1, 1, 16, 16)
    num[:, :, 2:12, 4:12] += w * xb
    den[:, :, 2:12, 4:12] += w
    diff = (got - num / den).abs().max().item()
    print(f"{family}: area weighted average vs by-hand: max abs diff {diff:.2e}")
    assert diff < 1e-5
    assert (got[:, :, 2:12, 4:12] - xa[:, :, 2:12, 4:12]).abs().max().item() > 1e-3


def test_odd_area_on_flux_is_padded_to_whole_patches(family_models):
    """An area of odd latent size and offset (5 x 7 at y 3, x 1) runs on FLUX's 2x2 patches (the crop padded, the
    prediction cut back): it changes only its rectangle, and a whole KSampler run with it is finite and different."""
    model, pos, neg, lat = _setup(family_models[0], "flux")
    other = _other(family_models[0], "flux")
    area = [[e, {**o, "area": (5, 7, 3, 1)}] for e, o in other]
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    got, _ = _x0(model, pos + area, x, 0.5)
    xa = _plain_x0(model, pos, x, 0.5)
    inside = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    inside[:, :, 3:8, 1:8] = True
    assert (got - xa).masked_select(~inside).abs().max().item() == 0.0
    assert (got - xa).masked_select(inside).abs().max().item() > 1e-3
    # inside: the crop padded circularly to 6 x 8 for the call (ComfyUI's pad to the patch size), cut back to 5 x 7
    crop = torch.nn.functional.pad(x[:, :, 3:8, 1:8], (0, 1, 0, 1), mode="circular")
    xb = _plain_x0(model, other, crop, 0.5)[:, :, :5, :7]
    w = _ramp(5)[:, None] * _ramp(7)[None, :]
    want = xa.clone()
    want[:, :, 3:8, 1:8] = (xa[:, :, 3:8, 1:8] + w * xb) / (1 + w)
    assert (got - want).abs().max().item() < 1e-5
    a = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos + area, neg, lat, 1.0)[0]["samples"]
    b = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert torch.isfinite(a).all() and (a - b).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", ["zimage", "sd3"])
def test_masks_strength_and_mask_bounds(family_models, family):
    model, pos, _, _ = _setup(family_models[0], family)
    other = _other(family_models[0], family)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    sigma = 0.6
    xa, xb = _plain_x0(model, pos, x, sigma), _plain_x0(model, other, x, sigma)
    # complementary masks (image pixels, 128 x 128 -> 16 x 16 latent): left from A, right from B, exactly
    left = torch.zeros(1, 128, 128)
    left[:, :, :64] = 1
    ma = O.ConditioningSetMask().run(None, pos, left, 1.0, "default")[0]
    mb = O.ConditioningSetMask().run(None, other, 1 - left, 1.0, "default")[0]
    got, _ = _x0(model, ma + mb, x, sigma)
    want = torch.cat([xa[..., :8], xb[..., 8:]], -1)
    assert (got - want).abs().max().item() < 1e-5
    # ConditioningSetAreaStrength: whole-latent entries averaged by strength (A + 3 B) / 4
    strong = O.ConditioningSetAreaStrength().run(None, other, 3.0)[0]
    got, _ = _x0(model, pos + strong, x, sigma)
    assert (got - (xa + 3 * xb) / 4).abs().max().item() < 1e-5
    # "mask bounds": B runs on its mask's bounding box (rows 4-11, cols 8-15) with mask x strength, no feather
    box = torch.zeros(1, 128, 128)
    box[:, 32:96, 64:128] = 1
    bounded = O.ConditioningSetMask().run(None, other, box, 2.0, "mask bounds")[0]
    got, _ = _x0(model, pos + bounded, x, sigma)
    crop = _plain_x0(model, other, x[:, :, 4:12, 8:16].contiguous(), sigma)
    want = xa.clone()
    want[:, :, 4:12, 8:16] = (xa[:, :, 4:12, 8:16] + 2 * crop) / 3
    diff = (got - want).abs().max().item()
    print(f"{family}: mask bounds vs by-hand crop average: max abs diff {diff:.2e}")
    assert diff < 1e-5
    assert (crop - xb[:, :, 4:12, 8:16]).abs().max().item() > 1e-3  # the crop call is not the whole-latent one


def test_percentage_area_equals_pixel_area(family_models):
    model, pos, _, _ = _setup(family_models[0], "zimage")
    other = _other(family_models[0], "zimage")
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(6))
    px = C.ConditioningSetArea().run(None, other, 64, 80, 32, 16, 0.8)[0]
    pc = O.ConditioningSetAreaPercentage().run(None, other, 0.5, 0.625, 0.25, 0.125, 0.8)[0]
    a, _ = _x0(model, pos + px, x, 0.4)
    b, _ = _x0(model, pos + pc, x, 0.4)
    assert (a - b).abs().max().item() == 0.0 and (a - _plain_x0(model, pos, x, 0.4)).abs().max().item() > 1e-3


def test_regional_flux_workflow_through_the_engine(fam_exec, fam_env):
    """The regional-prompt graph ComfyUI users wire for FLUX.1: a global prompt + ConditioningSetArea (right half)
    switched off after 60% by ConditioningSetTimestepRange, combined, FluxGuidance, KSampler, to an image."""
    import numpy as np
    from PIL import Image

    def enc(text):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": text}}

    wf = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                            "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
        "g": enc("a red circle"), "r": enc("a blue square"), "n": enc(""),
        "area": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["r", 0], "width": 64, "height": 128,
                                                                  "x": 64, "y": 0, "strength": 1.0}},
        "range": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["area", 0], "start": 0.0,
                                                                           "end": 0.6}},
        "comb": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["g", 0],
                                                                 "conditioning_2": ["range", 0]}},
        "fg": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["comb", 0], "guidance": 3.5}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["unet", 0], "seed": 7, "steps": 4, "cfg": 2.0,
                                                    "sampler_name": "euler", "scheduler": "simple",
                                                    "positive": ["fg", 0], "negative": ["n", 0],
                                                    "latent_image": ["lat", 0], "denoise": 1.0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "regional"}},
    }
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    wf["fg"]["inputs"]["conditioning"] = ["g", 0]
    wf["save"]["inputs"]["filename_prefix"] = "global"
    assert fam_exec.run(wf).status == "success"
    a = np.asarray(Image.open(sorted(fam_env.output_dir.glob("regional*.png"))[-1])).astype(float)
    b = np.asarray(Image.open(sorted(fam_env.output_dir.glob("global*.png"))[-1])).astype(float)
    assert a.shape == (128, 128, 3) and a.std() > 0 and np.abs(a - b).max() > 0


def test_flux_controlnet_on_an_area_entry(cn_models):
    """A ControlNet-applied conditioning restricted to an odd area on FLUX.1: the ControlNet runs on the crop's call
    (its hint resized to the crop, as ComfyUI resizes the hint to the model input) and the result is finite and
    differs from the same area without the ControlNet."""
    from nodes import controlnet as CN
    from tests.families.test_flux_controlnet import _setup as cn_setup, hint

    root = cn_models[0]
    st, _, model, pos, neg, vae = cn_setup(root)
    ref_cn = st.load("controlnet", "flux-cn.safetensors")
    p2, n2 = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref_cn, hint(128), 1.0, 0.0, 1.0, vae)
    area = lambda conds: [[e, {**o, "area": (5, 7, 3, 1)}] for e, o in conds]
    lat = {"samples": torch.zeros(1, 16, 16, 16)}

    def run(p):
        return fsamp.sample(None, model, pos + area(p), neg, lat, seed=11, steps=3, cfg=2.0, sampler_name="euler",
                            scheduler="simple")

    a, b = run(p2), run(pos)
    assert torch.isfinite(a).all() and (a - b).abs().max().item() > 1e-4
