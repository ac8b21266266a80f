"""Every sampler node on the flow families (tiny Z-Image, FLUX.1 and SD3.5 files): KSamplerAdvanced over the full range,
SamplerCustom and SamplerCustomAdvanced (RandomNoise + CFGGuider + KSamplerSelect + BasicScheduler) give
KSampler's latent for the same settings; chained KSamplerAdvanced ranges reproduce one full euler run."""
from __future__ import annotations

import pytest
import torch

from modelstore.families import store as fs
from nodes.guiders import CFGGuider
from nodes.sampler_params import KSamplerSelect
from nodes.sampling import KSampler, KSamplerAdvanced, RandomNoise, SamplerCustom, SamplerCustomAdvanced
from nodes.sigmas import BasicScheduler

STEPS, SEED, CFG = 4, 23, 2.5
SETS = {
    "zimage": ("z_image_turbo_bf16.safetensors", ("qwen_3_4b.safetensors",), "lumina2"),
    "flux": ("flux1-dev.safetensors", ("clip_l.safetensors", "t5xxl_fp16.safetensors"), "flux"),
    "sd3": ("sd3.5_medium.safetensors", ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"), "sd3"),
}


def _setup(root, family):
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from nodes.family_encode import encode

    st = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
    unet, encs, type_ = SETS[family]
    model = fs.load_diffusion_model(st, root / "diffusion_models" / unet, unet)
    clip = fs.FamilyClip(type_, tuple(fs.load_text_encoder(st, root / "text_encoders" / n) for n in encs), store=st)
    pos, neg = encode(clip, "a red circle"), encode(clip, "blurry")
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    return model, pos, neg, lat


@pytest.mark.parametrize("family", ["zimage", "flux", "sd3"])
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_all_sampler_nodes_match_ksampler(family_models, family, sampler):
    model, pos, neg, lat = _setup(family_models[0], family)
    ref = KSampler().run(None, model, SEED, STEPS, CFG, sampler, "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert ref.shape == (1, 16, 8, 8) and ref.std() > 0

    adv = KSamplerAdvanced().run(None, model, "enable", SEED, STEPS, CFG, sampler, "simple", pos, neg, lat, 0,
                                 10000, "disable")[0]["samples"]
    sigmas = BasicScheduler().run(None, model, "simple", STEPS, 1.0)[0]
    smp = KSamplerSelect().run(None, sampler)[0]
    guider = CFGGuider().run(None, model, pos, neg, CFG)[0]
    noise = RandomNoise().run(None, SEED)[0]
    cadv, cadv_x0 = SamplerCustomAdvanced().run(None, noise, guider, smp, sigmas, lat)
    cus = SamplerCustom().run(None, model, True, SEED, CFG, pos, neg, smp, sigmas, lat)[0]["samples"]

    for name, got in (("KSamplerAdvanced", adv), ("SamplerCustomAdvanced", cadv["samples"]),
                      ("SamplerCustom", cus)):
        diff = (got - ref).abs().max().item()
        print(f"{family} {sampler} {name}: max abs diff vs KSampler {diff:.2e}")
        assert diff <= 1e-6, f"{name} differs from KSampler by {diff}"
    # the last x0 of a run ending at sigma 0 is the result itself
    assert (cadv_x0["samples"] - ref).abs().max().item() < 1e-4
    # a different seed must change the result (the comparison above is not vacuous)
    other = KSampler().run(None, model, SEED + 1, STEPS, CFG, sampler, "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert (other - ref).abs().max().item() > 1e-3


def test_chained_advanced_ranges_equal_one_run(family_models):
    model, pos, neg, lat = _setup(family_models[0], "zimage")
    ref = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    a = KSamplerAdvanced().run(None, model, "enable", SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 0, 2,
                               "enable")[0]
    assert (a["samples"] - ref).abs().max().item() > 1e-3  # still noisy half-way
    b = KSamplerAdvanced().run(None, model, "disable", SEED, STEPS, CFG, "euler", "simple", pos, neg, a, 2, 10000,
                               "disable")[0]["samples"]
    diff = (b - ref).abs().max().item()
    print(f"zimage euler 0-2 + 2-4 vs one run: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_sampler_custom_advanced_workflow_on_zimage(fam_exec, fam_env):
    """The custom-sampling graph through the engine on Z-Image with ModelSamplingAuraFlow, to an image."""
    import numpy as np
    from PIL import Image

    wf = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                        "weight_dtype": "default"}},
        "ms": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["unet", 0], "shift": 3.0}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red circle"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "g": {"class_type": "CFGGuider", "inputs": {"model": ["ms", 0], "positive": ["p", 0], "negative": ["n", 0],
                                                    "cfg": 2.0}},
        "s": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "res_multistep"}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["ms", 0], "scheduler": "simple", "steps": 3,
                                                           "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["g", 0],
                                                                  "sampler": ["s", 0], "sigmas": ["sig", 0],
                                                                  "latent_image": ["lat", 0]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["sca", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "zcustom"}},
    }
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    files = sorted(fam_env.output_dir.glob("zcustom*.png"))
    a = np.asarray(Image.open(files[-1]))
    assert a.shape == (64, 64, 3) and a.std() > 0


def test_cfg_norm_applies_on_flow_models(family_models):
    from nodes.model_sampling import CFGNorm

    model, pos, neg, lat = _setup(family_models[0], "zimage")
    ref = KSampler().run(None, model, SEED, STEPS, 4.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    normed = CFGNorm().run(None, model, 1.0)[0]
    got = KSampler().run(None, normed, SEED, STEPS, 4.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert (got - ref).abs().max().item() > 1e-4  # the hook changed the guided estimate
    zero = CFGNorm().run(None, model, 0.0)[0]  # strength 0 = no correction
    same = KSampler().run(None, zero, SEED, STEPS, 4.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert (same - ref).abs().max().item() < 1e-6


def test_unet_patches_and_controlnet_are_refused_on_flow_models(family_models):
    """What the flow path cannot honour is a clear error naming it, never a silently different picture (timestep
    ranges, areas, masks, DualCFGGuider, RescaleCFG and DifferentialDiffusion work: test_flow_conditioning.py and
    test_flow_guidance.py)."""
    from nodes.model_patches import FreeU, PerturbedAttentionGuidance
    from nodes.self_attention_guidance import SelfAttentionGuidance

    model, pos, neg, lat = _setup(family_models[0], "zimage")
    patched = {"FreeU": FreeU().run(None, model, 1.3, 1.4, 0.9, 0.2)[0],
               "PerturbedAttentionGuidance": PerturbedAttentionGuidance().run(None, model, 3.0)[0],
               "SelfAttentionGuidance": SelfAttentionGuidance().run(None, model, 0.5, 2.0)[0],
               "HypernetworkLoader": model.with_options(hypernetworks=(("hn.safetensors", 1, 1, 1.0),))}
    for name, m in patched.items():
        with pytest.raises(ValueError, match=name):
            KSampler().run(None, m, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)
    controlled = [[emb, {**opts, "control": object()}] for emb, opts in pos]
    with pytest.raises(ValueError, match="ControlNet"):
        KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", controlled, neg, lat, 1.0)
    # the unpatched model with the plain conditioning still samples
    out = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()


def test_redux_tokens_condition_flux(family_models, tmp_path):
    """A FLUX.1 Redux style model (redux_up/redux_down) appends its tokens to the T5 context of tiny FLUX.1, whose
    transformer samples with the longer context (text ids follow its length) to a different result."""
    from safetensors.torch import save_file

    from nodes.style_model import StyleModelApply, StyleModelRef

    model, pos, neg, lat = _setup(family_models[0], "flux")
    width = pos[0][0].shape[-1]
    g = torch.Generator().manual_seed(4)
    path = tmp_path / "tiny-redux.safetensors"
    save_file({"redux_up.weight": torch.randn(3 * width, 32, generator=g) * 0.2,
               "redux_up.bias": torch.zeros(3 * width), "redux_down.weight": torch.randn(width, 3 * width, generator=g) * 0.2,
               "redux_down.bias": torch.zeros(width)}, str(path))
    ref = StyleModelRef(str(path), path.stat().st_size, path.stat().st_mtime_ns, path.name)
    vision = {"last_hidden_state": torch.randn(1, 5, 32, generator=g)}
    styled = StyleModelApply().run(None, pos, ref, vision, 1.0, "multiply")[0]
    assert styled[0][0].shape[1] == pos[0][0].shape[1] + 5
    a = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", styled, neg, lat, 1.0)[0]["samples"]
    b = KSampler().run(None, model, SEED, STEPS, CFG, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-4
