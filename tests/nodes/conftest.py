"""Fixtures for diffusion-node tests: a tiny SD1-architecture single-file checkpoint built from config at test
time (random weights, LDM key layout), a models dir holding it, and an Executor with the default registry."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


from tests.tiny_sd import build_tiny_sd1, save_checkpoint  # noqa: F401 (shared with tests/models, tests/server)


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
    from modelstore.models import ModelStore

    return Env(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
               models_dir=models_dir, model_store_factory=lambda env: ModelStore(env.folders,
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
