"""Malformed files for the loader kinds added late (style models, hypernetworks, T2I-Adapters, FLUX ControlNets,
LoRA/LoHa/LoKr on a transformer family), driven through the NODES in API workflows on one executor: each run fails
with an execution_error naming the node and the file (and the tensor where one is at fault), never a raw torch /
safetensors error, a traceback as the message, or an unbounded allocation; and the next valid workflow on the same
executor succeeds (nothing is left cached in a broken state)."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tests import tiny_families as tf

RAW = ("RuntimeError", "KeyError", "IndexError", "TypeError", "AttributeError", "SafetensorError",
       "ZeroDivisionError", "UnpicklingError", "OverflowError")


@pytest.fixture(scope="module")
def root(models_root):
    for d in ("style_models", "hypernetworks", "controlnet", "diffusion_models", "text_encoders", "vae", "loras"):
        (models_root / d).mkdir(exist_ok=True)
    tf.write_flux_set(models_root)  # flux1-dev, clip_l, t5xxl_fp16 (+ tokenizer), ae
    return models_root


@pytest.fixture(scope="module")
def ex(root, tmp_path_factory):
    from engine.executor import Executor
    from nodes import default_registry
    from tests.nodes.conftest import make_env

    return Executor(default_registry(), make_env(root, tmp_path_factory.mktemp("io")))


def _raw(path, header: dict | bytes, data: bytes = b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _truncate(src, dst):
    b = src.read_bytes()
    dst.write_bytes(b[: len(b) - max(1, (len(b) - 8 - struct.unpack("<Q", b[:8])[0]) // 2)])


def _fails(ex, wf, node_id, class_type, *says):
    r = ex.run(wf)
    assert r.status == "error", (class_type, says)
    err = r.error
    assert err["node_id"] == node_id and err["node_type"] == class_type, err
    msg = err["exception_message"]
    assert "Traceback" not in msg and not any(err["exception_type"].endswith(t) for t in RAW), err
    for s in says:
        assert s in msg, (s, msg)
    return msg


def _fails_then_good(ex, wf, node_id, class_type, name, says, good):
    """``wf(name)`` fails at ``node_id`` naming the file (and ``says``); then ``wf(good)`` succeeds on the same
    executor (nothing cached in a broken state)."""
    _fails(ex, wf(name), node_id, class_type, name, *says)
    assert ex.run(wf(good)).status == "success"


def _once(folder, good, make, arg=None):
    """Write the kind's bad files (and ``good``) with ``make`` the first time a test of that kind runs."""
    if not (folder / good).exists():
        make(folder if arg is None else arg)


# ------------------------------------------------------------------------------------------------ style models
def _style_sd(w=16, ctx=64, tokens=2, layers=1):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    sd = {"style_embedding": r(1, tokens, w), "ln_pre.weight": 1 + r(w), "ln_pre.bias": r(w),
          "ln_post.weight": 1 + r(w), "ln_post.bias": r(w), "proj": r(w, ctx)}
    for i in range(layers):
        p = f"transformer_layes.{i}."
        sd.update({p + "ln_1.weight": 1 + r(w), p + "ln_1.bias": r(w), p + "attn.in_proj_weight": r(3 * w, w),
                   p + "attn.in_proj_bias": r(3 * w), p + "attn.out_proj.weight": r(w, w), p + "attn.out_proj.bias": r(w),
                   p + "ln_2.weight": 1 + r(w), p + "ln_2.bias": r(w), p + "mlp.c_fc.weight": r(4 * w, w),
                   p + "mlp.c_fc.bias": r(4 * w), p + "mlp.c_proj.weight": r(w, 4 * w), p + "mlp.c_proj.bias": r(w)})
    return sd


def _style_wf(name):
    return {"1": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": name}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _bad_styles(d):
    good = _style_sd()
    save_file(good, str(d / "good-style.safetensors"))
    _truncate(d / "good-style.safetensors", d / "truncated-style.safetensors")
    (d / "empty-style.safetensors").write_bytes(b"")
    save_file({**good, "ln_pre.weight": torch.ones(7)}, str(d / "shape-style.safetensors"))
    save_file({k: v for k, v in good.items() if k != "ln_post.bias"}, str(d / "missing-style.safetensors"))
    save_file({**good, "bogus.weight": torch.ones(2)}, str(d / "extra-style.safetensors"))
    save_file({**good, "proj": torch.ones(16, 64, dtype=torch.int32)}, str(d / "int-style.safetensors"))
    save_file({**good, "proj": torch.full((16, 64), float("nan"))}, str(d / "nan-style.safetensors"))
    # a width of 2^16 declared by tiny tensors: building the blocks first would allocate 3 x 2^32 floats (48 GiB)
    save_file({"style_embedding": torch.zeros(1, 1, 1 << 16), "proj": torch.zeros(1 << 16, 1),
               "transformer_layes.0.ln_1.weight": torch.ones(1)}, str(d / "huge-style.safetensors"))
    save_file({"redux_up.weight": torch.zeros(12), "redux_down.weight": torch.zeros(4)}, str(d / "rank-redux.safetensors"))
    torch.save(good, str(d / "pickled-style.pt"))


@pytest.mark.parametrize("name, says", [
    ("truncated-style.safetensors", ()), ("empty-style.safetensors", ()),
    ("shape-style.safetensors", ("ln_pre.weight",)), ("missing-style.safetensors", ("ln_post.bias",)),
    ("extra-style.safetensors", ("bogus.weight",)), ("int-style.safetensors", ("proj", "int")),
    ("nan-style.safetensors", ("proj",)), ("huge-style.safetensors", ()), ("rank-redux.safetensors", ("redux",)),
    ("pickled-style.pt", ("pickle",)),
])
def test_broken_style_models(ex, root, name, says):
    _once(root / "style_models", "good-style.safetensors", _bad_styles)
    _fails_then_good(ex, _style_wf, "1", "StyleModelLoader", name, says, "good-style.safetensors")


# ------------------------------------------------------------------------------------------------ hypernetworks
def _hn_sd(width=64):
    g = torch.Generator().manual_seed(1)
    sd = {}
    for j in "01":
        sd[f"{width}.{j}.linear.0.weight"] = torch.randn(2 * width, width, generator=g) * 0.01
        sd[f"{width}.{j}.linear.0.bias"] = torch.zeros(2 * width)
        sd[f"{width}.{j}.linear.1.weight"] = torch.randn(width, 2 * width, generator=g) * 0.01
        sd[f"{width}.{j}.linear.1.bias"] = torch.zeros(width)
    return sd


def _hn_wf(name):
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
            "2": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": name,
                                                                 "strength": 1.0}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}


def _bad_hns(d):
    good = _hn_sd()
    save_file(good, str(d / "good-hn.safetensors"), metadata={"activation_func": "relu"})
    _truncate(d / "good-hn.safetensors", d / "truncated-hn.safetensors")
    (d / "empty-hn.safetensors").write_bytes(b"")
    save_file(good, str(d / "garbage-hn.safetensors"), metadata={"layer_structure": "[1, 2,", "activation_func": "{"})
    save_file({**good, "64.0.linear.x.weight": torch.ones(2, 2)}, str(d / "badindex-hn.safetensors"))
    save_file({**good, "64.0.linear.0.bias": torch.zeros(3)}, str(d / "bias-hn.safetensors"))
    save_file({**good, "64.1.linear.0.weight": torch.ones(128, 64, dtype=torch.int64)}, str(d / "int-hn.safetensors"))
    save_file({**good, "64.1.linear.1.weight": torch.full((64, 128), float("inf"))}, str(d / "inf-hn.safetensors"))
    save_file({**good, "64.0.linear.0.weight": torch.ones(2, 2, 64)}, str(d / "rank3-hn.safetensors"))
    torch.save({64: [{}, {}]}, str(d / "pickled-hn.pt"))


@pytest.mark.parametrize("name, says", [
    ("truncated-hn.safetensors", ()), ("empty-hn.safetensors", ()), ("garbage-hn.safetensors", ("activation_func",)),
    ("badindex-hn.safetensors", ("linear.x.weight",)), ("bias-hn.safetensors", ("linear.0.bias",)),
    ("int-hn.safetensors", ("int",)), ("inf-hn.safetensors", ("linear.1.weight",)),
    ("rank3-hn.safetensors", ("linear.0.weight",)), ("pickled-hn.pt", ("pickle",)),
])
def test_broken_hypernetworks(ex, root, name, says):
    _once(root / "hypernetworks", "good-hn.safetensors", _bad_hns)
    _fails_then_good(ex, _hn_wf, "2", "HypernetworkLoader", name, says, "good-hn.safetensors")


# ------------------------------------------------------------------------------ T2I-Adapter / FLUX ControlNet files
def _cn_wf(name):
    return {"1": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _bad_controls(d):
    from tests.tiny_t2i_adapter import adapter_to_original, build_tiny_adapter

    good = {k: v.contiguous() for k, v in adapter_to_original(build_tiny_adapter()).items()}
    save_file(good, str(d / "good-adapter.safetensors"))
    _truncate(d / "good-adapter.safetensors", d / "truncated-adapter.safetensors")
    (d / "empty-adapter.safetensors").write_bytes(b"")
    one = dict(good)
    one["conv_in.weight"] = good["conv_in.weight"][:, :7].contiguous()  # 7 = no whole number of 8x8 pixel blocks
    save_file(one, str(d / "seven-adapter.safetensors"))
    save_file({k: (v.to(torch.int32) if k == "conv_in.weight" else v) for k, v in good.items()},
              str(d / "int-adapter.safetensors"))
    save_file({k: v for k, v in good.items() if k != "conv_in.bias"}, str(d / "missing-adapter.safetensors"))


def _adapter_sample_wf(name):
    """The adapter's weights are built when the sampler first uses them (ControlNetLoader hands out a reference)."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
            "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}},
            "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "5": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": ["2", 0], "negative": ["2", 0], "control_net": ["3", 0], "image": ["4", 0],
                "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
            "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "7": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["6", 0], "seed": 0,
                "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
            "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}}}


@pytest.mark.parametrize("name, says", [
    ("truncated-adapter.safetensors", ()), ("empty-adapter.safetensors", ()),
    ("seven-adapter.safetensors", ("7",)),
])
def test_broken_t2i_adapters(ex, root, name, says):
    _once(root / "controlnet", "good-adapter.safetensors", _bad_controls)
    _fails_then_good(ex, _cn_wf, "1", "ControlNetLoader", name, says, "good-adapter.safetensors")


@pytest.mark.parametrize("name, says", [
    ("int-adapter.safetensors", ("conv_in.weight", "int32")), ("missing-adapter.safetensors", ("conv_in.bias",)),
])
def test_broken_t2i_adapters_fail_where_they_are_built(ex, root, name, says):
    _once(root / "controlnet", "good-adapter.safetensors", _bad_controls)
    _fails_then_good(ex, _adapter_sample_wf, "7", "KSampler", name, says, "good-adapter.safetensors")


# --------------------------------------------------------------------------------- LoRA / LoHa / LoKr on FLUX.1
def _lora_wf(name, strength=1.0):
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
            "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name,
                                                                  "strength_model": strength}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}


QKV = "diffusion_model.double_blocks.0.img_attn.qkv"  # (192, 64) in the tiny FLUX.1


def _bad_loras(d):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    save_file({f"{QKV}.lora_up.weight": r(192, 4), f"{QKV}.lora_down.weight": r(4, 64)}, str(d / "good-lora.safetensors"))
    _truncate(d / "good-lora.safetensors", d / "truncated-lora.safetensors")
    (d / "empty-lora.safetensors").write_bytes(b"")
    # rank 10^6 declared by zero-size tensors (no data), and a rank-1 LoRA whose product would be 40 GB
    save_file({f"{QKV}.lora_up.weight": torch.zeros(192, 10**6)[:, :0].contiguous().reshape(192, 0),
               f"{QKV}.lora_down.weight": torch.zeros(0, 64)}, str(d / "rank0-lora.safetensors"))
    save_file({f"{QKV}.lora_up.weight": r(100_000, 1), f"{QKV}.lora_down.weight": r(1, 100_000)},
              str(d / "huge-lora.safetensors"))
    # LoKr factors of 1000x1000 each: kron would be 10^12 values (4 TB) before any shape check
    save_file({f"{QKV}.lokr_w1": r(1000, 1000), f"{QKV}.lokr_w2": r(1000, 1000)}, str(d / "huge-lokr.safetensors"))
    save_file({f"{QKV}.hada_w1_a": r(100_000, 1), f"{QKV}.hada_w1_b": r(1, 100_000), f"{QKV}.hada_w2_a": r(100_000, 1),
               f"{QKV}.hada_w2_b": r(1, 100_000)}, str(d / "huge-loha.safetensors"))
    save_file({f"{QKV}.hada_w1_a": r(192, 2), f"{QKV}.hada_w1_b": r(3, 64), f"{QKV}.hada_w2_a": r(192, 2),
               f"{QKV}.hada_w2_b": r(2, 64)}, str(d / "inner-loha.safetensors"))
    save_file({f"{QKV}.lokr_w1_a": r(3, 2), f"{QKV}.lokr_w1_b": r(5, 4), f"{QKV}.lokr_w2": r(64, 16)},
              str(d / "inner-lokr.safetensors"))
    save_file({f"{QKV}.lora_up.weight": torch.ones(192, 4, dtype=torch.int32), f"{QKV}.lora_down.weight": r(4, 64)},
              str(d / "int-lora.safetensors"))
    save_file({f"{QKV}.lora_up.weight": r(192, 4, 3), f"{QKV}.lora_down.weight": r(4, 64)},
              str(d / "rank3-lora.safetensors"))
    torch.save({f"{QKV}.lora_up.weight": r(192, 4)}, str(d / "pickled-lora.pt"))
    save_file({f"{QKV}.lora_up.weight": r(192, 4), f"{QKV}.lora_down.weight": r(4, 64), f"{QKV}.dora_scale": r(7)},
              str(d / "dora-lora.safetensors"))


@pytest.mark.parametrize("name, says", [
    ("truncated-lora.safetensors", ()), ("empty-lora.safetensors", ()), ("rank0-lora.safetensors", ()),
    ("huge-lora.safetensors", ("double_blocks.0.img_attn.qkv",)), ("huge-lokr.safetensors", ("double_blocks.0.img_attn.qkv",)),
    ("huge-loha.safetensors", ("double_blocks.0.img_attn.qkv",)), ("inner-loha.safetensors", ("hada",)),
    ("inner-lokr.safetensors", ("lokr",)), ("int-lora.safetensors", ("int",)), ("rank3-lora.safetensors", ()),
    ("pickled-lora.pt", ("pickle",)), ("dora-lora.safetensors", ("DoRA", "(7,)")),
])
def test_broken_family_loras(ex, root, name, says):
    _once(root / "loras", "good-lora.safetensors", _bad_loras)
    _fails_then_good(ex, _lora_wf, "2", "LoraLoaderModelOnly", name, says, "good-lora.safetensors")


# ------------------------------------------------------------------------------- Qwen2.5-VL text encoder (Qwen-Image)
def _te_wf(name):
    return {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": name, "type": "qwen_image", "device": "default"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a cat"}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}


TEXT_KEY = "model.layers.0.self_attn.o_proj.weight"  # (32, 32) in the tiny Qwen2.5-VL


def _bad_text_encoders(root):
    d = root / "text_encoders"
    good = tf.qwen25vl_file(tf.tiny_qwen25vl())
    tf.save(good, d / "good-qwen.safetensors")
    tf.write_qwen_tokenizer(root / "tokenizers" / "qwen25vl")
    _truncate(d / "good-qwen.safetensors", d / "truncated-qwen.safetensors")
    (d / "empty-qwen.safetensors").write_bytes(b"")
    tf.save({k: v for k, v in good.items() if k != TEXT_KEY}, d / "missing-qwen.safetensors")
    tf.save({**good, TEXT_KEY: torch.ones(32, 32, dtype=torch.int32)}, d / "int-qwen.safetensors")
    tf.save({**good, TEXT_KEY: good[TEXT_KEY][:, :3].contiguous()}, d / "shape-qwen.safetensors")
    tf.save({**good, "model.bogus.weight": torch.ones(2)}, d / "extra-qwen.safetensors")
    torch.save(good, str(d / "pickled-qwen.pt"))
    tf.save(good, d / "badtok-qwen.safetensors")  # its own tokenizer folder beside it, truncated
    tf.write_qwen_tokenizer(d / "badtok-qwen_tokenizer")
    tok = d / "badtok-qwen_tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text()[:50])


@pytest.mark.parametrize("name, node, says", [
    ("truncated-qwen.safetensors", "CLIPLoader", ()), ("empty-qwen.safetensors", "CLIPLoader", ()),
    ("pickled-qwen.pt", "CLIPLoader", ("pickle",)),
    # the text encoder is built where it is first used
    ("missing-qwen.safetensors", "CLIPTextEncode", ("layers.0.self_attn.o_proj.weight",)),
    ("int-qwen.safetensors", "CLIPTextEncode", ("layers.0.self_attn.o_proj.weight", "int32")),
    ("shape-qwen.safetensors", "CLIPTextEncode", ("layers.0.self_attn.o_proj.weight", "(32, 3)")),
    ("extra-qwen.safetensors", "CLIPTextEncode", ("bogus.weight",)),
    ("badtok-qwen.safetensors", "CLIPTextEncode", ("tokenizer", "badtok-qwen_tokenizer")),
])
def test_broken_qwen_text_encoders(ex, root, name, node, says):
    _once(root / "text_encoders", "good-qwen.safetensors", _bad_text_encoders, root)
    _fails_then_good(ex, _te_wf, {"CLIPLoader": "1", "CLIPTextEncode": "2"}[node], node, name, says,
                     "good-qwen.safetensors")


def test_a_qwen_text_encoder_without_its_tokenizer(tmp_path):
    from engine.executor import Executor
    from nodes import default_registry
    from tests.nodes.conftest import make_env

    (tmp_path / "text_encoders").mkdir()
    tf.save(tf.qwen25vl_file(tf.tiny_qwen25vl()), tmp_path / "text_encoders" / "lonely-qwen.safetensors")
    ex = Executor(default_registry(), make_env(tmp_path, tmp_path / "io"))
    msg = _fails(ex, _te_wf("lonely-qwen.safetensors"), "1", "CLIPLoader", "lonely-qwen.safetensors", "tokenizer")
    assert "never downloads" in msg
    tf.write_qwen_tokenizer(tmp_path / "tokenizers" / "qwen25vl")  # supplied: the same executor now runs it
    assert ex.run(_te_wf("lonely-qwen.safetensors")).status == "success"


def test_the_lazy_lora_path_refuses_a_huge_lokr_before_the_product():
    """A pickle LoRA (no header to check at the loader) reaches _delta: the fit is checked from the factors' shapes
    before kron would make 10^12 values."""
    from modelstore.families.lora import _delta
    from modelstore.lora import LoraError

    parts = {"lokr_w1": torch.zeros(1000, 1000), "lokr_w2": torch.zeros(1000, 1000)}
    with pytest.raises(LoraError, match=r"x.pt: lokr blk: update of 1000000x1000000 does not fit .*\(192, 64\)"):
        _delta(("lora", "file", "blk.weight", parts), (192, 64), "x.pt")


def _scaled(good, key, scale):
    """``good`` as a ComfyUI scaled-fp8 file: ``key`` stored fp8 (weight / scale) with its ``scale_weight``."""
    s = torch.as_tensor(scale, dtype=torch.float32)
    w = (good[key] / (s.reshape(-1)[0] if s.numel() and torch.isfinite(s).all() and s.reshape(-1)[0] else 1))
    return {**good, key: w.to(torch.float8_e4m3fn), key[:-len("weight")] + "scale_weight": s,
            "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}


@pytest.mark.parametrize("name, scale, says", [
    ("scaled-ok-qwen.safetensors", 0.5, None),
    ("scaled-vector-qwen.safetensors", [0.5, 0.5, 0.5], ("scale_weight", "(3,)")),
    ("scaled-huge-qwen.safetensors", torch.full((4096, 1, 1), 0.5), ("scale_weight", "(4096, 1, 1)")),
    ("scaled-nan-qwen.safetensors", float("nan"), ("scale_weight", "nan")),
])
def test_scaled_fp8_text_encoders(ex, root, name, scale, says):
    """A scale_weight that is not one finite number is refused, naming it (a (4096, 1, 1) scale used to broadcast the
    weight into a 4096x larger tensor)."""
    d = root / "text_encoders"
    _once(d, "good-qwen.safetensors", _bad_text_encoders, root)
    good = tf.qwen25vl_file(tf.tiny_qwen25vl())
    tf.save(_scaled(good, TEXT_KEY, scale), d / name)
    if says is None:
        assert ex.run(_te_wf(name)).status == "success"
        return
    _fails(ex, _te_wf(name), "2", "CLIPTextEncode", name, *says)
    assert ex.run(_te_wf("good-qwen.safetensors")).status == "success"


# ------------------------------------------------------------------------------------------ FLUX ControlNet files
def _bad_flux_controlnets(d):
    from tests.families.test_flux_controlnet import tiny_flux_controlnet

    good = {k: v.contiguous() for k, v in tiny_flux_controlnet(tf.tiny_flux()).state_dict().items()}
    tf.save(good, d / "good-fluxcn.safetensors")
    _truncate(d / "good-fluxcn.safetensors", d / "truncated-fluxcn.safetensors")
    tf.save({k: v for k, v in good.items() if k != "x_embedder.weight"}, d / "missing-fluxcn.safetensors")
    tf.save({**good, "x_embedder.weight": good["x_embedder.weight"].flatten()}, d / "flat-fluxcn.safetensors")
    q = "transformer_blocks.0.attn.norm_q.weight"
    tf.save({**good, q: torch.zeros(0)}, d / "headless-fluxcn.safetensors")
    tf.save({k: v for k, v in good.items() if k != "context_embedder.weight"}, d / "nocontext-fluxcn.safetensors")


@pytest.mark.parametrize("name, says", [
    ("truncated-fluxcn.safetensors", ()), ("missing-fluxcn.safetensors", ("x_embedder.weight",)),
    ("flat-fluxcn.safetensors", ("x_embedder.weight",)), ("headless-fluxcn.safetensors", ("heads",)),
    ("nocontext-fluxcn.safetensors", ("context_embedder.weight",)),
])
def test_broken_flux_controlnets(ex, root, name, says):
    """A header missing what the diffusers layout always has used to raise KeyError / ValueError /
    ZeroDivisionError from the plan, naming no file."""
    _once(root / "controlnet", "good-fluxcn.safetensors", _bad_flux_controlnets)
    _fails_then_good(ex, _cn_wf, "1", "ControlNetLoader", name, says, "good-fluxcn.safetensors")


# ------------------------------------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("name, tensor", [
    ("scalar-emb", torch.tensor(1.0)), ("zero-emb", torch.zeros(3, 0)), ("nan-emb", torch.full((2, 64), float("nan"))),
    ("rank3-emb", torch.zeros(2, 2, 7)),
])
def test_broken_embeddings_are_left_out_of_the_prompt(ex, root, name, tensor):
    """An embedding is a warning, never the failure of the prompt (ComfyUI's rule): a scalar or empty tensor used to
    raise IndexError / torch's reshape error from CLIPTextEncode, and NaN vectors made the conditioning NaN. The
    prompt encodes as if the word were absent."""
    (root / "embeddings").mkdir(exist_ok=True)
    save_file({"emb_params": tensor}, str(root / "embeddings" / f"{name}.safetensors"))

    def wf(text):
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
                "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    r = ex.run(wf(f"a embedding:{name} cat"))
    assert r.status == "success", r.error
    assert "nan" not in r.outputs["3"]["text"][0].lower()
    assert r.outputs["3"]["text"] == ex.run(wf("a  cat")).outputs["3"]["text"]


# ------------------------------------------------------------------------------------------ ControlNet Union files
@pytest.mark.parametrize("name, change, says", [
    ("notypes-union.safetensors", {"task_embedding": torch.zeros(0, 32)}, ()),
    ("flat-union.safetensors", {"task_embedding": torch.zeros(8)}, ()),
    ("noproj-union.safetensors", {"spatial_ch_projs.weight": None}, ()),
])
def test_broken_union_controlnets(ex, root, tiny_sd1, name, change, says):
    """A Union header without its type table (0 types, a 1-D table, no projection) was a ZeroDivisionError /
    ValueError / KeyError out of the plan; now the loader's error naming the file."""
    from tests.tiny_controlnet import build_tiny_union

    d = root / "controlnet"
    good = {k: v.contiguous() for k, v in build_tiny_union(tiny_sd1[0]).state_dict().items()}
    if not (d / "good-union.safetensors").exists():
        save_file(good, str(d / "good-union.safetensors"))
    bad = {**good, **{k: v for k, v in change.items() if v is not None}}
    save_file({k: v for k, v in bad.items() if change.get(k, 0) is not None}, str(d / name))
    _fails(ex, _cn_wf(name), "1", "ControlNetLoader", name, *says)
    assert ex.run(_cn_wf("good-union.safetensors")).status == "success"


# ------------------------------------------------------------------------------- headers, widths, repaired files
def test_a_lora_header_declaring_rank_a_million_is_refused_from_the_header(ex, root):
    """lora_up declared (192, 10^6) float32 over 8 bytes of data: refused by the header check, nothing allocated."""
    d = root / "loras"
    _once(d, "good-lora.safetensors", _bad_loras)
    _raw(d / "absurd-rank-lora.safetensors", {
        f"{QKV}.lora_up.weight": {"dtype": "F32", "shape": [192, 10**6], "data_offsets": [0, 4]},
        f"{QKV}.lora_down.weight": {"dtype": "F32", "shape": [10**6, 64], "data_offsets": [4, 8]}}, b"\0" * 8)
    _fails(ex, _lora_wf("absurd-rank-lora.safetensors"), "2", "LoraLoaderModelOnly", "absurd-rank-lora.safetensors",
           "needs")
    assert ex.run(_lora_wf("good-lora.safetensors")).status == "success"


def test_a_style_model_narrower_than_the_clip_vision_output(ex, root):
    """The 16-wide test style model on the bundled 64-wide CLIP vision model: StyleModelApply names both widths."""
    from tests.nodes.test_style_model import CLIP

    (root / "clip_vision").mkdir(exist_ok=True)
    (root / "clip_vision" / CLIP.name).write_bytes(CLIP.read_bytes())
    d = root / "style_models"
    _once(d, "good-style.safetensors", _bad_styles)

    def wf(style):
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
                "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP.name}},
                "4": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 9}},
                "5": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["3", 0], "image": ["4", 0],
                                                                  "crop": "none"}},
                "6": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style}},
                "7": {"class_type": "StyleModelApply", "inputs": {
                    "conditioning": ["2", 0], "style_model": ["6", 0], "clip_vision_output": ["5", 0],
                    "strength": 1.0, "strength_type": "multiply"}},
                "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}}}
    _fails(ex, wf("good-style.safetensors"), "7", "StyleModelApply", "good-style.safetensors", "16", "64")
    save_file(_style_sd(w=64), str(d / "wide-style.safetensors"))
    assert ex.run(wf("wide-style.safetensors")).status == "success"


@pytest.mark.parametrize("folder, node_wf, good", [
    ("style_models", "_style_wf", lambda: _style_sd()),
    ("hypernetworks", "_hn_wf", lambda: _hn_sd()),
])
def test_a_repaired_file_loads_on_the_same_executor(ex, root, folder, node_wf, good):
    """A file that failed, then replaced in place by a good one (same name), loads on the next run: the failure
    was not cached, and the file's new size/mtime is seen."""
    import os

    p = root / folder / "repaired.safetensors"
    p.write_bytes(b"\0" * 16)
    wf = globals()[node_wf]("repaired.safetensors")
    assert ex.run(wf).status == "error"
    save_file(good(), str(p))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = ex.run(wf)
    assert r.status == "success", r.error


# ----------------------------------------------------------------------------------------- diffusion models
@pytest.mark.parametrize("name, damage, says", [
    ("missing-flux.safetensors", "missing", ("double_blocks.0.img_mlp.0.weight", "missing")),
    ("int-flux.safetensors", "int", ()),
    ("shape-flux.safetensors", "shape", ("MLP width 5",)),
    ("extra-rank-flux.safetensors", "rank", ("MLP width 1",)),
])
def test_broken_flux_diffusion_models(ex, root, name, damage, says):
    """UNETLoader's plan reads the header (refusing what it cannot infer a config from); whatever it lets through
    fails where the model is first built (the sampler): a named error either way. (The plan's own ValueError
    on a wrong width was raw text naming no file.)"""
    good = tf.flux_file(tf.tiny_flux())
    k = "double_blocks.0.img_mlp.0.weight"
    sd = {"missing": {kk: v for kk, v in good.items() if kk != k},
          "int": {**good, k: torch.ones_like(good[k], dtype=torch.int32)},
          "shape": {**good, k: good[k][:5].contiguous()},
          "rank": {**good, k: good[k][None].contiguous()}}[damage]
    tf.save(sd, root / "diffusion_models" / name)

    def wf(unet):
        return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
                "c": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                              "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
                "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a"}},
                "l": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
                "2": {"class_type": "KSampler", "inputs": {
                    "model": ["1", 0], "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                    "scheduler": "simple", "positive": ["p", 0], "negative": ["p", 0], "latent_image": ["l", 0],
                    "denoise": 1.0}},
                "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    r = ex.run(wf(name))
    assert r.status == "error" and r.error["node_id"] in ("1", "2"), r.error
    _fails(ex, wf(name), r.error["node_id"], {"1": "UNETLoader", "2": "KSampler"}[r.error["node_id"]], name, *says)
    assert ex.run(wf("flux1-dev.safetensors")).status == "success"


def test_a_converter_missing_a_tensor_is_a_named_error(root):
    """load_diffusion_model's plan needs fewer tensors than FLUX's converter: a file without the fused txt qkv got
    past the plan and failed in the converter with a bare KeyError; now a CheckpointError naming file and tensor."""
    from engine.folders import ModelFolders
    from modelstore.families.store import load_diffusion_model
    from modelstore.models import ModelStore
    from modelstore.tensorfile import CheckpointError

    good = tf.flux_file(tf.tiny_flux())
    p = root / "diffusion_models" / "noqkv-flux.safetensors"
    tf.save({k: v for k, v in good.items() if k != "double_blocks.0.txt_attn.qkv.weight"}, p)
    store = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
    with pytest.raises(CheckpointError, match=r"noqkv-flux.safetensors: .*double_blocks.0.txt_attn.qkv.weight.* missing"):
        load_diffusion_model(store, p, p.name).get()


# ------------------------------------------------------------------------------------------ CLIP vision files
def _cv_wf(name):
    return {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": name}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 9}},
            "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 0], "image": ["2", 0], "crop": "none"}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}


CV_KEY = "vision_model.encoder.layers.0.mlp.fc2.weight"  # (64, 256) in the bundled loom-shapes-clip


@pytest.mark.parametrize("name, damage, says", [
    ("truncated-cv.safetensors", "truncated", ()), ("empty-cv.safetensors", "empty", ()),
    ("missing-cv.safetensors", "missing", (CV_KEY,)), ("int-cv.safetensors", "int", (CV_KEY, "int32")),
    ("shape-cv.safetensors", "shape", (CV_KEY, "(5,)")), ("extra-cv.safetensors", "extra", ("bogus.weight",)),
    ("stray-layer-cv.safetensors", "stray", ("0..n-1",)), ("word-layer-cv.safetensors", "word", ("not a number",)),
    ("nopos-cv.safetensors", "nopos", ("position_embedding",)), ("flatpatch-cv.safetensors", "flatpatch", ("rank",)),
])
def test_broken_clip_vision_files(ex, root, name, damage, says):
    """Raw SafetensorError / torch size-mismatch text / KeyError / int-weights-accepted before; and a stray
    ``layers.99999`` tensor made the loader build 100000 real layers before any check."""
    from safetensors.torch import load_file

    from tests.nodes.test_style_model import CLIP

    d = root / "clip_vision"
    d.mkdir(exist_ok=True)
    good = load_file(str(CLIP))
    if not (d / CLIP.name).exists():
        save_file(good, str(d / CLIP.name))
    pe = "vision_model.embeddings.patch_embedding.weight"
    sd = {"missing": {k: v for k, v in good.items() if k != CV_KEY},
          "int": {**good, CV_KEY: torch.ones(64, 256, dtype=torch.int32)},
          "shape": {**good, CV_KEY: torch.zeros(5)}, "extra": {**good, "bogus.weight": torch.ones(2)},
          "stray": {**good, "vision_model.encoder.layers.99999.mlp.fc2.bias": torch.zeros(1)},
          "word": {**good, "vision_model.encoder.layers.x.mlp.fc2.bias": torch.zeros(1)},
          "nopos": {k: v for k, v in good.items() if k != "vision_model.embeddings.position_embedding.weight"},
          "flatpatch": {**good, pe: good[pe].flatten()}}.get(damage)
    if damage == "truncated":
        _truncate(d / CLIP.name, d / name)
    elif damage == "empty":
        (d / name).write_bytes(b"")
    else:
        save_file(sd, str(d / name))
    _fails(ex, _cv_wf(name), "1", "CLIPVisionLoader", name, *says)
    assert ex.run(_cv_wf(CLIP.name)).status == "success"


def test_hypernetwork_metadata_that_is_not_json(ex, root):
    """layer_structure is bookkeeping (the layers are read from the tensors): garbage JSON there loads; the text
    "false" for activate_output is False (bool("false") was True)."""
    from modelstore.hypernetwork import load

    d = root / "hypernetworks"
    _once(d, "good-hn.safetensors", _bad_hns)
    save_file(_hn_sd(), str(d / "meta-hn.safetensors"),
              metadata={"layer_structure": "[1, 2,", "activation_func": "relu", "activate_output": "false"})
    assert ex.run(_hn_wf("meta-hn.safetensors")).status == "success"
    hn = load(d / "meta-hn.safetensors")
    assert hn.structure["layer_structure"] == "[1, 2," and hn.layers[64][0].activate_output is False


def test_saving_a_flux_diffusion_model_says_what_is_supported(ex, root):
    """ModelSave of a UNETLoader FLUX.1 model said 'no supported architecture family recognises this checkpoint'
    about a file that loads fine."""
    wf = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
          "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "attack/flux"}}}
    msg = _fails(ex, wf, "2", "ModelSave", "flux1-dev.safetensors", "saving is supported for SD1/SD2/SDXL")
    assert "recognises" not in msg
