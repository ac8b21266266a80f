"""CLIP vision nodes: ComfyUI 0.3.75's declarations, loading transformers' CLIPModel layout from the tensor shapes,
encoding, unCLIPConditioning, and Loom's ranking node, on a tiny CLIP built from config and on the bundled
loom-shapes-clip (trained on the shapes world)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Env, Executor
from engine.schema import object_info
from nodes import default_registry

ROOT = Path(__file__).resolve().parents[2]
REF = Path(__file__).parent / "data" / "comfyui-0.3.75-clip-vision.json"
BUNDLED_CLIP = ROOT / "models" / "clip_vision" / "loom-shapes-clip.safetensors"


def tiny_clip(with_text: bool = True, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=1, hidden_act="quick_gelu", bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=1, image_size=32, patch_size=8, hidden_act="quick_gelu"),
                     projection_dim=16)
    m = CLIPModel(cfg).eval()
    sd = {k: v for k, v in m.state_dict().items() if not k.endswith("position_ids")}
    if not with_text:
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    return m, sd


@pytest.fixture
def env(tmp_path):
    from safetensors.torch import save_file
    models = tmp_path / "models"
    (models / "clip_vision").mkdir(parents=True)
    m, sd = tiny_clip()
    save_file(sd, str(models / "clip_vision" / "tiny-clip.safetensors"))
    save_file(tiny_clip(False)[1], str(models / "clip_vision" / "tiny-vision.safetensors"))
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    e = Env(input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", models_dir=models,
            folders=ModelFolders(models), model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
    e.tiny = m
    return e


def test_declarations_match_comfyui():
    ref = json.loads(REF.read_text())
    mine = object_info(default_registry())
    for name, r in ref.items():
        info = mine[name]
        assert info["input_order"] == r["input_order"], name
        for sect in ("required", "optional"):
            for k, spec in r["input"].get(sect, {}).items():
                got = info["input"][sect][k]
                assert got[0] == spec[0] or (isinstance(spec[0], list) and isinstance(got[0], list)), (name, k)
                if len(spec) > 1:
                    assert {o: got[1].get(o) for o in spec[1]} == spec[1], (name, k)
        for key in ("output", "output_name", "output_is_list", "category", "output_node", "display_name"):
            assert info[key] == r[key], (name, key)
    assert mine["CLIPVisionEncode"]["input"]["required"]["crop"][0] == ["center", "none"]


def test_loader_reads_the_config_from_shapes_and_encodes_like_transformers(env):
    from modelstore.clip_vision import load
    cv = load(env.models_dir / "clip_vision" / "tiny-clip.safetensors")
    assert cv.image_size == 32 and cv.has_text
    img = torch.rand(2, 48, 40, 3)
    got = cv.encode_image(img, "center")
    with torch.no_grad():
        want = env.tiny.get_image_features(pixel_values=cv.preprocess(img, "center"))
    want = getattr(want, "pooler_output", want)
    assert got["image_embeds"].shape == (2, 16) and torch.allclose(got["image_embeds"], want, atol=1e-5)
    assert got["last_hidden_state"].shape == (2, 17, 32) and got["penultimate_hidden_states"].shape == (2, 17, 32)
    px = cv.preprocess(img, "center")
    assert px.shape == (2, 3, 32, 32)


def run(env, wf):
    r = Executor(default_registry(), env).run(wf)
    assert r.status == "success", (r.error or {}).get("exception_message")
    return r


def test_rank_node_sorts_by_cosine_similarity(env):
    from nodes.clip_vision import ClipVisionRef, LoomCLIPRankImages
    from modelstore.clip_vision import load
    p = env.models_dir / "clip_vision" / "tiny-clip.safetensors"
    ref = ClipVisionRef(str(p), p.stat().st_size, p.stat().st_mtime_ns, p.name)
    imgs = torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    out, scores = LoomCLIPRankImages().run(None, ref, imgs, "a red circle", 0, "center")
    s = json.loads(scores)
    sims = load(p).similarity(imgs, "a red circle")
    assert [d["index"] for d in s] == torch.argsort(sims, descending=True).tolist()
    assert all(a["score"] >= b["score"] for a, b in zip(s, s[1:]))
    assert torch.equal(out, imgs[[d["index"] for d in s]])
    out2, s2 = LoomCLIPRankImages().run(None, ref, imgs, "a red circle", 2, "center")
    assert out2.shape[0] == 2 and torch.equal(out2, out[:2])


def test_vision_only_file_encodes_but_cannot_rank(env):
    wf = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny-vision.safetensors"}},
          "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 255}},
          "3": {"class_type": "LoomCLIPRankImages", "inputs": {"clip_vision": ["1", 0], "images": ["2", 0],
                                                                "text": "x", "top_k": 0, "crop": "none"}},
          "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    r = Executor(default_registry(), env).run(wf)
    assert r.status == "error" and "no text tower" in r.error["exception_message"]


def test_unclip_conditioning_attaches_the_embedding(env):
    from nodes.clip_vision import unCLIPConditioning
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None}]]
    cvo = {"image_embeds": torch.ones(1, 16)}
    (out,) = unCLIPConditioning().run(None, cond, cvo, 0.7, 0.1)
    assert out[0][1]["unclip_conditioning"] == [{"clip_vision_output": cvo, "strength": 0.7,
                                                 "noise_augmentation": 0.1}]
    assert "unclip_conditioning" not in cond[0][1]  # the input is not modified
    assert unCLIPConditioning().run(None, cond, cvo, 0.0, 0.1)[0] is cond


def test_loader_refuses_non_clip_files(env):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(env.models_dir / "clip_vision" / "junk.safetensors"))
    wf = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "junk.safetensors"}},
          "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
          "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 0], "image": ["2", 0],
                                                              "crop": "center"}},
          "4": {"class_type": "LoomCLIPRankImages", "inputs": {"clip_vision": ["1", 0], "images": ["2", 0],
                                                                "text": "x", "top_k": 0, "crop": "none"}},
          "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    r = Executor(default_registry(), env).run(wf)
    msg = r.error["exception_message"]
    assert r.status == "error" and r.error["node_id"] == "1"
    assert "junk.safetensors" in msg and "vision_model" in msg, msg


def test_bundled_clip_finds_the_described_scene():
    """The bundled tiny CLIP, on held-out shapes-world scenes: each caption picks its own image among 8 far more
    often than chance (1/8); its measured rate is in models/clip_vision/loom-shapes-clip.md."""
    from modelstore.clip_vision import load
    from training import world
    assert BUNDLED_CLIP.is_file(), "the bundled CLIP is part of the checkout"
    cv = load(BUNDLED_CLIP)
    imgs, scenes = world.make_dataset(32, seed=777)
    x = torch.from_numpy(imgs).float().div(255)
    hits = 0
    for g in range(4):
        sl = slice(8 * g, 8 * g + 8)
        for j in range(8):
            cap = world.eval_caption(scenes[sl][j]) if len(scenes[sl][j].shapes) == 1 else \
                world.caption(scenes[sl][j], random.Random(j))
            hits += int(cv.similarity(x[sl], cap).argmax()) == j
    assert hits >= 20, f"{hits}/32 captions found their image (chance: 4/32)"
