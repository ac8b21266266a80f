"""SD2.x v-prediction end to end: a tiny SD2-layout checkpoint (LDM UNet with linear projections and head dim 64,
OpenCLIP text encoder at ``cond_stage_model.model.`` with the extra last layer SD2 drops, LDM VAE) marked v by a
sidecar ``.yaml`` (``parameterization: "v"``) runs txt2img through the engine and matches
StableDiffusionPipeline with a v-prediction Euler scheduler; read as epsilon instead, the result differs."""
from __future__ import annotations

import pytest
import torch

from tests.models.ldm_export import clip_to_openclip, unet_to_ldm, vae_to_ldm
from tests.models.test_arch import _clip, _vae

@pytest.fixture(scope="module")
def sd2_env(tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from tests.nodes.conftest import make_env

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=[1, 2], use_linear_projection=True).eval()
    te, vae = _clip("gelu"), _vae()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_openclip(te, "cond_stage_model.model.", True)}
    root = tmp_path_factory.mktemp("sd2")
    (root / "checkpoints").mkdir()
    for name in ("sd2-v.safetensors", "sd2-eps.safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "checkpoints" / name))
    (root / "checkpoints" / "sd2-v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    return make_env(root, tmp_path_factory.mktemp("io"))


def _wf(ckpt):
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 5, "steps": 10, "cfg": 6.0,
                                                      "sampler_name": "euler", "scheduler": "simple",
                                                      "positive": ["2", 0], "negative": ["3", 0],
                                                      "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": ckpt[:-12]}}}


def test_sd2_v_txt2img_matches_pipeline(sd2_env):
    import numpy as np
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from PIL import Image

    from engine.executor import Executor
    from nodes import default_registry

    ex = Executor(default_registry(), sd2_env)
    r = ex.run(_wf("sd2-v.safetensors"))
    assert r.status == "success", r.error
    loom = np.asarray(Image.open(sorted(sd2_env.output_dir.glob("sd2-v*.png"))[-1])).astype(np.float32) / 255
    store = sd2_env.model_store()
    model, clip, vae = store.load_checkpoint("sd2-v.safetensors")
    assert model.meta["prediction_type"] == "v_prediction"
    te = clip.get()
    sched = EulerDiscreteScheduler.from_config({**dict(model.meta["scheduler_config"]),
                                                "timestep_spacing": "trailing", "steps_offset": 0})
    pipe = StableDiffusionPipeline(vae=vae.get(), text_encoder=te.encoders[0], tokenizer=te.tokenizers[0],
                                   unet=model.get(), scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    # the tiny 2-level VAE maps 16 px to the engine's 8x8 latent (EmptyLatentImage 64 px)
    ref = pipe("a red circle", negative_prompt="", height=16, width=16, num_inference_steps=10, guidance_scale=6.0,
               generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    diff = np.abs(loom - ref).max()
    print(f"\nSD2-v txt2img euler/simple: max abs diff {diff:.3g} (8-bit PNG vs float pipeline)")
    assert diff <= 1.5 / 255
    r = ex.run(_wf("sd2-eps.safetensors"))
    assert r.status == "success"
    eps = np.asarray(Image.open(sorted(sd2_env.output_dir.glob("sd2-eps*.png"))[-1])).astype(np.float32) / 255
    assert np.abs(eps - loom).max() > 0.05  # the v reading matters
