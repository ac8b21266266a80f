"""T2I-Adapters through the ControlNet loader and apply nodes, on the tiny SD1 model: files in TencentARC's original
layout and in diffusers' layout load as the module that wrote them (full, light and the SDXL variant), unsupported
variants are refused by name, and a workflow with the adapter gives the same pixels as diffusers'
StableDiffusionAdapterPipeline; strength 0 and an empty percent range are the plain sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodes import controlnet as CN
from nodes.conditioning import encode_text
from tests.tiny_t2i_adapter import adapter_to_original, build_tiny_adapter, save_adapter

FILES = [  # (file, kind, in_channels, layout, arch)
    ("ad-full-orig.safetensors", "full_adapter", 3, "original", "sd1"),
    ("ad-full-diffusers.safetensors", "full_adapter", 3, "diffusers", "sd1"),
    ("ad-light-orig.safetensors", "light_adapter", 1, "original", "sd1"),
    ("ad-light-diffusers.safetensors", "light_adapter", 3, "diffusers", "sd1"),
    ("ad-xl-orig.safetensors", "full_adapter_xl", 3, "original", "sdxl"),
    ("ad-xl-diffusers.safetensors", "full_adapter_xl", 1, "diffusers", "sdxl"),
]


class Ctx:
    def __init__(self, env):
        self.env = env


@pytest.fixture(scope="module")
def ad_env(models_dir, tmp_path_factory):
    from tests.nodes.conftest import make_env

    d = models_dir / "controlnet"
    d.mkdir(exist_ok=True)
    mods = {}
    for name, kind, cin, layout, _ in FILES:
        mods[name] = build_tiny_adapter(kind, cin)
        save_adapter(d / name, mods[name], layout)
    full = build_tiny_adapter("full_adapter")
    orig = adapter_to_original(full)
    save_adapter(d / "ad-skep.safetensors", full, extra={"body.0.skep.weight": torch.zeros(32, 32, 1, 1)})
    assert "body.2.in_conv.weight" in orig and "body.5.block2.bias" in orig  # the flat original list, nrb = 2
    env = make_env(models_dir, tmp_path_factory.mktemp("t2i"))
    return env, mods


def hint_pixels():
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.zeros((64, 64, 3), np.uint8)
    img[(xx - 24) ** 2 + (yy - 30) ** 2 < 200] = 255
    img[40:56, 36:60, 1] = 200
    return img


@pytest.mark.parametrize("name,kind,cin,layout,arch", FILES, ids=[f[0].split(".")[0] for f in FILES])
def test_loader_reads_each_layout_as_the_module_that_wrote_it(ad_env, name, kind, cin, layout, arch):
    env, mods = ad_env
    ref = CN.ControlNetLoader().run(Ctx(env), name)[0]
    assert ref.kind == "CONTROL_NET"
    assert (ref.meta["model"], ref.meta["layout"], ref.meta["arch"]) == ("t2i_adapter", layout, arch)
    side = 128 if kind == "full_adapter_xl" else 64
    x = torch.rand(2, cin, side, side)
    want = mods[name](x)
    with env.model_store().using(ref) as (m,):
        assert m.config.adapter_type == kind and m.config.in_channels == cin
        got = m(x)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_unsupported_variants_and_junk_are_refused(ad_env, models_dir):
    env, _ = ad_env
    with pytest.raises(Exception, match="skep"):
        env.model_store().load("controlnet", "ad-skep.safetensors")
    from safetensors.torch import save_file

    save_file({"body.0.weight": torch.zeros(2, 2)}, str(models_dir / "controlnet" / "junk-ad.safetensors"))
    with pytest.raises(Exception, match="not a ControlNet"):
        env.model_store().load("controlnet", "junk-ad.safetensors")


def _wf(strength, start=0.0, end=1.0, node="ControlNetApplyAdvanced", steps=10):
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
          "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
          "4": {"class_type": "LoadImage", "inputs": {"image": "t2i-hint.png"}},
          "6": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "ad-full-orig.safetensors"}},
          "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": SEED, "steps": steps, "cfg": 7.5,
                                                    "sampler_name": "euler", "scheduler": "simple",
                                                    "positive": ["7", 0], "negative": ["7", 1],
                                                    "latent_image": ["8", 0], "denoise": 1.0}},
          "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
          "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}}
    if node == "ControlNetApplyAdvanced":
        wf["7"] = {"class_type": node, "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["6", 0], "image": ["4", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
    else:  # the old node conditions the positive only
        wf["7"] = {"class_type": node, "inputs": {"conditioning": ["2", 0], "control_net": ["6", 0],
                                                  "image": ["4", 0], "strength": strength}}
        wf["9"]["inputs"]["negative"] = ["3", 0]
        wf["9"]["inputs"]["positive"] = ["7", 0]
    return wf


PROMPT, SEED = "a red circle on a blue square", 42


def test_workflow_matches_the_diffusers_adapter_pipeline(ad_env, refs):
    """Loom: ControlNetLoader(original-layout file) -> ControlNetApplyAdvanced(strength 0.8) -> KSampler euler/simple,
    10 steps; diffusers: StableDiffusionAdapterPipeline with the same modules, EulerDiscreteScheduler (trailing) and
    ComfyUI's start latent (see tests/nodes/test_diffusers_equivalence.py for why)."""
    import diffusers

    from engine.executor import Executor
    from nodes import default_registry
    from sampling.noise import prepare_noise

    env, mods = ad_env
    env.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hint_pixels()).save(env.input_dir / "t2i-hint.png")
    r = Executor(default_registry(), env).run(_wf(0.8))  # end to end, to a preview image
    assert r.status == "success", r.error
    assert len(r.outputs["11"]["images"]) == 1
    loom_latent = _last_latent(env, 0.8)

    model, clip, vae = refs
    te = clip.get()
    sched = diffusers.EulerDiscreteScheduler.from_config({**dict(model.meta["scheduler_config"]),
                                                          "timestep_spacing": "trailing", "steps_offset": 0})
    pipe = diffusers.StableDiffusionAdapterPipeline(
        vae=vae.get(), text_encoder=te.encoders[0], tokenizer=te.tokenizers[0], unet=model.get(),
        adapter=mods["ad-full-orig.safetensors"], scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    sched.set_timesteps(10)
    smax = float(((1 - sched.alphas_cumprod[-1]) / sched.alphas_cumprod[-1]) ** 0.5)
    latents = prepare_noise(torch.zeros(1, 4, 8, 8), SEED) * (1 + smax ** 2) ** 0.5 / float(sched.init_noise_sigma)
    hint = torch.from_numpy(hint_pixels().astype(np.float32) / 255.0).movedim(-1, 0)[None]
    ref = pipe(PROMPT, image=hint, negative_prompt="", height=64, width=64, num_inference_steps=10,
               guidance_scale=7.5, latents=latents, adapter_conditioning_scale=0.8, output_type="latent").images
    ref = ref / vae.get().config.scaling_factor
    diff = (loom_latent - ref).abs().max().item()
    plain = _last_latent(env, 0.0)
    effect = (plain - ref).abs().max().item()
    print(f"T2I-Adapter vs StableDiffusionAdapterPipeline: latent max abs diff {diff:.3g} "
          f"(adapter's own effect on the latent {effect:.3g}, max |latent| {ref.abs().max().item():.3g})")
    # the tiny random UNet's latents are large (|z| up to ~230): float32 rounding alone leaves ~5e-4 between Loom and
    # diffusers' plain StableDiffusionPipeline on this model, so the bound is relative
    # the adapter matters (a third of the range), so matching it means something
    assert effect > 0.1 * ref.abs().max().item()
    assert diff <= 1e-5 * ref.abs().max().item()


def _last_latent(env, strength, start=0.0, end=1.0, node="ControlNetApplyAdvanced", steps=10):
    """The KSampler's LATENT (raw VAE latent) of the workflow, through a capturing sink."""
    from engine.executor import Executor
    from engine.node import Node, Registry, Socket
    from nodes import all_nodes

    got = {}

    class CaptureLatent(Node):
        """Test sink: stores its LATENT input."""
        category = "test"
        output_node = True
        inputs = (Socket("samples", "LATENT"),)
        outputs = ()
        not_idempotent = True

        def run(self, ctx, samples):
            got["z"] = samples["samples"]
            return ()

    wf = _wf(strength, start, end, node, steps)
    del wf["10"], wf["11"]
    wf["12"] = {"class_type": "CaptureLatent", "inputs": {"samples": ["9", 0]}}
    r = Executor(Registry(all_nodes() + [CaptureLatent]), env).run(wf)
    assert r.status == "success", r.error
    return got["z"]


def test_strength_zero_and_percent_ranges(ad_env, refs):
    env, _ = ad_env
    env.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hint_pixels()).save(env.input_dir / "t2i-hint.png")
    plain = _last_latent(env, 0.0, steps=4)
    full = _last_latent(env, 1.0, steps=4)
    assert not torch.allclose(plain, full, atol=1e-3)
    # 4 steps: timesteps 999, 749, 499, 249 (percents 0, .25, .5, .75): [0.8, 0.9] holds none of them
    assert torch.allclose(_last_latent(env, 1.0, 0.8, 0.9, steps=4), plain, atol=1e-5)
    first = _last_latent(env, 1.0, 0.0, 0.3, steps=4)
    assert not torch.allclose(first, plain, atol=1e-3) and not torch.allclose(first, full, atol=1e-3)
    # the old node (positive only) runs and differs from both
    old = _last_latent(env, 1.0, node="ControlNetApply", steps=4)
    assert not torch.allclose(old, plain, atol=1e-3) and not torch.allclose(old, full, atol=1e-3)
    # a strength-0 link in a chain contributes nothing; the adapter ran once per latent size (cached features)
    ref = env.model_store().load("controlnet", "ad-full-orig.safetensors")
    pos = encode_text(refs[1], "x")
    link = CN.ControlApply(ref, torch.rand(1, 64, 64, 3), 0.0)
    assert link.residuals(torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.cat([pos[0][0]] * 2), None, None,
                          (8, 8), torch.float32) == {}
    on = CN.ControlApply(ref, torch.rand(1, 64, 64, 3), 0.5, previous=link)
    a = on.residuals(torch.randn(2, 4, 8, 8), torch.tensor(500.0), None, None, None, (8, 8), torch.float32)
    feats = on.feats[1]
    b = on.residuals(torch.randn(2, 4, 8, 8), torch.tensor(100.0), None, None, None, (8, 8), torch.float32)
    assert on.feats[1] is feats
    assert [t.shape for t in a["down_intrablock_additional_residuals"]] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    assert all(torch.equal(x, y) for x, y in zip(a["down_intrablock_additional_residuals"],
                                                b["down_intrablock_additional_residuals"]))
    assert "mid_block_additional_residual" not in a


def test_one_channel_adapter_reads_the_hint_mean_at_the_latent_size(ad_env):
    env, mods = ad_env
    ref = env.model_store().load("controlnet", "ad-light-orig.safetensors")
    hint = torch.rand(1, 32, 32, 3)  # half the latent's pixel size: resized (nearest-exact) to 64x64 first
    link = CN.ControlApply(ref, hint, 1.0)
    got = link.residuals(torch.randn(2, 4, 8, 8), torch.tensor(500.0), None, None, None, (8, 8), torch.float32)
    big = hint.movedim(-1, 1).repeat_interleave(2, -1).repeat_interleave(2, -2)
    want = mods["ad-light-orig.safetensors"](big.mean(1, keepdim=True))
    got = got["down_intrablock_additional_residuals"]
    assert [t.shape for t in got] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    assert all(torch.allclose(g, w.expand_as(g), atol=1e-6) for g, w in zip(got, want))


def test_adapter_chained_on_a_controlnet_and_in_an_area(ad_env, models_dir, refs, tiny):
    """A T2I-Adapter applied on top of a ControlNet gives both kinds of residuals in one call; in an area
    (ConditioningSetArea) its features are those of the hint cut to the area."""
    from tests.tiny_controlnet import build_tiny_controlnet, save_controlnet

    env, mods = ad_env
    save_controlnet(models_dir / "controlnet" / "cn-for-chain.safetensors", build_tiny_controlnet(tiny[0]))
    cn = env.model_store().load("controlnet", "cn-for-chain.safetensors")
    ad = env.model_store().load("controlnet", "ad-full-orig.safetensors")
    pos = encode_text(refs[1], "x")
    h = torch.rand(1, 64, 64, 3)
    once = CN.ControlNetApply().run(None, pos, cn, h, 1.0)[0]
    both = CN.ControlNetApply().run(None, once, ad, h, 0.5)[0]
    x, t, emb = torch.randn(1, 4, 8, 8), torch.tensor(300.0), pos[0][0]
    out = both[0][1]["control"].residuals(x, t, emb, None, None, (8, 8), torch.float32)
    assert {"down_block_additional_residuals", "mid_block_additional_residual",
            "down_intrablock_additional_residuals"} <= set(out)
    area = (4, 4, 2, 4)  # h, w, y, x in latent units
    got = CN.ControlApply(ad, h, 1.0).residuals(torch.randn(1, 4, 4, 4), t, emb, None, area, (8, 8), torch.float32)
    want = mods["ad-full-orig.safetensors"](h.movedim(-1, 1)[:, :, 16:48, 32:64])
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got["down_intrablock_additional_residuals"], want))


def test_sdxl_adapter_features_fit_an_sdxl_unet_including_the_mid_block(ad_env):
    """The SDXL adapter's 4 features land in an SDXL-shaped UNet (DownBlock2D, CrossAttn, CrossAttn: the tiny
    adapter's 16/32/48 channels) at an odd latent size (7x9: the hint is resized to 56x72 rounded up to 16 = 64x80):
    the UNet takes all of them, the 4th in the mid block (diffusers adds it only when the shape matches, so the
    output with 4 features differs from the output with the first 3)."""
    from diffusers import UNet2DConditionModel

    env, mods = ad_env
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32, 48), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=[1, 2, 2], norm_num_groups=8,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=32 + 6 * 8).eval()
    ref = env.model_store().load("controlnet", "ad-xl-orig.safetensors")
    x, t, emb = torch.randn(1, 4, 7, 9), torch.tensor(400.0), torch.randn(1, 5, 32)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[56.0, 72, 0, 0, 56, 72]])}
    res = CN.ControlApply(ref, torch.rand(1, 56, 72, 3), 1.0).residuals(x, t, emb, added, None, (7, 9), torch.float32)
    feats = res["down_intrablock_additional_residuals"]
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 4, 5), (32, 4, 5), (48, 2, 3), (48, 2, 3)]
    with torch.no_grad():
        full = unet(x, t, emb, added_cond_kwargs=added, down_intrablock_additional_residuals=list(feats)).sample
        three = unet(x, t, emb, added_cond_kwargs=added, down_intrablock_additional_residuals=list(feats[:3])).sample
    assert not torch.allclose(full, three, atol=1e-5)
