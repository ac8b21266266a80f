"""Textual-inversion embeddings: ``embedding:name`` puts the file's vectors in the prompt for every text encoder
they fit; missing or mismatched embeddings warn (validation and run time), never silently."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nodes.conditioning import encode_text
from nodes.embeddings import names_in


@pytest.fixture(scope="module")
def emb_env(models_dir, tmp_path_factory, tiny):
    """The session models dir plus embeddings: 'redcircle' = the token vectors of 'red' and 'circle' of the tiny
    CLIP (so 'embedding:redcircle' must encode exactly like 'red circle'), 'wide' (width 128: fits nothing)."""
    from tests.nodes.conftest import make_env
    from modelstore.models import TOKENIZER_DIR  # noqa: F401 (the tokenizer the store uses)

    te = tiny[2]
    d = models_dir / "embeddings"
    d.mkdir(exist_ok=True)
    env = make_env(models_dir, tmp_path_factory.mktemp("emb"))
    _, clip, _ = env.model_store().load_checkpoint("tiny-sd1.safetensors")
    with env.model_store().using(clip) as (tenc,):
        tok = tenc.tokenizers[0]
        ids = tok(["red", "circle"], add_special_tokens=False)["input_ids"]
        assert all(len(i) == 1 for i in ids)
        weight = tenc.encoders[0].embeddings.token_embedding.weight
        vecs = torch.stack([weight[i[0]] for i in ids]).detach().clone().float()
    save_file({"emb_params": vecs}, str(d / "redcircle.safetensors"))
    save_file({"emb_params": torch.randn(2, 128)}, str(d / "wide.safetensors"))
    torch.save({"string_to_param": {"*": vecs}}, str(d / "pickled.pt"))
    return env, clip


def test_names_in_prompt():
    assert names_in("a (embedding:foo:1.2), embedding:bar.safetensors, x") == ["foo", "bar.safetensors"]


def test_embedding_encodes_like_its_words(emb_env):
    env, clip = emb_env
    want = encode_text(clip, "a red circle on blue")[0][0]
    for text in ("a embedding:redcircle on blue", "a embedding:redcircle.safetensors on blue"):
        warnings = []
        got = encode_text(clip, text, warn=warnings.append)[0][0]
        assert warnings == [] and torch.allclose(got, want, atol=1e-5), text
    # trailing punctuation is not part of the name but stays prompt text (the classic 'embedding:name, ...')
    comma = encode_text(clip, "a embedding:redcircle, on blue")[0][0]
    assert torch.allclose(comma, encode_text(clip, "a red circle, on blue")[0][0], atol=1e-5)
    assert not torch.allclose(comma, want, atol=1e-3)
    weighted = encode_text(clip, "a (embedding:redcircle:1.3) on blue")[0][0]
    assert torch.allclose(weighted, encode_text(clip, "a (red circle:1.3) on blue")[0][0], atol=1e-5)
    assert not torch.allclose(weighted, want, atol=1e-3)


def test_missing_mismatched_and_pickled_embeddings_warn_and_are_left_out(emb_env):
    env, clip = emb_env
    plain = encode_text(clip, "a on blue")[0][0]
    for name, needle in (("nothere", "not found"), ("wide", "width [128]"), ("pickled", "pickle")):
        warnings = []
        got = encode_text(clip, f"a embedding:{name} on blue", warn=warnings.append)[0][0]
        assert len(warnings) == 1 and name in warnings[0] and needle in warnings[0], warnings
        assert torch.allclose(got, plain, atol=1e-5)


def test_validation_and_run_time_warnings_through_the_engine(emb_env):
    from engine.executor import Executor
    from nodes import default_registry

    env, _ = emb_env
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "embedding:ghost, embedding:wide"}},
          "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
          "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["2", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "denoise": 1.0}},
          "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "emb"}}}
    ex = Executor(default_registry(), env)
    v = ex.prepare(wf)
    assert any("embedding 'ghost' not found" in w for w in v.warnings)  # validation: before anything loads
    assert not any("'wide'" in w for w in v.warnings)  # width needs the CLIP: a run-time warning
    events = []
    r = ex.run(wf, sink=events.append)
    assert r.status == "success", r.error
    run_warnings = [e.data for e in events if e.type == "warning"]
    assert {w["node"] for w in run_warnings} == {"2"}
    assert any("'ghost'" in w["message"] for w in run_warnings) and any("'wide'" in w["message"] for w in run_warnings)
    assert any("'wide'" in w for w in r.warnings)


def test_vectors_for_each_encoder_of_an_sdxl_clip():
    from nodes.embeddings import vectors_for

    sdxl = {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(2, 1280)}
    assert vectors_for(sdxl, 768, "sdxl", 0).shape == (2, 768)
    assert vectors_for(sdxl, 1280, "sdxl", 1).shape == (2, 1280)
    sd1 = {"string_to_param.*": torch.ones(3, 768)}
    assert vectors_for(sd1, 768, "sdxl", 0).shape == (3, 768)  # an SD1 embedding fits SDXL's CLIP-L ...
    assert vectors_for(sd1, 1280, "sdxl", 1) is None  # ... but not CLIP-G
    assert vectors_for({"<tok>": torch.ones(768)}, 768, "sd1", 0).shape == (1, 768)  # diffusers' one-vector files
