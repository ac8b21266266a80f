"""Semantics of the diffusion nodes on the tiny SD1 checkpoint: schema parity with ComfyUI, every sampler/scheduler
pair, ComfyUI's noise and start scaling, step ranges, cfg=1, model-sampling nodes, sigma nodes, text encoding,
areas, latent/VAE/mask/upscale nodes. (The numbers of the sampling core itself: tests/sampling.)"""
from __future__ import annotations


import pytest
import torch

from engine.errors import WorkflowError
from engine.schema import object_info
from nodes import conditioning as C
from nodes import latents as L
from nodes import default_registry
from nodes.sampler_core import Noise, make_noise, sample
from nodes.samplers import SAMPLER_NAMES, SCHEDULER_NAMES, Plan, supported_pairs, unsupported_reason
from tests.comfy_spec import comfy_object_info

MINE = ["CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "UpscaleModelLoader",
        "CLIPTextEncode", "CLIPSetLastLayer", "ConditioningCombine", "ConditioningSetArea", "ConditioningZeroOut",
        "InpaintModelConditioning", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentBlend",
        "LatentComposite", "LatentFromBatch", "RepeatLatentBatch", "SetLatentNoiseMask", "KSampler",
        "KSamplerAdvanced", "RandomNoise", "DisableNoise", "KSamplerSelect", "BasicScheduler", "KarrasScheduler",
        "CFGGuider", "BasicGuider", "SamplerCustom", "SamplerCustomAdvanced", "SplitSigmas", "VAEDecode",
        "DualCFGGuider", "ExponentialScheduler", "PolyexponentialScheduler", "VPScheduler", "BetaSamplingScheduler",
        "LaplaceScheduler", "SDTurboScheduler", "AlignYourStepsScheduler", "SplitSigmasDenoise", "FlipSigmas",
        "SetFirstSigma", "ExtendIntermediateSigmas", "SamplerEulerAncestral", "SamplerEulerAncestralCFGPP",
        "SamplerLMS", "SamplerDPMPP_3M_SDE", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral",
        "SamplerDPMAdaptative", "SamplerER_SDE", "SamplerSASolver", "ModelSamplingDiscrete",
        "ModelSamplingContinuousEDM", "ModelSamplingContinuousV", "ModelSamplingSD3", "ModelSamplingAuraFlow",
        "ModelSamplingFlux", "RescaleCFG", "CFGNorm",
        "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint", "ImageCompositeMasked",
        "ImagePadForOutpaint", "ImageScaleToTotalPixels", "ImageUpscaleWithModel"]


class _Ctx:
    def __init__(self, env=None):
        self.env, self.events = env, []

    def progress(self, value, total, preview=None):
        self.events.append((value, total, preview))

    def check_cancelled(self):
        pass


def close(a, b, tol=1e-4):
    """Equal up to float noise relative to the values' scale (random tiny models make large latents)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def _norm_spec(v):
    """[type or options, opts] from either V1 or V3 (COMBO + options) spec forms."""
    t, opts = v[0], dict(v[1]) if len(v) > 1 else {}
    if t == "COMBO":
        t = opts.pop("options", [])
    opts.pop("tooltip", None)
    opts.pop("multiselect", None)
    return t, opts


# ------------------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("name", MINE)
def test_schema_matches_comfyui(name, session_env):
    spec = comfy_object_info()[name]
    ours = object_info(default_registry(), session_env)[name]
    assert ours["input_order"] == spec["input_order"]
    assert ours["output"] == spec["output"]
    assert ours["output_name"] == spec["output_name"]
    assert ours["category"] == spec["category"]
    if spec.get("display_name"):
        assert ours["display_name"] == spec["display_name"]
    for sec in ("required", "optional"):
        for k, v in spec["input"].get(sec, {}).items():
            st, so = _norm_spec(v)
            ot, oo = _norm_spec(ours["input"][sec][k])
            if isinstance(st, list):
                if not callable(default_registry().get(name).input(k).options):  # file lists depend on folders
                    assert ot == st, k
            else:
                assert ot == st, k
            for key in ("default", "min", "max", "step", "round", "multiline"):
                if key in so:
                    assert oo.get(key) == so[key], (k, key)


def test_name_tables_in_comfyui_order():
    spec = comfy_object_info()["KSampler"]["input"]["required"]
    assert SAMPLER_NAMES == spec["sampler_name"][0]
    assert SCHEDULER_NAMES == spec["scheduler"][0]


# ------------------------------------------------------------------------------------------ validation
def _wf(sampler="euler", scheduler="normal", steps=4, cfg=7.0, batch=1, denoise=1.0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 5, "steps": steps, "cfg": cfg,
                                                  "sampler_name": sampler, "scheduler": scheduler,
                                                  "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "denoise": denoise}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_all_378_name_pairs_validate(executor):
    """`loom validate` accepts every KSampler sampler x scheduler pair on an SD1 checkpoint."""
    assert len(SAMPLER_NAMES) * len(SCHEDULER_NAMES) == 378
    for s in SAMPLER_NAMES:
        for sch in SCHEDULER_NAMES:
            assert unsupported_reason(s, sch) is None, (s, sch)
        executor.prepare(_wf(s, "karras"))
    for sch in SCHEDULER_NAMES:
        executor.prepare(_wf("euler", sch))
    assert supported_pairs() == {s: SCHEDULER_NAMES for s in SAMPLER_NAMES}


def test_unknown_names_fail_validation(executor):
    for sampler, scheduler in (("euler_fast", "normal"), ("euler", "linear")):
        with pytest.raises(WorkflowError) as e:
            executor.prepare(_wf(sampler, scheduler))
        assert e.value.node_errors["5"]["errors"], e.value.node_errors
    assert "unknown sampler" in unsupported_reason("euler_fast", None)


def test_runs_and_reports_progress(executor):
    events = []
    r = executor.run(_wf(steps=3), sink=events.append)
    assert r.status == "success", r.error
    prog = [e for e in events if e.type == "progress" and e.data["node"] == "5"]
    assert [e.data["value"] for e in prog] == [1, 2, 3] and all(e.data["max"] == 3 for e in prog)
    img = prog[-1].preview()
    assert img.size == (8, 8) and img.mode == "RGB"


# ------------------------------------------------------------------------------------------ noise and ranges
def test_noise_per_item_and_batch_index():
    n, _ = make_noise(7, (3, 4, 8, 8))
    assert torch.equal(n, torch.randn((3, 4, 8, 8), generator=torch.manual_seed(7)))  # ComfyUI's whole-shape draw
    one, _ = make_noise(7, (1, 4, 8, 8), batch_index=[2])
    assert torch.equal(one[0], n[2])


def _conds(refs, text="a cat"):
    return C.encode_text(refs[1], text), C.encode_text(refs[1], "")


def test_batch_item_can_be_remade_alone(refs):
    pos, neg = _conds(refs)
    plan = Plan("euler", "normal", 4)
    full = sample(None, refs[0], pos, neg, {"samples": torch.zeros(3, 4, 8, 8)}, plan, 0, 4, cfg=6.0, noise=Noise(11))
    lat = L.LatentFromBatch().run(None, {"samples": torch.zeros(3, 4, 8, 8)}, 2, 1)[0]
    assert lat["batch_index"] == [2]
    alone = sample(None, refs[0], pos, neg, lat, plan, 0, 4, cfg=6.0, noise=Noise(11))
    assert close(alone.samples[0], full.samples[2])


@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("ddim", "simple"), ("euler", "karras")])
def test_advanced_split_equals_full_run(refs, sampler, scheduler):
    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    plan = Plan(sampler, scheduler, 10)
    full = sample(None, refs[0], pos, neg, lat, plan, 0, 10, cfg=5.0, noise=Noise(3)).samples
    a = sample(None, refs[0], pos, neg, lat, plan, 0, 6, cfg=5.0, noise=Noise(3), force_full_denoise=False)
    b = sample(None, refs[0], pos, neg, {"samples": a.samples}, plan, 6, 10, cfg=5.0, noise=None)
    assert close(b.samples, full)
    assert not close(a.samples, full)  # the first range returned a latent that still holds noise


def test_force_full_denoise_returns_clean_latent(refs):
    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    plan = Plan("euler", "normal", 10)
    noisy = sample(None, refs[0], pos, neg, lat, plan, 0, 5, cfg=5.0, noise=Noise(3), force_full_denoise=False)
    clean = sample(None, refs[0], pos, neg, lat, plan, 0, 5, cfg=5.0, noise=Noise(3), force_full_denoise=True)
    assert close(clean.samples, noisy.denoised, 1e-5)  # ComfyUI: the range's last sigma becomes 0
    assert not close(clean.samples, noisy.samples, 1e-2)


def test_cfg_one_skips_uncond(refs):
    pos, neg = _conds(refs)
    unet = refs[0].get()
    batches = []
    h = unet.register_forward_pre_hook(lambda m, a, kw: batches.append(a[0].shape[0]), with_kwargs=True)
    try:
        sample(None, refs[0], pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, Plan("euler", "normal", 2), 0, 2,
               cfg=1.0, noise=Noise(1))
        sample(None, refs[0], pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, Plan("euler", "normal", 2), 0, 2,
               cfg=2.0, noise=Noise(1))
    finally:
        h.remove()
    assert batches == [1, 1, 2, 2]


def test_denoise_zero_returns_input(executor):
    wf = _wf(denoise=0.0)
    assert executor.run(wf).status == "success"


def test_noise_mask_keeps_outside(refs):
    pos, neg = _conds(refs)
    z = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(0))
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1
    lat = L.SetLatentNoiseMask().run(None, {"samples": z}, mask)[0]
    out = sample(None, refs[0], pos, neg, lat, Plan("euler", "normal", 6), 2, 6, cfg=5.0, noise=Noise(2)).samples
    outside = mask[:, None].expand_as(z) == 0
    assert (out[outside] - z[outside]).abs().max() < 1e-5
    assert (out[~outside] - z[~outside]).abs().max() > 1e-2


def test_sampler_custom_advanced_matches_ksampler(executor, refs):
    from nodes import guiders as G
    from nodes import sampler_params as P
    from nodes import sampling as S
    from nodes import sigmas as SG

    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    sig = SG.BasicScheduler().run(None, refs[0], "karras", 6, 1.0)[0]
    hi, lo = SG.SplitSigmas().run(None, sig, 3)
    g = G.CFGGuider().run(None, refs[0], pos, neg, 5.0)[0]
    smp = P.KSamplerSelect().run(None, "euler")[0]
    full = S.KSampler().run(None, refs[0], 9, 6, 5.0, "euler", "karras", pos, neg, lat, 1.0)[0]["samples"]
    a = S.SamplerCustomAdvanced().run(None, S.RandomNoise().run(None, 9)[0], g, smp, hi, lat)[0]
    b = S.SamplerCustomAdvanced().run(None, S.DisableNoise().run(None)[0], g, smp, lo, a)[0]
    assert len(sig) == 7 and len(hi) == 4 and len(lo) == 4
    assert close(b["samples"], full)


def test_sampler_custom_runs_every_sampler_with_external_sigmas(refs):
    from nodes import sampler_params as P
    from nodes import sampling as S
    from nodes import sigmas as SG

    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    k = SG.KarrasScheduler().run(None, 4, 14.614642, 0.0291675, 7.0)[0]
    outs = {}
    for name in SAMPLER_NAMES:
        out, den = S.SamplerCustom().run(None, refs[0], True, 9, 5.0, pos, neg, P.KSamplerSelect().run(None, name)[0],
                                         k, lat)
        assert torch.isfinite(out["samples"]).all() and torch.isfinite(den["samples"]).all(), name
        outs[name] = out["samples"]
    assert not close(outs["euler"], outs["euler_ancestral"])  # step noise is used
    assert close(outs["euler"], outs["ddim"])  # ComfyUI's ddim is euler in sigma space


def test_start_state_and_integer_timestep_match_comfyui(refs):
    """One euler step at cfg 1 by hand: x = noise sqrt(1 + sigma_max^2) (ComfyUI's full-denoise scaling), the UNet
    fed x / sqrt(sigma^2 + 1) at integer timestep 999, result = x0 estimate / scaling factor."""
    from nodes import sampling as S
    from sampling.noise import prepare_noise

    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    got = S.KSampler().run(None, refs[0], 77, 1, 1.0, "euler", "normal", pos, neg, lat, 1.0)[0]["samples"]
    unet = refs[0].get()
    s0 = 14.614641189575195
    x = prepare_noise(lat["samples"], 77) * (1 + s0 ** 2) ** 0.5
    with torch.no_grad():
        eps = unet(x / (s0 ** 2 + 1) ** 0.5, torch.tensor([999]), encoder_hidden_states=pos[0][0]).sample
    want = (x - s0 * eps) / refs[0].meta.get("scaling_factor", 0.18215)
    assert close(got, want, 1e-5)


def test_model_sampling_nodes_change_the_schedule(refs):
    from nodes import model_sampling as M
    from nodes import sampling as S
    from nodes import sigmas as SG
    from tests.sampling.fixtures import floats, sigmas_json

    sd3 = M.ModelSamplingSD3().run(None, refs[0], 3.0)[0]
    got = SG.BasicScheduler().run(None, sd3, "simple", 10, 1.0)[0]
    want = floats(sigmas_json()["models"]["flow_shift3"]["calculate_sigmas"]["simple"]["10"])
    assert torch.allclose(got, torch.tensor(want), rtol=1e-6, atol=0)
    flux = M.ModelSamplingFlux().run(None, refs[0], 1.15, 0.5, 1024, 1024)[0]
    got = SG.BasicScheduler().run(None, flux, "normal", 4, 1.0)[0]
    want = floats(sigmas_json()["models"]["flux_shift1.15"]["calculate_sigmas"]["normal"]["4"])
    assert torch.allclose(got, torch.tensor(want), rtol=1e-6, atol=0)
    v = M.ModelSamplingDiscrete().run(None, refs[0], "v_prediction", False)[0]
    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    outs = [S.KSampler().run(None, m, 3, 4, 5.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
            for m in (refs[0], sd3, v, M.ModelSamplingAuraFlow().run(None, refs[0], 1.73)[0])]
    assert all(torch.isfinite(o).all() for o in outs)
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not close(outs[i], outs[j]), (i, j)
    resc = M.RescaleCFG().run(None, v, 0.7)[0]
    norm = M.CFGNorm().run(None, refs[0], 1.0)[0]
    for m, base in ((resc, outs[2]), (norm, outs[0])):
        o = S.KSampler().run(None, m, 3, 4, 5.0, "euler", "simple", pos, neg, lat, 1.0)[0]["samples"]
        assert torch.isfinite(o).all() and not close(o, base)


def test_sigma_nodes():
    from nodes import sigmas as SG

    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    hi, lo = SG.SplitSigmasDenoise().run(None, s, 0.5)
    assert hi.tolist() == [10.0, 5.0, 2.0] and lo.tolist() == [2.0, 1.0, 0.0]
    assert SG.FlipSigmas().run(None, s)[0].tolist()[0] == pytest.approx(1e-4)
    assert SG.SetFirstSigma().run(None, s, 7.0)[0].tolist()[0] == 7.0
    ext = SG.ExtendIntermediateSigmas().run(None, s, 1, -1.0, 4.0, "linear")[0]
    assert ext.tolist() == [10.0, 7.5, 5.0, 3.5, 2.0, 1.0, 0.0]
    ays = SG.AlignYourStepsScheduler().run(None, "SD1", 10, 1.0)[0]
    assert len(ays) == 11 and ays[-1] == 0 and ays[0] == pytest.approx(14.6146, rel=1e-4)
    assert len(SG.AlignYourStepsScheduler().run(None, "SDXL", 20, 0.5)[0]) == 11
    for node, args in ((SG.ExponentialScheduler(), (5, 14.6, 0.03)), (SG.PolyexponentialScheduler(), (5, 14.6, 0.03, 1.0)),
                       (SG.VPScheduler(), (5, 19.9, 0.1, 0.001)), (SG.LaplaceScheduler(), (5, 14.6, 0.03, 0.0, 0.5))):
        out = node.run(None, *args)[0]
        assert len(out) == 6 and out[-1] == 0 and bool((out[:-1] > 0).all()), node


def test_step_range_chain_equals_full(refs):
    from nodes import sampling as S

    pos, neg = _conds(refs)
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    node = S.SchedulerStepRange()
    full = S.KSampler().run(None, refs[0], 4, 8, 5.0, "euler_ancestral", "normal", pos, neg, lat, 1.0)[0]["samples"]
    a = node.run(None, refs[0], pos, neg, lat, 4, True, 8, 5.0, "euler", "normal", 0, 3)[0]
    b = node.run(None, refs[0], pos, neg, a, 4, True, 8, 5.0, "euler", "normal", 3, 10000)[0]
    f2 = S.KSampler().run(None, refs[0], 4, 8, 5.0, "euler", "normal", pos, neg, lat, 1.0)[0]["samples"]
    assert close(b["samples"], f2)
    assert not torch.allclose(full, f2)


# ------------------------------------------------------------------------------------------ text
def test_weight_parsing():
    assert C.parse_weights("a (b:1.5) c") == [("a ", 1.0), ("b", 1.5), (" c", 1.0)]
    w = C.parse_weights("((x))")
    assert w[0][0] == "x" and abs(w[0][1] - 1.21) < 1e-9
    assert C.parse_weights(r"a \(b\)") == [(r"a \(b\)", 1.0)]
    assert C.parse_weights("(x:oops)")[0] == ("x:oops", pytest.approx(1.1))


def test_encode_plain_matches_pipeline_encoding(refs):
    te = refs[1].get()
    tok, enc = te.tokenizers[0], te.encoders[0]
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = enc(ids, attention_mask=None)[0]
    cond = C.encode_text(refs[1], "a photo of a cat")[0][0]
    assert cond.shape == (1, 77, 64) and torch.equal(cond, ref)
    weighted = C.encode_text(refs[1], "a photo of a (cat:1.6)")[0][0]
    assert not torch.allclose(weighted, ref) and torch.allclose(weighted[:, :4], ref[:, :4], atol=1e-5)


def test_long_prompt_is_chunked(refs):
    text = " ".join(["red circle blue square"] * 30)  # 120 tokens
    cond, opts = C.encode_text(refs[1], text)[0]
    assert cond.shape == (1, 154, 64)
    assert opts["pooled_output"].shape == (1, 64)
    # prompts of different lengths still sample (conds repeated to a common length is not needed: batched apart)
    out = sample(None, refs[0], [[cond, opts]], C.encode_text(refs[1], ""), {"samples": torch.zeros(1, 4, 8, 8)},
                 Plan("euler", "normal", 2), 0, 2, cfg=5.0, noise=Noise(0))
    assert torch.isfinite(out.samples).all()


def test_clip_skip(refs):
    te = refs[1].get()
    tok, enc = te.tokenizers[0], te.encoders[0]
    ids = tok("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = enc(ids, output_hidden_states=True).hidden_states
        ref = enc.final_layer_norm(hs[-2]) if hasattr(enc, "final_layer_norm") else enc.text_model.final_layer_norm(hs[-2])
    from nodes.conditioning import CLIPSetLastLayer

    clip2 = CLIPSetLastLayer().run(None, refs[1], -2)[0]
    assert torch.allclose(C.encode_text(clip2, "a cat")[0][0], ref)
    assert refs[1].option("clip_skip") is None  # the input ref is untouched


def test_area_and_zero_out(refs):
    from nodes import conditioning as N

    pos, neg = _conds(refs)
    area = N.ConditioningSetArea().run(None, C.encode_text(refs[1], "a dog"), 32, 32, 32, 0, 1.0)[0]
    assert area[0][1]["area"] == (4, 4, 0, 4)
    comb = N.ConditioningCombine().run(None, pos, area)[0]
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    a = sample(None, refs[0], comb, neg, lat, Plan("euler", "normal", 3), 0, 3, cfg=5.0, noise=Noise(1)).samples
    b = sample(None, refs[0], pos, neg, lat, Plan("euler", "normal", 3), 0, 3, cfg=5.0, noise=Noise(1)).samples
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    z = N.ConditioningZeroOut().run(None, pos)[0]
    assert z[0][0].abs().sum() == 0 and pos[0][0].abs().sum() > 0


# ------------------------------------------------------------------------------------------ latents
def test_latent_nodes():
    e = L.EmptyLatentImage().run(None, 72, 64, 2)[0]["samples"]
    assert e.shape == (2, 4, 8, 9)
    s = {"samples": torch.randn(2, 4, 8, 8)}
    assert L.LatentUpscale().run(None, s, "bislerp", 128, 0, "disabled")[0]["samples"].shape == (2, 4, 16, 16)
    assert L.LatentUpscaleBy().run(None, s, "bilinear", 1.5)[0]["samples"].shape == (2, 4, 12, 12)
    assert L.LatentUpscale().run(None, s, "nearest-exact", 128, 64, "center")[0]["samples"].shape == (2, 4, 8, 16)
    r = L.RepeatLatentBatch().run(None, L.LatentFromBatch().run(None, s, 1, 1)[0], 3)[0]
    assert r["samples"].shape[0] == 3 and r["batch_index"] == [1, 2, 3]
    c = L.LatentComposite().run(None, s, {"samples": torch.zeros(1, 4, 4, 4)}, 16, 16, 0)[0]["samples"]
    assert c[:, :, 2:6, 2:6].abs().sum() == 0 and torch.equal(c[:, :, :2], s["samples"][:, :, :2])
    f = L.LatentComposite().run(None, s, {"samples": torch.zeros(1, 4, 4, 4)}, 16, 16, 16)[0]["samples"]
    assert torch.isfinite(f).all()
    b = L.LatentBlend().run(None, s, {"samples": torch.zeros(2, 4, 8, 8)}, 0.25)[0]["samples"]
    assert torch.allclose(b, s["samples"] * 0.25)


def test_slerp_endpoints_and_norm():
    a, b = {"samples": torch.randn(1, 4, 8, 8)}, {"samples": torch.randn(1, 4, 8, 8)}
    node = L.LatentSlerp()
    assert torch.allclose(node.run(None, a, b, 0.0, "slerp")[0]["samples"], a["samples"], atol=1e-5)
    assert torch.allclose(node.run(None, a, b, 1.0, "slerp")[0]["samples"], b["samples"], atol=1e-5)
    mid = node.run(None, a, b, 0.5, "slerp")[0]["samples"]
    lerp = node.run(None, a, b, 0.5, "lerp")[0]["samples"]
    assert mid.norm() > lerp.norm()  # slerp keeps noise on its shell
    n = Noise(1, 2, 0.5).make((1, 4, 8, 8))[0]
    assert abs(n.norm() / make_noise(1, (1, 4, 8, 8))[0].norm() - 1) < 0.1


# ------------------------------------------------------------------------------------------ vae, masks, upscale
def test_vae_nodes(refs):
    from nodes import vae as V

    img = torch.rand(1, 64, 72, 3, generator=torch.manual_seed(0))
    lat = V.VAEEncode().run(None, img, refs[2])[0]
    assert lat["samples"].shape == (1, 4, 8, 9)
    out = V.VAEDecode().run(None, lat, refs[2])[0]
    assert out.shape == (1, 64, 72, 3) and 0 <= out.min() and out.max() <= 1
    big = {"samples": torch.randn(1, 4, 16, 16, generator=torch.manual_seed(1))}
    t = V.VAEDecodeTiled().run(None, big, refs[2], 64, 32, 64, 8)[0]
    full = V.VAEDecode().run(None, big, refs[2])[0]
    assert t.shape == full.shape and (t - full).abs().mean() < 0.1
    te = V.VAEEncodeTiled().run(None, full, refs[2], 64, 32, 64, 8)[0]["samples"]
    assert te.shape == (1, 4, 16, 16)
    mask = torch.zeros(1, 64, 72)
    mask[:, 8:24, 8:24] = 1
    inp = V.VAEEncodeForInpaint().run(None, img, refs[2], mask, 6)[0]
    assert inp["noise_mask"].shape == (1, 1, 64, 72) and inp["noise_mask"].sum() > mask.sum()


def test_inpaint_model_conditioning_runs_9ch(session_env):
    from nodes import sampling as S
    from nodes.conditioning import InpaintModelConditioning

    m, c, v = session_env.model_store().load_checkpoint("tiny-sd1-inpaint.safetensors")
    assert m.meta["inpaint"]
    img = torch.rand(1, 64, 64, 3, generator=torch.manual_seed(0))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    pos, neg, lat = InpaintModelConditioning().run(None, C.encode_text(c, "x"), C.encode_text(c, ""), v, img, mask,
                                                   True)
    assert pos[0][1]["concat_latent_image"].shape == (1, 4, 8, 8) and "noise_mask" in lat
    out = S.KSampler().run(None, m, 1, 3, 5.0, "euler", "normal", pos, neg, lat, 1.0)[0]["samples"]
    assert torch.isfinite(out).all()


def test_mask_nodes():
    from nodes import masks as M

    img = torch.rand(2, 16, 16, 3)
    padded, mask = M.ImagePadForOutpaint().run(None, img, 8, 0, 8, 0, 4)
    assert padded.shape == (2, 16, 32, 3) and mask.shape == (1, 16, 32)
    assert mask[0, 8, 0] == 1 and mask[0, 8, 12] == 0 and 0 < mask[0, 8, 9] < 1
    dst = torch.zeros(1, 16, 16, 3)
    out = M.ImageCompositeMasked().run(None, dst, torch.ones(1, 4, 4, 3), 2, 3, False)[0]
    assert out[0, 3:7, 2:6].min() == 1 and out.sum() == 48
    s = M.ImageScaleToTotalPixels().run(None, torch.rand(1, 100, 200, 3), "bilinear", 0.01)[0]
    assert abs(s.shape[1] * s.shape[2] - 0.01 * 1024 * 1024) < 300
    m = torch.zeros(1, 32, 32)
    m[:, :, 16:] = 1
    blended, bm = M.ImageMaskBlend().run(None, torch.zeros(1, 32, 32, 3), torch.ones(1, 32, 32, 3), m, 4, False)
    assert blended[0, 0, 0].max() == 0 and blended[0, 0, 31].min() > 0.99 and 0.2 < blended[0, 0, 16, 0] < 0.8


def test_upscale_with_model(tmp_path):
    from safetensors.torch import save_file

    from engine.folders import ModelFolders
    from modelstore.kinds.upscale import RRDBNet
    from modelstore.models import ModelStore
    from modelstore.tensorfile import CheckpointError
    from nodes.upscale import ImageUpscaleWithModel

    torch.manual_seed(0)
    net = RRDBNet(nf=8, nb=1, gc=4, scale=4)
    (tmp_path / "upscale_models").mkdir()
    save_file(net.state_dict(), str(tmp_path / "upscale_models" / "tiny-x4.safetensors"))
    store = ModelStore(ModelFolders(tmp_path), device="cpu", dtype="fp32")
    um = store.load("upscale", "tiny-x4.safetensors")
    assert um.kind == "UPSCALE_MODEL" and um.meta["scale"] == 4 and um.__loom_nbytes__() <= 64
    out = ImageUpscaleWithModel().run(_Ctx(), um, torch.rand(1, 12, 10, 3))[0]
    assert out.shape == (1, 48, 40, 3)
    with torch.no_grad():
        ref = net(torch.rand(1, 3, 12, 10, generator=torch.manual_seed(3))).clamp(0, 1)
        got = ImageUpscaleWithModel().run(_Ctx(), um, torch.rand(1, 3, 12, 10, generator=torch.manual_seed(3))
                                          .movedim(1, -1))[0]
    assert torch.allclose(got.movedim(-1, 1), ref, atol=1e-5)
    # through the store: one load shared, counted in its budget, a changed file is a new model
    assert store.stats["loads"] == 1 and um.get() is um.get()
    ((key, where, nbytes),) = store.loaded()
    assert key.component == "upscale" and where == "device"
    assert nbytes == sum(p.numel() * 4 for p in net.parameters())
    save_file({"w": torch.zeros(2)}, str(tmp_path / "upscale_models" / "not-esrgan.safetensors"))
    with pytest.raises(CheckpointError, match="unsupported upscale model architecture"):
        store.load("upscale", "not-esrgan.safetensors")     # refused in the loader node, not later


def test_preview_latent2rgb_and_taesd(tmp_path, caplog):
    from safetensors.torch import save_file

    from engine.context import Env
    from modelstore.kinds.taesd import decoder
    from modelstore.models import ModelStore
    from nodes.sampler_core import latent_preview

    x0 = torch.randn(2, 4, 8, 8)
    env = Env(models_dir=tmp_path, model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
    assert latent_preview(x0, "sd1", env).size == (8, 8)  # no decoder file: latent2rgb at latent resolution
    assert not env.has_model_store
    (tmp_path / "vae_approx").mkdir()
    net = decoder()
    save_file(net.state_dict(), str(tmp_path / "vae_approx" / "taesd_decoder.safetensors"))
    img = latent_preview(x0, "sd1", env)
    assert img.size == (64, 64) and img.mode == "RGB"
    store = env.model_store()
    ((key, _, nbytes),) = store.loaded()           # loaded through the store, counted in its budget
    assert key.component == "taesd" and nbytes == sum(p.numel() * 4 for p in net.parameters())
    with torch.no_grad():
        want = (net(x0[:1]).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (want == __import__("numpy").asarray(img)).all()
    latent_preview(x0, "sd1", env)
    assert store.stats["loads"] == 1
    # a broken decoder file is reported (name and reason) and previews fall back to latent2rgb
    save_file({"1.weight": torch.zeros(64, 4, 3, 3)}, str(tmp_path / "vae_approx" / "taesdxl_decoder.safetensors"))
    with caplog.at_level("WARNING", logger="loom.preview"):
        assert latent_preview(x0, "sdxl", env).size == (8, 8)
    assert "taesdxl_decoder.safetensors could not be loaded" in caplog.text


