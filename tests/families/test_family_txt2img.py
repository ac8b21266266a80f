"""txt2img through the engine for each transformer family on tiny files, and the editor's default graph.

``zimage_default_graph_api.json`` is the API form of comfyui-frontend-package 1.58.1's default graph (Z-Image
Turbo: UNETLoader, CLIPLoader lumina2, VAELoader ae, ModelSamplingAuraFlow 3, EmptySD3LatentImage 1024x1024,
KSampler seed 42 / 8 steps / cfg 1 / res_multistep / simple), converted node for node from its UI JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).parent


def _images(r, env):
    assert r.status == "success", r.error
    files = sorted((env.output_dir).rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return files


def txt2img(model_nodes: dict, pos, neg, size=64, sampler="euler", cfg=2.0, steps=4, vae="ae.safetensors",
            prefix="fam"):
    wf = dict(model_nodes)
    wf.update({
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["unet", 0], "seed": 7, "steps": steps, "cfg": cfg,
                                                    "sampler_name": sampler, "scheduler": "simple", "positive": pos,
                                                    "negative": neg, "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}},
    })
    return wf


def _enc(clip, text, node="CLIPTextEncode", **kw):
    return {"class_type": node, "inputs": {"clip": [clip, 0], "text": text, **kw}}


def _check_image(env, prefix, size):
    files = sorted(env.output_dir.glob(f"{prefix}*.png"))
    assert files, "no image written"
    a = np.asarray(Image.open(files[-1]))
    assert a.shape == (size, size, 3) and a.std() > 0
    return a


def test_zimage_txt2img(fam_exec, fam_env):
    wf = txt2img({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                                  "weight_dtype": "default"}},
                  "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
                  "p": _enc("clip", "a red circle"), "n": _enc("clip", "")}, ["p", 0], ["n", 0], prefix="zimg")
    assert fam_exec.run(wf).status == "success"
    _check_image(fam_env, "zimg", 64)


def test_flux_txt2img_with_guidance_nodes(fam_exec, fam_env):
    wf = txt2img({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                                  "weight_dtype": "default"}},
                  "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                      "clip_name2": "t5xxl_fp16.safetensors",
                                                                      "type": "flux"}},
                  "p0": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": "a red circle",
                                                                        "t5xxl": "a red circle on blue", "guidance": 2.0}},
                  "p": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["p0", 0], "guidance": 4.0}},
                  "n": _enc("clip", "")}, ["p", 0], ["n", 0], cfg=1.0, prefix="flux")
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    _check_image(fam_env, "flux", 64)


def test_sd3_txt2img_triple_loader(fam_exec, fam_env):
    wf = txt2img({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd3.5_medium.safetensors",
                                                                  "weight_dtype": "default"}},
                  "clip": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                        "clip_name2": "clip_g.safetensors",
                                                                        "clip_name3": "t5xxl_fp16.safetensors"}},
                  "p": {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": ["clip", 0], "clip_l": "a red circle",
                                                                      "clip_g": "a red circle", "t5xxl": "a red circle",
                                                                      "empty_padding": "none"}},
                  "n": _enc("clip", "")}, ["p", 0], ["n", 0], vae="sd3_vae.safetensors", prefix="sd3")
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    _check_image(fam_env, "sd3", 64)


def test_editor_default_graph_runs_to_an_image(fam_exec, fam_env):
    wf = json.loads((HERE / "zimage_default_graph_api.json").read_text())
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    _check_image(fam_env, "ComfyUI", 1024)


def test_flux_schnell_and_sd3_with_two_encoders(fam_exec, fam_env, family_models):
    """FLUX.1 schnell (no guidance embedding; ComfyUI's shift 1.0) and SD3 from DualCLIPLoader (clip_l + t5; the
    missing CLIP-G contributes zeros) through plain CLIPTextEncode."""
    from modelstore.families import store as fs
    from tests.families.test_family_loading import _store

    root = family_models[0]
    ref = fs.load_diffusion_model(_store(root), root / "diffusion_models" / "flux1-schnell.safetensors", "s")
    assert ref.meta["variant"] == "schnell" and ref.meta["model_sampling"] == ("flux", 1.0, 1.0)
    for unet, typ, vae, prefix in (("flux1-schnell.safetensors", "flux", "ae.safetensors", "schnell"),
                                   ("sd3.5_medium.safetensors", "sd3", "sd3_vae.safetensors", "sd3dual")):
        wf = txt2img({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
                      "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                          "clip_name2": "t5xxl_fp16.safetensors",
                                                                          "type": typ}},
                      "p": _enc("clip", "a red circle"), "n": _enc("clip", "")}, ["p", 0], ["n", 0], cfg=1.0,
                     vae=vae, prefix=prefix)
        r = fam_exec.run(wf)
        assert r.status == "success", r.error
        _check_image(fam_env, prefix, 64)


@pytest.mark.parametrize("ckpt,pos,prefix", [
    ("flux1-dev-aio.safetensors", {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["ck", 1], "clip_l": "a red circle", "t5xxl": "a red circle", "guidance": 3.0}}, "aioflux"),
    ("sd3.5_medium_incl_clips.safetensors", {"class_type": "CLIPTextEncode", "inputs": {
        "clip": ["ck", 1], "text": "a red circle"}}, "aiosd3")])
def test_all_in_one_checkpoints(fam_exec, fam_env, ckpt, pos, prefix):
    """CheckpointLoaderSimple on FLUX.1 / SD3 all-in-one files (ComfyUI's layout): MODEL, CLIP and VAE from one
    file; the same pipeline as the split loaders."""
    wf = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}, "p": pos,
          "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": ""}},
          "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "ks": {"class_type": "KSampler", "inputs": {"model": ["ck", 0], "seed": 7, "steps": 3, "cfg": 2.0,
                                                      "sampler_name": "euler", "scheduler": "simple",
                                                      "positive": ["p", 0], "negative": ["n", 0],
                                                      "latent_image": ["lat", 0], "denoise": 1.0}},
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ck", 2]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}}
    r = fam_exec.run(wf)
    assert r.status == "success", r.error
    _check_image(fam_env, prefix, 64)


def test_all_in_one_matches_split_files(family_models):
    """The checkpoint's MODEL equals the split file's weights (same tiny DiT)."""
    import torch

    from tests.families.test_family_loading import _store

    root, sets = family_models
    st = _store(root)
    model, clip, vae = st.load_checkpoint("flux1-dev-aio.safetensors")
    assert model.meta["family"] == "flux" and clip.meta["clip_type"] == "flux"
    a, b = model.get().module.state_dict(), sets["flux"]["transformer"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
