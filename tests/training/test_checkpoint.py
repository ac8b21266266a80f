"""The bundled checkpoint models/checkpoints/loom-shapes-64.safetensors: SD1 LDM layout, size, latent scale,
and that it actually follows prompts."""
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CKPT = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "loom-shapes-64.safetensors"
pytestmark = pytest.mark.skipif(not CKPT.exists(), reason="bundled checkpoint not built")


def _header():
    with open(CKPT, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def test_layout_and_size():
    h = _header()
    h.pop("__metadata__", None)
    assert CKPT.stat().st_size < 30e6
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in h)
    for p in prefixes:
        assert any(k.startswith(p) for k in h), p
    assert h["model.diffusion_model.input_blocks.0.0.weight"]["shape"][:2][1] == 4
    assert h["model.diffusion_model.out.2.weight"]["shape"][0] == 4
    assert h["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]["shape"][0] == 49408
    assert h["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"]["shape"][0] == 77
    assert h["first_stage_model.post_quant_conv.weight"]["shape"][0] == 4
    assert len(h["first_stage_model.encoder.mid.attn_1.q.weight"]["shape"]) == 4  # 1x1 conv
    ctx = h["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"]["shape"][1]
    assert ctx == h["cond_stage_model.transformer.text_model.final_layer_norm.weight"]["shape"][0]
    assert not any("down_blocks" in k or "to_q" in k and k.startswith("first_stage") for k in h)


@pytest.fixture(scope="module")
def model():
    from training.export import load_checkpoint
    torch.set_num_threads(1)
    return load_checkpoint(CKPT)


def test_vae_scale_and_reconstruction(model):
    from training import world
    from training.scorer import accuracy, score
    from training.train_vae import to_tensor, to_uint8
    _, vae, _ = model
    imgs, scenes = world.make_dataset(48, seed=31, two_shape_prob=0.0)
    with torch.no_grad():
        z = vae.encode(to_tensor(imgs)).latent_dist.mean
        rec = to_uint8(vae.decode(z).sample)
    s = float((z * 0.18215).std())
    assert 0.75 < s < 1.35, s  # the SD1 scaling factor fits this VAE
    acc = accuracy([score(r, sc) for r, sc in zip(rec, scenes)])
    assert acc["bg"] >= 0.95 and acc["color"] >= 0.9 and acc["pos"] >= 0.9, acc


def test_follows_prompts(model):
    from training import world
    from training.sample import generate
    from training.scorer import accuracy, score
    unet, vae, te = model
    scenes = world.eval_scenes(16, seed=5)
    prompts = [world.eval_caption(s) for s in scenes]
    imgs = generate(unet, te, vae, prompts, list(range(16)), steps=20, cfg=8.0, sampler="euler", batch=16)
    assert imgs.shape == (16, 64, 64, 3)
    acc = accuracy([score(im, sc) for im, sc in zip(imgs, scenes)])
    assert acc["bg"] >= 0.7 and acc["color"] >= 0.6, acc
