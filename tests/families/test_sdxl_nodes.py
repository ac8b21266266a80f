"""SDXL's text-encode node on a tiny SDXL-layout checkpoint (LDM UNet keys, ``conditioner.embedders.0.transformer``
CLIP-L + ``conditioner.embedders.1.model`` OpenCLIP-G): text_l reaches CLIP-L only, text_g CLIP-G only, the size
conditioning reaches the UNet's time ids, and txt2img runs through the engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.test_arch import _clip, _vae
from tests.models.ldm_export import clip_to_ldm, clip_to_openclip, unet_to_ldm, vae_to_ldm  # noqa: F401


@pytest.fixture(scope="module")
def xl_env(tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection

    from tests.nodes.conftest import make_env

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
                                attention_head_dim=[1, 2], use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=64 + 6 * 256).eval()
    te1, te2, vae = _clip("quick_gelu"), _clip("gelu", CLIPTextModelWithProjection, projection_dim=64), _vae()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te1, "conditioner.embedders.0.transformer.text_model."),
          **clip_to_openclip(te2, "conditioner.embedders.1.model.", False)}
    root = tmp_path_factory.mktemp("xl")
    (root / "checkpoints").mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "checkpoints" / "xl.safetensors"))
    return make_env(root, tmp_path_factory.mktemp("io"))


class _Ctx:
    def __init__(self, env):
        self.env = env


def test_clip_text_encode_sdxl_routes_texts_and_sizes(xl_env):
    from nodes import default_registry

    reg = default_registry()
    _, clip, _ = reg.get("CheckpointLoaderSimple")().run(_Ctx(xl_env), "xl.safetensors")
    enc = reg.get("CLIPTextEncodeSDXL")()
    kw = dict(width=512, height=768, crop_w=8, crop_h=16, target_width=1024, target_height=1024)
    a = enc.run(_Ctx(xl_env), clip, text_g="a red circle", text_l="a red circle", **kw)[0][0]
    b = enc.run(_Ctx(xl_env), clip, text_g="a red circle", text_l="a blue square", **kw)[0][0]
    c = enc.run(_Ctx(xl_env), clip, text_g="a blue square", text_l="a red circle", **kw)[0][0]
    L = 64  # CLIP-L features first, CLIP-G's after them
    assert not torch.equal(a[0][..., :L], b[0][..., :L]) and torch.equal(a[0][..., L:], b[0][..., L:])
    assert torch.equal(a[0][..., :L], c[0][..., :L]) and not torch.equal(a[0][..., L:], c[0][..., L:])
    assert torch.equal(a[1]["pooled_output"], b[1]["pooled_output"])  # pooled comes from CLIP-G
    assert a[1]["height"] == 768 and a[1]["crop_h"] == 16 and a[1]["target_width"] == 1024


def test_clip_text_encode_sdxl_long_text_l_short_text_g(xl_env):
    """Different window counts (a 100-token text_l, a short text_g): the shorter side is padded with the empty
    prompt's window, as ComfyUI's SDXL encode does (it used to fail on the concatenation)."""
    from nodes import default_registry

    reg = default_registry()
    _, clip, _ = reg.get("CheckpointLoaderSimple")().run(_Ctx(xl_env), "xl.safetensors")
    enc = reg.get("CLIPTextEncodeSDXL")()
    kw = dict(width=512, height=512, crop_w=0, crop_h=0, target_width=512, target_height=512)
    long = " ".join(["red circle"] * 50)
    cond = enc.run(_Ctx(xl_env), clip, text_g="a red circle", text_l=long, **kw)[0][0][0]
    short = enc.run(_Ctx(xl_env), clip, text_g="a red circle", text_l="a red circle", **kw)[0][0][0]
    empty_g = enc.run(_Ctx(xl_env), clip, text_g="", text_l="a red circle", **kw)[0][0][0]
    L = 64
    assert cond.shape[1] == 2 * 77 and short.shape[1] == 77
    assert torch.equal(cond[:, :77, L:], short[:, :, L:])  # CLIP-G's first window: its own text
    assert torch.equal(cond[:, 77:, L:], empty_g[:, :, L:])  # its second window: the empty prompt's


def test_sdxl_txt2img_with_sdxl_encoder(xl_env):
    from engine.executor import Executor
    from nodes import default_registry

    enc = lambda text: {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["ck", 1], "width": 64, "height": 64, "crop_w": 0, "crop_h": 0, "target_width": 64,
        "target_height": 64, "text_g": text, "text_l": text}}
    wf = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
          "p": enc("a red circle"), "n": enc(""),
          "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "ks": {"class_type": "KSampler", "inputs": {"model": ["ck", 0], "seed": 1, "steps": 3, "cfg": 5.0,
                                                      "sampler_name": "euler", "scheduler": "normal", "positive": ["p", 0],
                                                      "negative": ["n", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ck", 2]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "xl"}}}
    r = Executor(default_registry(), xl_env).run(wf)
    assert r.status == "success", r.error
    from PIL import Image

    a = np.asarray(Image.open(sorted(xl_env.output_dir.glob("xl*.png"))[-1]))
    assert a.shape == (16, 16, 3) and a.std() > 0  # the tiny VAE upsamples 2x: 8x8 latent -> 16 px


@pytest.fixture(scope="module")
def refiner_env(xl_env):
    """Adds a tiny SDXL refiner checkpoint (``conditioner.embedders.0.model`` OpenCLIP-G only; UNet with 5 time ids
    and the G width as cross-attention) beside the base one."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=[1, 2], use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=64 + 5 * 256).eval()
    g, vae = _clip("gelu", CLIPTextModelWithProjection, projection_dim=64), _vae()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_openclip(g, "conditioner.embedders.0.model.", False)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(xl_env.models_dir / "checkpoints" / "xl-refiner.safetensors"))
    return xl_env


def test_sdxl_base_then_refiner(refiner_env):
    """ComfyUI's SDXL base + refiner workflow: base KSamplerAdvanced runs steps 0-3 of 6 and returns the leftover
    noise, the refiner continues steps 3-6 without adding noise, conditioned by CLIPTextEncodeSDXLRefiner."""
    from engine.executor import Executor
    from nodes import default_registry

    enc = lambda text: {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["base", 1], "width": 64, "height": 64, "crop_w": 0, "crop_h": 0, "target_width": 64,
        "target_height": 64, "text_g": text, "text_l": text}}
    renc = lambda text, a: {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {
        "clip": ["ref", 1], "ascore": a, "width": 64, "height": 64, "text": text}}
    adv = lambda model, pos, neg, lat, noise, start, end, left: {"class_type": "KSamplerAdvanced", "inputs": {
        "model": [model, 0], "add_noise": noise, "noise_seed": 3, "steps": 6, "cfg": 4.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": [pos, 0], "negative": [neg, 0], "latent_image": [lat, 0],
        "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": left}}
    wf = {"base": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
          "ref": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl-refiner.safetensors"}},
          "p": enc("a red circle"), "n": enc(""), "rp": renc("a red circle", 6.0), "rn": renc("", 2.5),
          "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "k1": adv("base", "p", "n", "lat", "enable", 0, 3, "enable"),
          "k2": adv("ref", "rp", "rn", "k1", "disable", 3, 10000, "disable"),
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k2", 0], "vae": ["ref", 2]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "refined"}}}
    ex = Executor(default_registry(), refiner_env)
    r = ex.run(wf)
    assert r.status == "success", r.error
    from PIL import Image

    a = np.asarray(Image.open(sorted(refiner_env.output_dir.glob("refined*.png"))[-1]))
    assert a.shape == (16, 16, 3) and a.std() > 0
    # the aesthetic score reaches the refiner UNet: another score changes the result
    wf["rp"] = renc("a red circle", 9.0)
    wf["save"]["inputs"]["filename_prefix"] = "refined9"
    assert ex.run(wf).status == "success"
    b = np.asarray(Image.open(sorted(refiner_env.output_dir.glob("refined9*.png"))[-1]))
    assert not np.array_equal(a, b)


def test_sdxl_from_split_files_matches_checkpoint(xl_env):
    """SDXL as split files: UNETLoader on a UNet-only file (bare LDM keys), DualCLIPLoader type sdxl on CLIP-L and
    CLIP-G text-encoder files (HF layout). CLIPTextEncodeSDXL gives exactly the checkpoint path's conditioning
    for the same weights, and txt2img runs."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection

    from engine.executor import Executor
    from nodes import default_registry
    from tests.tiny_families import clip_file

    torch.manual_seed(2)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
                                attention_head_dim=[1, 2], use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=64 + 6 * 256).eval()
    l = _clip("quick_gelu")
    from transformers import CLIPTextConfig

    g = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=96,
                                                   num_hidden_layers=24, num_attention_heads=1, max_position_embeddings=77,
                                                   hidden_act="gelu", projection_dim=64, pad_token_id=0)).eval()
    vae = _vae()
    m = xl_env.models_dir
    for d in ("diffusion_models", "text_encoders", "vae"):
        (m / d).mkdir(exist_ok=True)
    c = lambda sd: {k: v.contiguous() for k, v in sd.items()}
    ldm = {k[len("model.diffusion_model."):]: v for k, v in unet_to_ldm(unet).items()}
    save_file(c(ldm), str(m / "diffusion_models" / "xl_unet.safetensors"))
    save_file(c(clip_file(l)), str(m / "text_encoders" / "xl_clip_l.safetensors"))
    save_file(c(clip_file(g)), str(m / "text_encoders" / "xl_clip_g.safetensors"))
    save_file(c(vae_to_ldm(vae, prefix="")), str(m / "vae" / "xl_vae.safetensors"))
    save_file(c({**unet_to_ldm(unet), **vae_to_ldm(vae),
                 **clip_to_ldm(l, "conditioner.embedders.0.transformer.text_model."),
                 **clip_to_openclip(g, "conditioner.embedders.1.model.", False)}), str(m / "checkpoints" / "xl24.safetensors"))
    reg = default_registry()
    ctx = _Ctx(xl_env)
    split_clip = reg.get("DualCLIPLoader")().run(ctx, "xl_clip_l.safetensors", "xl_clip_g.safetensors", "sdxl")[0]
    _, ck_clip, _ = reg.get("CheckpointLoaderSimple")().run(ctx, "xl24.safetensors")
    enc = reg.get("CLIPTextEncodeSDXL")()
    kw = dict(width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64, text_g="a red circle",
              text_l="a blue square")
    a, b = enc.run(ctx, split_clip, **kw)[0][0], enc.run(ctx, ck_clip, **kw)[0][0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["pooled_output"], b[1]["pooled_output"])
    model = reg.get("UNETLoader")().run(ctx, "xl_unet.safetensors", "default")[0]
    assert model.meta["arch"] == "sdxl"
    e = lambda text: {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["c", 0], **kw, "text_g": text,
                                                                       "text_l": text}}
    wf = {"u": {"class_type": "UNETLoader", "inputs": {"unet_name": "xl_unet.safetensors", "weight_dtype": "default"}},
          "c": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "xl_clip_l.safetensors",
                                                           "clip_name2": "xl_clip_g.safetensors", "type": "sdxl"}},
          "v": {"class_type": "VAELoader", "inputs": {"vae_name": "xl_vae.safetensors"}},
          "p": e("a red circle"), "n": e(""),
          "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "ks": {"class_type": "KSampler", "inputs": {"model": ["u", 0], "seed": 1, "steps": 3, "cfg": 5.0,
                                                      "sampler_name": "euler", "scheduler": "normal", "positive": ["p", 0],
                                                      "negative": ["n", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["v", 0]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "xlsplit"}}}
    r = Executor(reg, xl_env).run(wf)
    assert r.status == "success", r.error
