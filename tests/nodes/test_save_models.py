"""Saving models: a checkpoint saved by CheckpointSave holds exactly the loaded file's tensors (names, shapes,
values) when nothing was changed, holds the merged weights after a merge, and loads again; ModelSave, VAESave and
CLIPSave write what their loaders read."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nodes import save_models as S
from nodes.model_merge import ModelMergeSimple


@pytest.fixture(scope="module")
def env(models_dir, tmp_path_factory):
    from tests.nodes.conftest import make_env
    from tests.tiny_sd import build_tiny_sd1, save_checkpoint

    if not (models_dir / "checkpoints" / "tiny-sd1-b.safetensors").exists():
        save_checkpoint(models_dir / "checkpoints" / "tiny-sd1-b.safetensors", *build_tiny_sd1(seed=7))
    return make_env(models_dir, tmp_path_factory.mktemp("save"))


class Ctx:
    def __init__(self, env):
        self.env = env


def saved(env, res):
    info = res.ui["models"][0]
    return env.output_dir / info["subfolder"] / info["filename"]


def test_checkpoint_save_round_trips_the_file(env, models_dir):
    store = env.model_store()
    model, clip, vae = store.load_checkpoint("tiny-sd1.safetensors")
    res = S.CheckpointSave().run(Ctx(env), model, clip, vae, "checkpoints/rt", prompt={"1": {"class_type": "X"}},
                                 extra_pnginfo={"workflow": {"nodes": []}})
    path = saved(env, res)
    assert path.name == "rt_00001_.safetensors" and path.parent.name == "checkpoints"
    original = load_file(str(models_dir / "checkpoints" / "tiny-sd1.safetensors"))
    got = load_file(str(path))
    assert set(got) == set(original)
    for k, v in original.items():
        assert got[k].shape == v.shape and torch.equal(got[k], v), k
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == {"1": {"class_type": "X"}} and json.loads(meta["workflow"]) == {"nodes": []}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"


def test_saved_merge_loads_with_the_merged_weights(env, models_dir):
    store = env.model_store()
    a, clip, vae = store.load_checkpoint("tiny-sd1.safetensors")
    b, _, _ = store.load_checkpoint("tiny-sd1-b.safetensors")
    merged = ModelMergeSimple().run(None, a, b, 0.5)[0]
    path = saved(env, S.CheckpointSave().run(Ctx(env), merged, clip, vae, "merged"))
    (models_dir / "checkpoints" / "merged-saved.safetensors").write_bytes(path.read_bytes())
    again, _, _ = store.load_checkpoint("merged-saved.safetensors")
    with store.using(merged, again) as (m1, m2):
        for (k, v), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
            assert k == k2 and torch.allclose(v, v2), k


def test_model_vae_and_clip_save(env, models_dir):
    store = env.model_store()
    model, clip, vae = store.load_checkpoint("tiny-sd1.safetensors")
    original = load_file(str(models_dir / "checkpoints" / "tiny-sd1.safetensors"))
    unet = load_file(str(saved(env, S.ModelSave().run(Ctx(env), model, "diffusion_models/m"))))
    assert set(unet) == {k for k in original if k.startswith("model.diffusion_model.")}
    vpath = saved(env, S.VAESave().run(Ctx(env), vae, "vae/v"))
    vsd = load_file(str(vpath))
    assert all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in vsd)
    assert torch.equal(vsd["decoder.conv_out.weight"], original["first_stage_model.decoder.conv_out.weight"])
    (models_dir / "vae" / "saved-vae.safetensors").write_bytes(vpath.read_bytes())
    ref = store.load_vae("saved-vae.safetensors")
    with store.using(ref, vae) as (v1, v2):
        assert all(torch.equal(x, y) for x, y in zip(v1.state_dict().values(), v2.state_dict().values()))
    res = S.CLIPSave().run(Ctx(env), clip, "clip/c")
    files = [f["filename"] for f in res.ui["models"]]
    assert len(files) == 1 and files[0].startswith("c_clip_")
    csd = load_file(str(env.output_dir / "clip" / files[0]))
    assert torch.equal(csd["text_model.embeddings.token_embedding.weight"],
                       original["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"])
