"""FLUX.1 ControlNets on the tiny FLUX model: a FluxControlNetModel file in diffusers' layout (what InstantX,
Shakker-Labs and AliMama publish) loads through ControlNetLoader as the module that wrote it; ControlNetApplyAdvanced
on FLUX gives the latent of diffusers' FluxControlNetPipeline; the percent range and strength gate it; AliMama's
inpainting variant (control latent + keep-mask channel) applies through ControlNetInpaintingAliMamaApply; SD-UNet
ControlNets on FLUX and FLUX ControlNets on an SD UNet are refused by name."""
from __future__ import annotations

import copy

import pytest
import torch

from nodes import controlnet as CN
from tests import tiny_families as tf
from tests.families.test_family_equivalence import STEPS, _clip, _sigmas_and_noise, _store


def tiny_flux_controlnet(transformer, seed=21, mask=False):
    """A 1 double + 1 single block FluxControlNetModel from the tiny FLUX transformer, every weight random (the
    zero-initialised control projections would make it do nothing); ``mask``: AliMama's 64 + 4 control input."""
    from diffusers import FluxControlNetModel

    cn = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1, attention_head_dim=32,
                                              num_attention_heads=2)
    if mask:
        cn.controlnet_x_embedder = torch.nn.Linear(64 + 4, cn.inner_dim)
    return tf.randomize(cn, seed, std=0.1)


@pytest.fixture(scope="module")
def cn_models(family_models):
    root, sets = family_models
    cn = tiny_flux_controlnet(sets["flux"]["transformer"])
    inp = tiny_flux_controlnet(sets["flux"]["transformer"], seed=22, mask=True)
    tf.save(cn.state_dict(), root / "controlnet" / "flux-cn.safetensors")
    tf.save(inp.state_dict(), root / "controlnet" / "flux-cn-inpaint.safetensors")
    return root, sets, cn, inp


def hint(size=64):
    img = torch.zeros(1, size, size, 3)
    img[:, 8:40, 16:56, 0] = 1.0
    img[:, 30:60, 4:30, 2] = 0.7
    return img


def _setup(root):
    from modelstore.families import store as fs
    from nodes.family_encode import encode

    st = _store(root)
    clip = _clip(st, root, ["clip_l.safetensors", "t5xxl_fp16.safetensors"], "flux")
    model = fs.load_diffusion_model(st, root / "diffusion_models" / "flux1-dev.safetensors", "flux1-dev.safetensors")
    pos = [[c, {**o, "guidance": 3.5}] for c, o in encode(clip, "a red circle")]
    neg = encode(clip, "")
    return st, clip, model, pos, neg, st.load_vae("ae.safetensors")


def _sample(model, pos, neg, cfg=1.0, steps=STEPS):
    from nodes.family_sampling import sample

    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    return sample(None, model, pos, neg, lat, seed=11, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple")


def test_loader_reads_the_diffusers_layout(cn_models):
    root, _, cn, inp = cn_models
    st = _store(root)
    for name, src, mask in (("flux-cn.safetensors", cn, False), ("flux-cn-inpaint.safetensors", inp, True)):
        ref = st.load("controlnet", name)
        assert (ref.meta["model"], ref.meta["arch"], ref.meta["concat_mask"]) == ("flux_controlnet", "flux", mask)
        from modelstore.families.flux import pack

        x, ids = pack(torch.randn(1, 16, 8, 8))
        cond = pack(torch.randn(1, 17 if mask else 16, 8, 8))[0]
        kw = dict(hidden_states=x, controlnet_cond=cond, conditioning_scale=0.7, timestep=torch.tensor([0.6]),
                  guidance=torch.tensor([3.5]), pooled_projections=torch.randn(1, 64),
                  encoder_hidden_states=torch.randn(1, 5, 128), txt_ids=torch.zeros(5, 3), img_ids=ids,
                  return_dict=False)
        want = src(**kw)
        with st.using(ref) as (m,):
            got = m(**kw)
        assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], want[0] + want[1]))


def test_apply_matches_flux_controlnet_pipeline(cn_models):
    """Loom: ControlNetApplyAdvanced(strength 0.8, the VAE) -> KSampler euler/simple, cfg 1, guidance 3.5;
    diffusers: FluxControlNetPipeline with the same modules, sigmas and start noise. The pipeline samples the control
    image's VAE posterior while ComfyUI/Loom take its mean: its VAE is a copy whose log-variance output is pinned
    to the clamp floor (std e^-15), so both see the same control latent (the mean is untouched)."""
    from diffusers import FluxControlNetPipeline
    from transformers import CLIPTextModel

    from modelstore.families.flux import pack

    root, sets, cn, _ = cn_models
    st, clip, model, pos, neg, vae = _setup(root)
    ref_cn = st.load("controlnet", "flux-cn.safetensors")
    p2, n2 = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref_cn, hint(), 0.8, 0.0, 1.0, vae)
    ours = _sample(model, p2, n2)
    plain = _sample(model, pos, neg)
    meta = model.meta
    ours_z, plain_z = [(o - meta["shift_factor"]) * meta["scaling_factor"] for o in (ours, plain)]

    o = sets["flux"]
    sig, noise = _sigmas_and_noise(model)
    toks = {k: r.get().tokenizer for k, r in clip.encoders}
    te = CLIPTextModel(o["clip_l"].config).eval()
    te.load_state_dict({k.removeprefix("text_model."): v for k, v in o["clip_l"].state_dict().items()
                        if not k.startswith("text_projection") and not k.endswith("position_ids")}, strict=False)
    pvae = copy.deepcopy(o["vae"])
    with torch.no_grad():
        c = pvae.config.latent_channels
        pvae.encoder.conv_out.weight[c:] = 0.0
        pvae.encoder.conv_out.bias[c:] = -100.0
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = FluxControlNetPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
        vae=pvae, text_encoder=te, tokenizer=toks["clip_l"], text_encoder_2=o["t5"], tokenizer_2=toks["t5"],
        transformer=o["transformer"], controlnet=cn)
    ref = pipe("a red circle", control_image=hint().movedim(-1, 1) * 2 - 1, controlnet_conditioning_scale=0.8,
               height=64, width=64, num_inference_steps=STEPS, sigmas=sig[:-1].tolist(), guidance_scale=3.5,
               latents=pack(noise)[0], max_sequence_length=256, output_type="latent").images
    diff = (pack(ours_z)[0] - ref).abs().max().item()
    effect = (pack(plain_z)[0] - ref).abs().max().item()
    print(f"\nFLUX ControlNet vs FluxControlNetPipeline: max abs diff {diff:.3g} (ControlNet's effect {effect:.3g}, "
          f"latent max {ref.abs().max().item():.3g})")
    assert effect > 0.05
    assert diff <= 1e-4


def test_strength_range_and_refusals(cn_models):
    root, _, _, _ = cn_models
    st, clip, model, pos, neg, vae = _setup(root)
    ref_cn = st.load("controlnet", "flux-cn.safetensors")
    plain = _sample(model, pos, neg, cfg=2.0)
    both = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref_cn, hint(), 1.0, 0.0, 1.0, vae)
    full = _sample(model, *both, cfg=2.0)
    assert (full - plain).abs().max().item() > 1e-3  # with cfg 2: cond and uncond share the control (one call)
    # 4 euler steps on the flux schedule: a range late enough to hold no step leaves the sample as it was
    late = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref_cn, hint(), 1.0, 0.97, 0.99, vae)
    assert torch.allclose(_sample(model, *late, cfg=2.0), plain, atol=1e-6)
    first = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref_cn, hint(), 1.0, 0.0, 0.3, vae)
    part = _sample(model, *first, cfg=2.0)
    assert (part - plain).abs().max().item() > 1e-4 and (part - full).abs().max().item() > 1e-4
    # the old node conditions the positive only: cond and uncond are separate calls, still runs
    old = CN.ControlNetApply().run(None, pos, ref_cn, hint(), 1.0)[0]
    with pytest.raises(ValueError, match="VAE"):  # a FLUX ControlNet reads a latent: without a VAE, a clear error
        _sample(model, old, neg, cfg=2.0)
    # an SD ControlNet / T2I-Adapter chain on FLUX is refused by name
    fake = CN.ControlApply(type("R", (), {"meta": {"model": "t2i_adapter", "arch": "sd1"}})(), hint(), 1.0)
    with pytest.raises(ValueError, match="SD UNets"):
        _sample(model, [[c, {**o, "control": fake}] for c, o in pos], neg)
    # and a FLUX ControlNet on an SD UNet call
    with pytest.raises(ValueError, match="FLUX ControlNet cannot condition an SD UNet"):
        CN.ControlApply(ref_cn, hint(), 1.0).residuals(torch.zeros(1, 4, 8, 8), torch.tensor(500.0), None, None, None,
                                                      (8, 8), torch.float32)


def test_alimama_inpainting_applies_the_masked_image_and_keep_mask(cn_models):
    from nodes.flow_control import _control_latent
    from nodes.vae import encode

    root, _, _, _ = cn_models
    st, clip, model, pos, neg, vae = _setup(root)
    ref = st.load("controlnet", "flux-cn-inpaint.safetensors")
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 24:56] = 1.0
    p2, n2 = CN.ControlNetInpaintingAliMamaApply().run(None, pos, neg, ref, vae, hint(), mask, 0.9, 0.0, 1.0)
    link = p2[0][1]["control"]
    assert link is n2[0][1]["control"] and link.mask.shape == (1, 1, 64, 64)
    assert link.hint[:, 16:48, 24:56].abs().max() == 0 and torch.equal(link.hint[:, :16], hint()[:, :16])
    with st.using(model) as (den,):
        got = _control_latent(link, den, 2, (8, 8))
    from modelstore.families.flux import pack

    z = (encode(vae, link.hint) - den.latent.shift) * den.latent.scale
    keep = torch.ones(1, 1, 8, 8)
    keep[:, :, 2:6, 3:7] = 0.0
    want = pack(torch.cat([z, keep], 1))[0].repeat(2, 1, 1)
    assert got.shape == (2, 16, 68) and torch.allclose(got, want, atol=1e-6)
    out = _sample(model, p2, n2, cfg=2.0)
    assert (out - _sample(model, pos, neg, cfg=2.0)).abs().max().item() > 1e-4
    # on a ControlNet without a mask input the node is Apply ControlNet with the image as it is
    plain_cn = st.load("controlnet", "flux-cn.safetensors")
    a = CN.ControlNetInpaintingAliMamaApply().run(None, pos, neg, plain_cn, vae, hint(), mask, 0.9, 0.0, 1.0)[0]
    assert torch.equal(a[0][1]["control"].hint, hint()) and a[0][1]["control"].mask is None


def test_inpainting_controlnet_workflow_runs_through_the_engine(cn_models, fam_exec, fam_env):
    """UNETLoader + DualCLIPLoader + VAELoader + LoadImage (its alpha is the mask) + ControlNetLoader +
    ControlNetInpaintingAliMamaApply + KSampler + VAEDecode + SaveImage, in the API format."""
    import numpy as np
    from PIL import Image

    fam_env.input_dir.mkdir(parents=True, exist_ok=True)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[16:48, 16:48, 3] = 0  # transparent = masked
    Image.fromarray(rgba, "RGBA").save(fam_env.input_dir / "inpaint-src.png")
    wf = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                           "weight_dtype": "default"}},
          "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                               "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
          "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
          "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red circle"}},
          "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
          "img": {"class_type": "LoadImage", "inputs": {"image": "inpaint-src.png"}},
          "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "flux-cn-inpaint.safetensors"}},
          "apply": {"class_type": "ControlNetInpaintingAliMamaApply", "inputs": {
              "positive": ["p", 0], "negative": ["n", 0], "control_net": ["cn", 0], "vae": ["vae", 0],
              "image": ["img", 0], "mask": ["img", 1], "strength": 0.9, "start_percent": 0.0, "end_percent": 1.0}},
          "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "ks": {"class_type": "KSampler", "inputs": {"model": ["unet", 0], "seed": 3, "steps": 2, "cfg": 1.0,
                                                     "sampler_name": "euler", "scheduler": "simple",
                                                     "positive": ["apply", 0], "negative": ["apply", 1],
                                                     "latent_image": ["lat", 0], "denoise": 1.0}},
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "flux-cn"}}}
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    assert len(r.outputs["save"]["images"]) == 1
