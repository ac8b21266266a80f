"""Model merging on two tiny SD1 checkpoints (different random weights, original single-file layout): the merged
UNet/CLIP tensors follow ComfyUI's formulas, per block by the original (LDM) block names; inputs stay unchanged."""
from __future__ import annotations

import pytest
import torch

from nodes import model_merge as M


@pytest.fixture(scope="module")
def two(models_dir, tmp_path_factory):
    from tests.nodes.conftest import make_env
    from tests.tiny_sd import build_tiny_sd1, save_checkpoint

    save_checkpoint(models_dir / "checkpoints" / "tiny-sd1-b.safetensors", *build_tiny_sd1(seed=7))
    env = make_env(models_dir, tmp_path_factory.mktemp("merge"))
    store = env.model_store()
    return store, store.load_checkpoint("tiny-sd1.safetensors"), store.load_checkpoint("tiny-sd1-b.safetensors")


def params(store, ref):
    with store.using(ref) as (m,):
        return {k: v.detach().clone() for k, v in m.state_dict().items()}


def clip_params(store, ref):
    with store.using(ref) as (t,):
        return {k: v.detach().clone() for k, v in t.encoders[0].state_dict().items()}


def test_simple_add_subtract(two):
    store, (a, ca, _), (b, cb, _) = two
    pa, pb = params(store, a), params(store, b)
    k = "down_blocks.0.resnets.0.conv1.weight"
    for ratio in (1.0, 0.25):
        pm = params(store, M.ModelMergeSimple().run(None, a, b, ratio)[0])
        assert torch.allclose(pm[k], pa[k] * ratio + pb[k] * (1 - ratio), atol=1e-6)
        assert torch.allclose(pm["mid_block.attentions.0.proj_in.weight"],
                              pa["mid_block.attentions.0.proj_in.weight"] * ratio
                              + pb["mid_block.attentions.0.proj_in.weight"] * (1 - ratio), atol=1e-6)
    assert torch.allclose(params(store, M.ModelMergeAdd().run(None, a, b)[0])[k], pa[k] + pb[k], atol=1e-6)
    sub = params(store, M.ModelMergeSubtract().run(None, a, b, 0.5)[0])
    assert torch.allclose(sub[k], (pa[k] - pb[k]) * 0.5, atol=1e-6)
    assert torch.equal(params(store, a)[k], pa[k])  # model1 untouched


def test_blocks_and_per_block_ratios_follow_the_original_names(two):
    store, (a, _, _), (b, _, _) = two
    pa, pb = params(store, a), params(store, b)
    pm = params(store, M.ModelMergeBlocks().run(None, a, b, 1.0, 0.0, 0.5)[0])
    assert torch.equal(pm["down_blocks.1.resnets.0.conv1.weight"], pa["down_blocks.1.resnets.0.conv1.weight"])
    assert torch.equal(pm["conv_in.weight"], pa["conv_in.weight"])  # input_blocks.0
    assert torch.allclose(pm["mid_block.resnets.1.conv2.weight"], pb["mid_block.resnets.1.conv2.weight"])
    k = "up_blocks.2.resnets.0.conv1.weight"
    assert torch.allclose(pm[k], (pa[k] + pb[k]) / 2, atol=1e-6)
    assert torch.allclose(pm["conv_out.weight"], (pa["conv_out.weight"] + pb["conv_out.weight"]) / 2, atol=1e-6)
    # ModelMergeSD1: input_blocks.4 (level 1, second resnet: down_blocks.1.resnets.0 is block 4) from model2 only
    ratios = {name: 1.0 for name in M.ModelMergeSD1.blocks}
    ratios["input_blocks.4."] = 0.0
    pm = params(store, M.ModelMergeSD1().run(None, a, b, **ratios)[0])
    assert torch.allclose(pm["down_blocks.1.resnets.0.conv1.weight"], pb["down_blocks.1.resnets.0.conv1.weight"])
    assert torch.equal(pm["down_blocks.1.resnets.1.conv1.weight"], pa["down_blocks.1.resnets.1.conv1.weight"])


def test_clip_merges(two):
    store, (_, ca, _), (_, cb, _) = two
    qa, qb = clip_params(store, ca), clip_params(store, cb)
    k = "encoder.layers.0.self_attn.q_proj.weight"
    k = k if k in qa else next(x for x in qa if x.endswith("q_proj.weight"))
    qm = clip_params(store, M.CLIPMergeSimple().run(None, ca, cb, 0.75)[0])
    assert torch.allclose(qm[k], qa[k] * 0.75 + qb[k] * 0.25, atol=1e-6)
    assert torch.allclose(clip_params(store, M.CLIPMergeAdd().run(None, ca, cb)[0])[k], qa[k] + qb[k], atol=1e-6)
    assert torch.allclose(clip_params(store, M.CLIPMergeSubtract().run(None, ca, cb, 2.0)[0])[k],
                          (qa[k] - qb[k]) * 2, atol=1e-5)
    with pytest.raises(ValueError, match="cannot merge"):
        M.merged(ca, two[1][0], (1.0, 0.0))


def test_merged_model_samples(two):
    from nodes.conditioning import encode_text
    from nodes.sampler_core import Noise, sample
    from nodes.samplers import Plan

    store, (a, ca, _), (b, _, _) = two
    pos, neg = encode_text(ca, "a cat"), encode_text(ca, "")
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    run = lambda m: sample(None, m, pos, neg, lat, Plan("euler", "normal", 2), 0, 2, cfg=3.0, noise=Noise(1)).samples
    same = run(M.ModelMergeSimple().run(None, a, b, 1.0)[0])
    assert torch.allclose(same, run(a), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(run(M.ModelMergeSimple().run(None, a, b, 0.5)[0]), run(a), atol=1e-2)
