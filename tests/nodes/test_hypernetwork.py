"""HypernetworkLoader on the tiny SD1 UNet, with tiny hypernetworks written in the A1111 layout (safetensors with
the flattened state-dict names, and the A1111 .pt pickle): strength 0 is the base model, the k/v inputs of an
attention layer are transformed as x + mlp(x) * strength (checked by hand), a run changes, the hooks act only while
the patched model samples, and pickle files follow the store's pickle policy."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from nodes.conditioning import encode_text
from nodes.hypernetwork import HypernetworkLoader, patches
from nodes.sampler_core import Noise, sample
from nodes.samplers import Plan


class Ctx:
    def __init__(self, env):
        self.env = env


def mlp_state(width: int, seed: int) -> OrderedDict:
    """A1111's Sequential for layer_structure [1, 2, 1], relu, layer norm, no output activation:
    0 Linear(w, 2w), 1 ReLU, 2 LayerNorm(2w), 3 Linear(2w, w), 4 LayerNorm(w)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    return OrderedDict([("linear.0.weight", r(2 * width, width)), ("linear.0.bias", r(2 * width)),
                        ("linear.2.weight", 1 + r(2 * width)), ("linear.2.bias", r(2 * width)),
                        ("linear.3.weight", r(width, 2 * width)), ("linear.3.bias", r(width)),
                        ("linear.4.weight", 1 + r(width)), ("linear.4.bias", r(width))])


STRUCTURE = {"layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": True, "use_dropout": False,
             "activate_output": False, "last_layer_dropout": False}


def by_hand(x, st):
    h = F.linear(x, st["linear.0.weight"], st["linear.0.bias"]).relu()
    h = F.layer_norm(h, h.shape[-1:], st["linear.2.weight"], st["linear.2.bias"])
    h = F.linear(h, st["linear.3.weight"], st["linear.3.bias"])
    return F.layer_norm(h, h.shape[-1:], st["linear.4.weight"], st["linear.4.bias"])


@pytest.fixture(scope="module")
def hn(refs, models_dir):
    """(file name, {width: (state_k, state_v)}) of a hypernetwork for every attention width of the tiny UNet."""
    with refs[0].store.using(refs[0]) as (unet,):
        widths = sorted({m.in_features for n, m in unet.named_modules() if n.endswith(".to_k")})
    states = {w: (mlp_state(w, 2 * i), mlp_state(w, 2 * i + 1)) for i, w in enumerate(widths)}
    folder = models_dir / "hypernetworks"
    folder.mkdir(exist_ok=True)
    flat = {f"{w}.{j}.{k}": v.contiguous() for w, pair in states.items() for j, st in enumerate(pair)
            for k, v in st.items()}
    save_file(flat, str(folder / "tiny-hn.safetensors"), metadata={k: json.dumps(v) for k, v in STRUCTURE.items()})
    torch.save({**{w: [pair[0], pair[1]] for w, pair in states.items()}, **STRUCTURE, "name": "tiny-hn", "step": 5},
               str(folder / "tiny-hn.pt"))
    return "tiny-hn.safetensors", states


def run(refs, model, steps=2):
    pos, neg = encode_text(refs[1], "a cat"), encode_text(refs[1], "")
    return sample(None, model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, Plan("euler", "normal", steps), 0,
                  steps, cfg=4.0, noise=Noise(2)).samples


def test_strength_zero_is_the_base_and_a_run_changes(refs, session_env, hn):
    base = run(refs, refs[0])
    zero = HypernetworkLoader().run(Ctx(session_env), refs[0], hn[0], 0.0)[0]
    assert zero.option("hypernetworks") is None and torch.equal(run(refs, zero), base)
    patched = HypernetworkLoader().run(Ctx(session_env), refs[0], hn[0], 1.0)[0]
    assert (run(refs, patched) - base).abs().max() > 1e-3
    assert torch.equal(run(refs, refs[0]), base)  # hooks act only for the patched model's run
    twice = HypernetworkLoader().run(Ctx(session_env), patched, hn[0], 0.5)[0]  # chained loaders stack
    assert len(twice.option("hypernetworks")) == 2


def test_key_and_value_inputs_by_hand(refs, session_env, hn):
    name, states = hn
    patched = HypernetworkLoader().run(Ctx(session_env), refs[0], name, 0.7)[0]
    with refs[0].store.using(refs[0]) as (unet,):
        attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2  # cross-attention
        ctx_w, hid_w = attn.to_k.in_features, attn.to_q.in_features
        seen = {}
        hooks = [attn.to_k.register_forward_hook(lambda m, a, o: seen.update(k=a[0].clone())),
                 attn.to_v.register_forward_hook(lambda m, a, o: seen.update(v=a[0].clone()))]
        x = torch.randn(1, 16, hid_w)
        ctx = torch.randn(1, 5, ctx_w)
        plain = attn(x, encoder_hidden_states=ctx)
        assert torch.equal(seen["k"], ctx) and torch.equal(seen["v"], ctx)
        with patches(unet, patched):
            out = attn(x, encoder_hidden_states=ctx)
        k_in, v_in = seen["k"], seen["v"]
        after = attn(x, encoder_hidden_states=ctx)
        for h in hooks:
            h.remove()
    sk, sv = states[ctx_w]
    assert torch.allclose(k_in, ctx + by_hand(ctx, sk) * 0.7, atol=1e-5)
    assert torch.allclose(v_in, ctx + by_hand(ctx, sv) * 0.7, atol=1e-5)
    assert not torch.allclose(out, plain) and torch.equal(after, plain)


def test_pickle_follows_the_policy(refs, session_env, hn, models_dir, tmp_path):
    from modelstore.hypernetwork import load
    from tests.nodes.conftest import make_env

    assert not session_env.model_store().allow_pickle
    with pytest.raises(ValueError, match="pickle"):
        HypernetworkLoader().run(Ctx(session_env), refs[0], "tiny-hn.pt", 1.0)
    a, b = load(models_dir / "hypernetworks" / "tiny-hn.pt", allow_pickle=True), load(
        models_dir / "hypernetworks" / "tiny-hn.safetensors")
    assert sorted(a.layers) == sorted(b.layers) and a.structure["activation_func"] == "relu"
    for w in a.layers:
        x = torch.randn(3, w)
        for j in (0, 1):
            assert torch.equal(a.layers[w][j](x), b.layers[w][j](x))


def test_bad_files_are_named(refs, session_env, models_dir):
    folder = models_dir / "hypernetworks"
    save_file({"768.0.linear.0.weight": torch.zeros(4, 768)}, str(folder / "bad-width.safetensors"))
    with pytest.raises(ValueError, match="bad-width.*keep the width"):
        HypernetworkLoader().run(Ctx(session_env), refs[0], "bad-width.safetensors", 1.0)
    save_file({"weird": torch.zeros(2)}, str(folder / "not-hn.safetensors"))
    with pytest.raises(ValueError, match="not-hn.*weird"):
        HypernetworkLoader().run(Ctx(session_env), refs[0], "not-hn.safetensors", 1.0)


def test_workflow_end_to_end(executor, hn):
    """CheckpointLoaderSimple -> HypernetworkLoader -> KSampler through the engine: an image, different from the
    same workflow at strength 0; a .pt name is refused at run time with the node named (pickle not allowed)."""
    def wf(strength, name=hn[0]):
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
            "8": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": name,
                                                                "strength": strength}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["8", 0], "seed": 5, "steps": 2, "cfg": 4.0,
                                                      "sampler_name": "euler", "scheduler": "normal",
                                                      "positive": ["2", 0], "negative": ["3", 0],
                                                      "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        }

    def image(r):
        assert r.status == "success", r.error
        item = r.outputs["7"]["images"][0]
        return np.asarray(Image.open(executor.env.temp_dir / item["subfolder"] / item["filename"]), dtype=np.int16)
    a, b = image(executor.run(wf(1.0))), image(executor.run(wf(0.0)))
    assert np.abs(a - b).max() > 0
    bad = executor.run(wf(1.0, "tiny-hn.pt"))
    assert bad.status == "error" and bad.error["node_id"] == "8" and "pickle" in bad.error["exception_message"]
