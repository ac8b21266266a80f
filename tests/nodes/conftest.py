"""Fixtures for diffusion-node tests: a tiny SD1-architecture single-file checkpoint built from config at test
time (random weights, LDM key layout), a models dir holding it, and an Executor with the default registry."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def build_tiny_sd1(in_channels: int = 4, seed: int = 0):
    """(unet, vae, text_encoder): UNet (32,64,64) x2 layers, VAE (32,32,64,64), CLIP hidden 64, 2 layers."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8).eval()
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()
    return unet, vae, te


def save_checkpoint(path, unet, vae, te):
    from safetensors.torch import save_file

    from tests.models.ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm

    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_sd1()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("models")
    for d in ("checkpoints", "vae", "loras", "upscale_models", "vae_approx"):
        (root / d).mkdir()
    save_checkpoint(root / "checkpoints" / "tiny-sd1.safetensors", *tiny)
    save_checkpoint(root / "checkpoints" / "tiny-sd1-inpaint.safetensors", *build_tiny_sd1(in_channels=9, seed=1))
    from safetensors.torch import save_file

    from tests.models.ldm_export import vae_to_ldm

    save_file({k: v.contiguous() for k, v in vae_to_ldm(tiny[1], prefix="").items()},
              str(root / "vae" / "tiny-vae.safetensors"))
    return root


def make_env(models_dir, tmp_path):
    from engine.context import Env
    from engine.folders import ModelFolders
    from engine.models import ModelStore

    return Env(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
               models_dir=models_dir, model_store_factory=lambda env: ModelStore(ModelFolders(env.models_dir),
                                                                                 device="cpu", dtype="fp32"))


@pytest.fixture(scope="session")
def session_env(models_dir, tmp_path_factory):
    return make_env(models_dir, tmp_path_factory.mktemp("io"))


@pytest.fixture()
def executor(session_env):
    from engine.executor import Executor
    from nodes import default_registry

    return Executor(default_registry(), session_env)


@pytest.fixture(scope="session")
def refs(session_env):
    """(MODEL, CLIP, VAE) refs of the tiny checkpoint from the session store."""
    return session_env.model_store().load_checkpoint("tiny-sd1.safetensors")
