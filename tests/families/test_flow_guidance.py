"""DualCFGGuider, RescaleCFG and DifferentialDiffusion on the flow families (tiny Z-Image / FLUX.1 files).

DualCFGGuider is checked where it is algebraically plain CFG; RescaleCFG's flow form by its defining property (the
guided velocity's std equals the conditional one's at multiplier 1) and by multiplier 0 = no change;
DifferentialDiffusion by a binary noise mask (where its threshold changes nothing) and a soft one (where it does)."""
from __future__ import annotations

import pytest
import torch

from nodes.guiders import CFGGuider, DualCFGGuider
from nodes.latents import SetLatentNoiseMask
from nodes.model_patches import DifferentialDiffusion
from nodes.model_sampling import RescaleCFG
from nodes.sampler_params import KSamplerSelect
from nodes.sampling import KSampler, RandomNoise, SamplerCustomAdvanced
from nodes.sigmas import BasicScheduler
from sampling.guidance import rescale_cfg
from tests.families.test_family_sampler_nodes import _setup
from tests.families.test_flow_conditioning import _other

STEPS, SEED, CFG = 4, 23, 2.5


def _run(model, guider, lat):
    sigmas = BasicScheduler().run(None, model, "simple", STEPS, 1.0)[0]
    return SamplerCustomAdvanced().run(None, RandomNoise().run(None, SEED)[0], guider,
                                       KSamplerSelect().run(None, "euler")[0], sigmas, lat)[0]["samples"]


@pytest.mark.parametrize("family", ["zimage", "flux"])
def test_dual_cfg_guider_reduces_to_cfg(family_models, family):
    model, pos, neg, lat = _setup(family_models[0], family)
    other = _other(family_models[0], family)
    cfg_other = _run(model, CFGGuider().run(None, model, pos, other, CFG)[0], lat)
    # cfg_cond2_negative 1: negative -> cond2 is cond2 itself, so regular = CFG of cond1 against cond2
    for style in ("regular", "nested"):
        dual = _run(model, DualCFGGuider().run(None, model, pos, other, neg, CFG, 1.0, style)[0], lat)
        diff = (dual - cfg_other).abs().max().item()
        print(f"{family} DualCFG {style} cfg2=1 vs CFGGuider(cond1, cond2): max abs diff {diff:.2e}")
        assert diff < 1e-4
    # cond2 = negative: negative -> cond2 by any cfg2 is the negative, so = CFG of cond1 against the negative
    plain = _run(model, CFGGuider().run(None, model, pos, neg, CFG)[0], lat)
    dual = _run(model, DualCFGGuider().run(None, model, pos, neg, neg, CFG, 3.0, "regular")[0], lat)
    diff = (dual - plain).abs().max().item()
    print(f"{family} DualCFG cond2=negative vs CFGGuider: max abs diff {diff:.2e}")
    assert diff < 1e-4
    # a real second scale changes the picture, and the two styles differ
    reg = _run(model, DualCFGGuider().run(None, model, pos, other, neg, CFG, 2.0, "regular")[0], lat)
    nest = _run(model, DualCFGGuider().run(None, model, pos, other, neg, CFG, 2.0, "nested")[0], lat)
    assert (reg - cfg_other).abs().max().item() > 1e-3 and (reg - nest).abs().max().item() > 1e-3
    assert torch.isfinite(reg).all() and torch.isfinite(nest).all()


def test_rescale_cfg_flow_form_matches_the_conditional_velocity_std():
    g = torch.Generator().manual_seed(0)
    x, cond, unc = (torch.randn(2, 4, 6, 6, generator=g) for _ in range(3))
    sigma = torch.tensor([0.8, 0.3])
    s = sigma.view(-1, 1, 1, 1)
    guided = unc + (cond - unc) * 5.0
    full = rescale_cfg(1.0, flow=True)(cond=cond, uncond=unc, cfg=5.0, x=x, sigma=sigma)
    v_out, v_cond, v_cfg = (x - full) / s, (x - cond) / s, (x - guided) / s
    std = lambda t: t.std(dim=(1, 2, 3))
    assert torch.allclose(std(v_out), std(v_cond), rtol=1e-5)
    assert torch.allclose(v_out / v_cfg, (std(v_cond) / std(v_cfg)).view(-1, 1, 1, 1), rtol=1e-4)  # only rescaled
    none = rescale_cfg(0.0, flow=True)(cond=cond, uncond=unc, cfg=5.0, x=x, sigma=sigma)
    assert torch.allclose(none, guided, atol=1e-6)
    half = rescale_cfg(0.5, flow=True)(cond=cond, uncond=unc, cfg=5.0, x=x, sigma=sigma)
    assert torch.allclose(half, (full + guided) / 2, atol=1e-5)  # linear blend in velocity = in x0
    vp = rescale_cfg(1.0)(cond=cond, uncond=unc, cfg=5.0, x=x, sigma=sigma)
    assert (vp - full).abs().max().item() > 1e-2  # the VP form is another formula (not used for flow models)


def test_rescale_cfg_on_flow_model(family_models):
    model, pos, neg, lat = _setup(family_models[0], "zimage")
    ref = KSampler().run(None, model, SEED, STEPS, 4.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    zero = KSampler().run(None, RescaleCFG().run(None, model, 0.0)[0], SEED, STEPS, 4.0, "euler", "simple", pos, neg,
                          lat, 1.0)[0]["samples"]
    assert (zero - ref).abs().max().item() < 1e-5
    got = KSampler().run(None, RescaleCFG().run(None, model, 0.7)[0], SEED, STEPS, 4.0, "euler", "simple", pos, neg,
                         lat, 1.0)[0]["samples"]
    assert torch.isfinite(got).all() and (got - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ["zimage", "flux"])
def test_differential_diffusion_on_flow_model(family_models, family):
    model, pos, neg, lat = _setup(family_models[0], family)
    base = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))}
    dd = DifferentialDiffusion().run(None, model)[0]

    def run(m, mask):
        latent = SetLatentNoiseMask().run(None, base, mask)[0]
        return KSampler().run(None, m, SEED, STEPS, CFG, "euler", "simple", pos, neg, latent, 1.0)[0]["samples"]

    binary = torch.zeros(1, 64, 64)
    binary[:, :, 32:] = 1
    diff = (run(dd, binary) - run(model, binary)).abs().max().item()
    assert diff < 1e-6, diff  # a 0/1 mask is its own threshold at every step
    soft = torch.full((1, 64, 64), 0.5)
    a, b = run(dd, soft), run(model, soft)
    assert torch.isfinite(a).all() and (a - b).abs().max().item() > 1e-3
