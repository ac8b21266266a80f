"""StyleModelLoader / StyleModelApply with the bundled tiny CLIP vision model (loom-shapes-clip, width 64) and tiny
random style models written in their original key layouts (TencentARC's T2I-Adapter style model, FLUX.1 Redux),
for the tiny SD1 checkpoint (context width 64): the tokens are what the layout's formula gives (computed here by
hand), appended to every entry times ``strength``; 'attn_bias' is refused at validation; a workflow runs end to
end and the style changes its image."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from nodes.clip_vision import CLIPVisionEncode, CLIPVisionLoader
from nodes.style_model import StyleModelApply, StyleModelLoader

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "models" / "clip_vision" / "loom-shapes-clip.safetensors"
W, CTX, LAYERS, TOKENS, HEADS = 64, 64, 2, 3, 8


class Ctx:
    def __init__(self, env):
        self.env = env


def style_sd(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd = {"style_embedding": r(1, TOKENS, W), "ln_pre.weight": 1 + r(W), "ln_pre.bias": r(W),
          "ln_post.weight": 1 + r(W), "ln_post.bias": r(W), "proj": r(W, CTX)}
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        sd.update({p + "ln_1.weight": 1 + r(W), p + "ln_1.bias": r(W), p + "attn.in_proj_weight": r(3 * W, W),
                   p + "attn.in_proj_bias": r(3 * W), p + "attn.out_proj.weight": r(W, W),
                   p + "attn.out_proj.bias": r(W), p + "ln_2.weight": 1 + r(W), p + "ln_2.bias": r(W),
                   p + "mlp.c_fc.weight": r(4 * W, W), p + "mlp.c_fc.bias": r(4 * W),
                   p + "mlp.c_proj.weight": r(W, 4 * W), p + "mlp.c_proj.bias": r(W)})
    return sd


def style_by_hand(sd, h):
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], sd[n + ".weight"], sd[n + ".bias"])
    x = ln(torch.cat([h, sd["style_embedding"].expand(h.shape[0], -1, -1)], 1), "ln_pre")
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        a = ln(x, p + "ln_1")
        q, k, v = F.linear(a, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], HEADS, W // HEADS).transpose(1, 2)
        att = ((split(q) @ split(k).transpose(-1, -2)) / (W // HEADS) ** 0.5).softmax(-1) @ split(v)
        x = x + F.linear(att.transpose(1, 2).reshape(x.shape), sd[p + "attn.out_proj.weight"],
                         sd[p + "attn.out_proj.bias"])
        m = F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        x = x + F.linear(m * torch.sigmoid(1.702 * m), sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return ln(x[:, -TOKENS:], "ln_post") @ sd["proj"]


def redux_sd(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    return {"redux_up.weight": r(3 * CTX, W), "redux_up.bias": r(3 * CTX), "redux_down.weight": r(CTX, 3 * CTX),
            "redux_down.bias": r(CTX)}


@pytest.fixture(scope="module")
def files(models_dir):
    assert CLIP.is_file()
    (models_dir / "clip_vision").mkdir(exist_ok=True)
    shutil.copyfile(CLIP, models_dir / "clip_vision" / CLIP.name)
    folder = models_dir / "style_models"
    folder.mkdir(exist_ok=True)
    s, r = style_sd(), redux_sd()
    save_file(s, str(folder / "tiny-style.safetensors"))
    save_file(r, str(folder / "tiny-redux.safetensors"))
    save_file({"nothing": torch.zeros(2)}, str(folder / "not-style.safetensors"))
    return s, r


def vision(session_env, seed=0):
    cv = CLIPVisionLoader().run(Ctx(session_env), CLIP.name)[0]
    img = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(seed))
    return CLIPVisionEncode().run(None, cv, img, "center")[0]


def test_style_adapter_tokens_by_hand(session_env, files, refs):
    from nodes.conditioning import encode_text

    out = vision(session_env)
    sm = StyleModelLoader().run(Ctx(session_env), "tiny-style.safetensors")[0]
    cond = encode_text(refs[1], "a cat")
    res = StyleModelApply().run(None, cond, sm, out, 0.6, "multiply")[0]
    want = style_by_hand(files[0], out["last_hidden_state"].float()).reshape(1, -1, CTX)  # 2 images x 3 tokens
    base = cond[0][0]
    assert res[0][0].shape == (1, base.shape[1] + 2 * TOKENS, CTX)
    assert torch.equal(res[0][0][:, :base.shape[1]], base)
    assert torch.allclose(res[0][0][:, base.shape[1]:], want * 0.6, atol=1e-4)
    assert res[0][1].keys() == cond[0][1].keys()


def test_redux_tokens_by_hand(session_env, files, refs):
    from nodes.conditioning import encode_text

    out = vision(session_env, 1)
    sm = StyleModelLoader().run(Ctx(session_env), "tiny-redux.safetensors")[0]
    cond = encode_text(refs[1], "a cat")
    res = StyleModelApply().run(None, cond, sm, out, 2.0, "multiply")[0]
    r, h = files[1], out["last_hidden_state"].float()
    want = F.linear(F.silu(F.linear(h, r["redux_up.weight"], r["redux_up.bias"])), r["redux_down.weight"],
                    r["redux_down.bias"]).reshape(1, -1, CTX)
    assert torch.allclose(res[0][0][:, cond[0][0].shape[1]:], want * 2.0, atol=1e-4)


def test_refusals(session_env, files, refs):
    assert "not supported" in StyleModelApply.check(None, strength_type="attn_bias")["strength_type"]
    assert StyleModelApply.check(None, strength_type="multiply") is None
    with pytest.raises(ValueError, match="not-style.*neither"):
        StyleModelLoader().run(Ctx(session_env), "not-style.safetensors")
    torch.save(files[1], str(session_env.folders.resolve("style_models", "tiny-redux.safetensors").with_suffix(".pt")))
    with pytest.raises(ValueError, match="pickle"):
        StyleModelLoader().run(Ctx(session_env), "tiny-redux.pt")


def wf(style: str | None, strength_type="multiply"):
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 5, "steps": 2, "cfg": 4.0,
                                                  "sampler_name": "euler", "scheduler": "normal",
                                                  "positive": ["2", 0] if style is None else ["13", 0],
                                                  "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if style is not None:
        p.update({
            "10": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP.name}},
            "11": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 0x1E46EB}},
            "12": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["10", 0], "image": ["11", 0],
                                                                "crop": "center"}},
            "14": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style}},
            "13": {"class_type": "StyleModelApply", "inputs": {"conditioning": ["2", 0], "style_model": ["14", 0],
                                                               "clip_vision_output": ["12", 0], "strength": 1.0,
                                                               "strength_type": strength_type}},
        })
    return p


def test_workflow_end_to_end(executor, files):
    def image(r):
        assert r.status == "success", r.error
        item = r.outputs["7"]["images"][0]
        return np.asarray(Image.open(executor.env.temp_dir / item["subfolder"] / item["filename"]), dtype=np.int16)
    base = image(executor.run(wf(None)))
    for name in ("tiny-style.safetensors", "tiny-redux.safetensors"):
        assert np.abs(image(executor.run(wf(name))) - base).max() > 0, name
    from engine.errors import WorkflowError

    with pytest.raises(WorkflowError) as e:
        executor.run(wf("tiny-style.safetensors", "attn_bias"))
    errs = e.value.node_errors["13"]["errors"]
    assert any("attn_bias" in x["details"] and x["extra_info"]["input_name"] == "strength_type" for x in errs), errs
