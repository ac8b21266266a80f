"""Split loaders on tiny files of each family: detection from tensors, exact weights after the layout conversion,
per-component residency, and the clear errors (unknown family, wrong encoder for the loader type, no tokenizer)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelstore.families import store as fs
from modelstore.families.common import UnknownModelFile
from modelstore.families.text_encoders import MissingTokenizer


def _store(root, **kw):
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore

    return ModelStore(ModelFolders(root), device="cpu", dtype="fp32", **kw)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("family,file", [("zimage", "z_image_turbo_bf16.safetensors"), ("flux", "flux1-dev.safetensors"),
                                         ("sd3", "sd3.5_medium.safetensors")])
def test_diffusion_model_weights_round_trip(family_models, family, file):
    root, orig = family_models
    st = _store(root)
    ref = fs.load_diffusion_model(st, root / "diffusion_models" / file, file)
    assert ref.meta["family"] == family
    _same(ref.get().module, orig[family]["transformer"])


@pytest.mark.parametrize("file,kind,src", [("qwen_3_4b.safetensors", "qwen3", ("zimage", "text_encoder")),
                                           ("clip_l.safetensors", "clip_l", ("sd3", "clip_l")),
                                           ("clip_g.safetensors", "clip_g", ("sd3", "clip_g")),
                                           ("t5xxl_fp16.safetensors", "t5", ("sd3", "t5"))])
def test_text_encoder_weights_round_trip(family_models, file, kind, src):
    root, orig = family_models
    st = _store(root)
    k, ref = fs.load_text_encoder(st, root / "text_encoders" / file)
    assert k == kind
    _same(ref.get().model, orig[src[0]][src[1]])


def test_unknown_diffusion_model_names_keys_and_families(family_models, tmp_path):
    from tests.tiny_families import save

    save({"blocks.0.weird.weight": torch.zeros(2, 2)}, tmp_path / "odd.safetensors")
    with pytest.raises(UnknownModelFile) as e:
        fs.load_diffusion_model(_store(family_models[0]), tmp_path / "odd.safetensors", "odd.safetensors")
    msg = str(e.value)
    assert "blocks.0.weird.weight" in msg and "flux" in msg and "zimage" in msg and "sd3" in msg


def test_unknown_text_encoder(tmp_path, family_models):
    from tests.tiny_families import save

    save({"foo.weight": torch.zeros(2)}, tmp_path / "te.safetensors")
    with pytest.raises(UnknownModelFile, match="foo.weight"):
        fs.load_text_encoder(_store(family_models[0]), tmp_path / "te.safetensors")


def test_missing_tokenizer_names_the_folders(tmp_path, family_models):
    import shutil

    root = family_models[0]
    shutil.copy(root / "text_encoders" / "t5xxl_fp16.safetensors", tmp_path / "t5.safetensors")
    with pytest.raises(MissingTokenizer) as e:
        fs.load_text_encoder(_store(tmp_path), tmp_path / "t5.safetensors")
    assert "t5_tokenizer" in str(e.value) and str(tmp_path / "tokenizers" / "t5") in str(e.value)


class _Ctx:
    def __init__(self, env):
        self.env = env


@pytest.mark.parametrize("node,args,words", [
    ("CLIPLoader", dict(clip_name="clip_l.safetensors", type="lumina2"), ["lumina2", "clip_l.safetensors (clip_l)"]),
    ("DualCLIPLoader", dict(clip_name1="clip_l.safetensors", clip_name2="qwen_3_4b.safetensors", type="flux"),
     ["flux", "qwen3"]),
    ("CLIPLoader", dict(clip_name="t5xxl_fp16.safetensors", type="wan"), ["wan", "not supported"])])
def test_clip_loaders_reject_wrong_encoder_for_type(fam_env, node, args, words):
    from nodes import default_registry

    with pytest.raises(ValueError) as e:
        default_registry().get(node)().run(_Ctx(fam_env), **args)
    for w in words:
        assert w in str(e.value)


def test_text_encoder_dropped_when_budget_holds_one_component(family_models):
    """A CPU store whose budget holds only the largest component keeps one at a time: loading the DiT drops the
    text encoder (per-component residency), and the encoder reloads on its next use."""
    root, _ = family_models
    st = _store(root, budget_bytes=1)
    _, te = fs.load_text_encoder(st, root / "text_encoders" / "qwen_3_4b.safetensors")
    dm = fs.load_diffusion_model(st, root / "diffusion_models" / "z_image_turbo_bf16.safetensors", "z")
    te.get()
    assert [k.component for k, _, _ in st.loaded()] == ["family_te"]
    dm.get()
    assert [k.component for k, _, _ in st.loaded()] == ["family_dm"]
    assert st.stats["drops"] == 1


def test_fp8_weight_dtype_keeps_linears_in_8_bits(family_models):
    root, orig = family_models
    st = _store(root)
    ref = fs.load_diffusion_model(st, root / "diffusion_models" / "z_image_turbo_bf16.safetensors", "z", "fp8_e4m3fn")
    m = ref.get()
    lin = [x for n, x in m.module.named_modules() if isinstance(x, torch.nn.Linear) and n.startswith("layers.")]
    assert lin and all(x.weight.dtype == torch.float8_e4m3fn for x in lin)
    x = torch.randn(1, 16, 8, 8)
    cond = {"context": [torch.randn(7, 32)]}
    full = fs.load_diffusion_model(st, root / "diffusion_models" / "z_image_turbo_bf16.safetensors", "z").get()
    a, b = m.velocity(x, torch.tensor([0.5]), cond), full.velocity(x, torch.tensor([0.5]), cond)
    other = full.velocity(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), cond)
    # e4m3 keeps 3 mantissa bits (~6% per weight): close to the full-precision output, far from another input's
    assert torch.isfinite(a).all() and (a - b).abs().mean() < 0.25 * (other - b).abs().mean()
