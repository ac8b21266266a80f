"""Fixtures for the transformer families: one models dir holding tiny Z-Image, FLUX.1, SD3 and Qwen-Image file sets in their
real single-file layouts (see tests/tiny_families.py), and an executor over it."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    from tests import tiny_families as tf

    root = tmp_path_factory.mktemp("family_models")
    sets = {"zimage": tf.write_zimage_set(root), "flux": tf.write_flux_set(root), "sd3": tf.write_sd3_set(root),
            "qwen_image": tf.write_qwen_image_set(root)}
    schnell = tf.tiny_flux(seed=16, guidance=False)  # FLUX.1 schnell: no guidance_in
    tf.save(tf.flux_file(schnell), root / "diffusion_models" / "flux1-schnell.safetensors")
    sets["flux_schnell"] = {"transformer": schnell}
    tf.write_checkpoints(root, sets)
    return root, sets


@pytest.fixture(scope="session")
def fam_env(family_models, tmp_path_factory):
    from tests.nodes.conftest import make_env

    return make_env(family_models[0], tmp_path_factory.mktemp("io"))


@pytest.fixture()
def fam_exec(fam_env):
    from engine.executor import Executor
    from nodes import default_registry

    return Executor(default_registry(), fam_env)
