"""Prompt syntax on the transformer families' text encoders as ComfyUI 0.3.75 reads it (T5 for FLUX.1 and SD3
weighted; Qwen3 for Z-Image and Qwen2.5-VL for Qwen-Image not weighted; escapes and ``embedding:name`` on all), on
the tiny files with their tiny tokenizers.

Expectations are computed by hand from the encoder: the prompt's features ``z`` (the syntax stripped, tokenized as
one string) and ComfyUI's empty sequence ``z_empty`` at the same length (T5: ``</s>`` then pad to the prompt's padded
length, 256 on FLUX.1; CLIP: BOS, EOS, pad), then ``(z - z_empty) * w + z_empty`` on the weighted tokens only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.family_encode import QWEN_IMAGE_TEMPLATE, QWEN_TEMPLATE, T5_MIN_TOKENS, encode
from tests.families.test_family_equivalence import _clip, _store

FLUX_T5 = T5_MIN_TOKENS["flux"]  # FLUX.1's T5 minimum length (these prompts are shorter)

SETS = {"lumina2": (["qwen_3_4b.safetensors"], "qwen3"),
        "qwen_image": (["qwen_2.5_vl_7b_fp8_scaled.safetensors"], "qwen25vl"),
        "flux": (["clip_l.safetensors", "t5xxl_fp16.safetensors"], "t5")}


@pytest.fixture(scope="module")
def clips(family_models):
    root = family_models[0]
    st = _store(root)
    out = {}
    for type_, (names, kind) in SETS.items():
        clip = _clip(st, root, names, type_)
        out[type_] = (clip, dict(clip.encoders)[kind].get())
    return root, out


def _cond(clip, text, **kw):
    """The conditioning tensor of ``text``; FLUX.1's CLIP-L (pooled vector only) gets the plain words, so that its
    own embedding warnings (CLIP-L is narrower than T5) stay out of the T5 checks."""
    if clip.type == "flux":
        text = {"clip_l": "red circle", "t5": text}
    return encode(clip, text, **kw)[0][0]


def _by_hand(type_, te, text, weighted=(), pad_empty=True):
    """(z, z_empty) of ``text`` (no syntax) as the family encodes it, and the positions of ``weighted`` (the text's
    first occurrence of that substring) in the returned features."""
    tok, m = te.tokenizer, te.model
    with torch.no_grad():
        if type_ == "flux":
            ids = tok(text, padding="max_length", max_length=FLUX_T5, truncation=True, return_tensors="pt").input_ids
            empty = torch.tensor([[tok.eos_token_id] + [tok.pad_token_id] * (FLUX_T5 - 1)])
            z, ze = m(ids).last_hidden_state, m(empty).last_hidden_state
            start = 0
        else:
            tmpl = QWEN_TEMPLATE if type_ == "lumina2" else QWEN_IMAGE_TEMPLATE
            prefix = tmpl.split("{}")[0]
            ids = tok(tmpl.format(text), return_tensors="pt").input_ids
            empty = torch.full_like(ids, tok.pad_token_id)
            layer = -2 if type_ == "lumina2" else -1
            kw = {} if type_ == "lumina2" else {"attention_mask": torch.ones_like(ids)}
            z = m(input_ids=ids, output_hidden_states=True, **kw).hidden_states[layer]
            ze = m(input_ids=empty, output_hidden_states=True, **kw).hidden_states[layer]
            start = len(tok(prefix).input_ids)
            if type_ == "qwen_image":  # the template prefix is dropped from the conditioning
                z, ze, start = z[:, start:], ze[:, start:], 0
    spans = []
    for w in weighted:
        before = text[:text.index(w)]
        a = start + (len(tok(before, add_special_tokens=False).input_ids) if before else 0)
        spans.append(range(a, a + len(tok(w, add_special_tokens=False).input_ids)))
    return z.float(), ze.float(), spans


@pytest.mark.parametrize("type_", list(SETS))
def test_no_syntax_is_the_plain_encoding_and_qwen_is_not_weighted(clips, type_):
    _, c = clips
    clip, te = c[type_]
    z, _, _ = _by_hand(type_, te, "a red circle")
    assert torch.equal(_cond(clip, "a red circle"), z)  # today's path, bit for bit
    if type_ == "flux":
        assert torch.equal(_cond(clip, "(a red:1.0) circle"), z)  # syntax with all weights 1: same ids, same features
    else:  # ComfyUI tokenizes Qwen prompts with weights disabled: the syntax is prompt text
        lit, _, _ = _by_hand(type_, te, "(a red:1.5) circle")
        assert torch.equal(_cond(clip, "(a red:1.5) circle"), lit)


def test_t5_weight_is_comfyui_formula_on_the_weighted_tokens_only(clips):
    _, c = clips
    clip, te = c["flux"]
    z, ze, (red,) = _by_hand("flux", te, "red circle", weighted=("red",))
    got = _cond(clip, "(red:1.5) circle")
    want = z.clone()
    want[:, red.start:red.stop] = (z[:, red.start:red.stop] - ze[:, red.start:red.stop]) * 1.5 + ze[:, red.start:red.stop]
    assert got.shape == z.shape and len(red) >= 1
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, z, atol=1e-4)
    rest = [i for i in range(z.shape[1]) if i not in red]
    assert torch.equal(got[:, rest], z[:, rest])  # ' circle', eos and padding: untouched


def test_t5_nesting_multiplies_and_an_explicit_weight_sets(clips):
    _, c = clips
    clip, te = c["flux"]
    z, ze, (red,) = _by_hand("flux", te, "red circle", weighted=("red",))
    want = z.clone()
    want[:, red.start:red.stop] = (z[:, red.start:red.stop] - ze[:, red.start:red.stop]) * 1.21 + ze[:, red.start:red.stop]
    assert torch.allclose(_cond(clip, "((red)) circle"), want, atol=1e-5, rtol=0)
    assert torch.equal(_cond(clip, "((red:1.5)) circle"), _cond(clip, "(red:1.5) circle"))


@pytest.mark.parametrize("type_", list(SETS))
def test_escaped_parentheses_reach_the_tokenizer(clips, type_):
    _, c = clips
    clip, te = c[type_]
    lit, _, _ = _by_hand(type_, te, "(red) circle")
    assert torch.equal(_cond(clip, "\\(red\\) circle"), lit)
    plain, _, _ = _by_hand(type_, te, "red circle")
    assert lit.shape != plain.shape or not torch.allclose(lit, plain, atol=1e-4)


def _write_embedding(root, name, vectors):
    from safetensors.torch import save_file

    (root / "embeddings").mkdir(exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, str(root / "embeddings" / f"{name}.safetensors"))


def _features_of_ids(type_, te, ids):
    """The family's features for explicit token ids (T5: + eos + padding; Qwen-Image: the template prefix dropped)."""
    tok, m = te.tokenizer, te.model
    with torch.no_grad():
        if type_ == "flux":
            ids = ids + [tok.eos_token_id] + [tok.pad_token_id] * (FLUX_T5 - len(ids) - 1)
            return m(torch.tensor([ids])).last_hidden_state.float()
        t = torch.tensor([ids])
        if type_ == "lumina2":
            return m(input_ids=t, output_hidden_states=True).hidden_states[-2].float()
        h = m(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True).hidden_states[-1]
        return h[:, len(tok(QWEN_IMAGE_TEMPLATE.split("{}")[0]).input_ids):].float()


@pytest.mark.parametrize("type_", list(SETS))
def test_embedding_of_the_encoders_width_is_used_else_warned(clips, type_):
    """ComfyUI's rule: the text splits before ' embedding:' (the space dropped), the name is the next word and the rest
    of the piece is tokenized with its whitespace collapsed (the template's newlines included)."""
    root, c = clips
    clip, te = c[type_]
    from nodes.embeddings import _token_embedding

    tok = te.tokenizer

    def ids(s):
        return tok(s, add_special_tokens=False).input_ids

    red = ids("red")
    _write_embedding(root, f"red_{type_}", _token_embedding(te.model).weight[red].detach().clone())
    _write_embedding(root, f"wide_{type_}", torch.randn(2, _token_embedding(te.model).weight.shape[1] + 8))
    tmpl = {"flux": "{}", "lumina2": QWEN_TEMPLATE, "qwen_image": QWEN_IMAGE_TEMPLATE}[type_]
    left, right = tmpl.split("{}")
    before, after = ids(left + "a"), ids(" ".join(("circle" + right).split()))
    warnings = []
    got = _cond(clip, f"a embedding:red_{type_} circle", warn=warnings.append)
    assert warnings == []
    assert torch.allclose(got, _features_of_ids(type_, te, before + red + after), atol=1e-6)
    got = _cond(clip, f"a embedding:wide_{type_} circle", warn=warnings.append)
    assert len(warnings) == 1 and f"wide_{type_}" in warnings[0] and "width" in warnings[0], warnings
    assert torch.allclose(got, _features_of_ids(type_, te, before + after), atol=1e-6)  # the word is left out
    if type_ == "flux":  # a weighted embedding is weighted like the words it stands for
        weighted = _cond(clip, f"(embedding:red_{type_}:1.5) circle")
        assert torch.allclose(weighted, _cond(clip, "(red:1.5) circle"), atol=1e-5)


def test_embedding_warnings_at_validation_and_run_time(fam_env, family_models):
    from engine.executor import Executor
    from nodes import default_registry

    root = family_models[0]
    _write_embedding(root, "wide_t5", torch.randn(1, 7))
    wf = {"clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                              "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
          "p": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": "a red circle",
                                                               "t5xxl": "embedding:ghost, embedding:wide_t5 circle",
                                                               "guidance": 3.5}},
          "out": {"class_type": "PreviewAny", "inputs": {"source": ["p", 0]}}}
    ex = Executor(default_registry(), fam_env)
    v = ex.prepare(wf)
    assert any("embedding 'ghost' not found" in w for w in v.warnings), v.warnings
    events = []
    r = ex.run(wf, sink=events.append)
    assert r.status == "success", r.error
    run = [e.data for e in events if e.type == "warning"]
    assert {w["node"] for w in run} == {"p"}
    assert any("'ghost'" in w["message"] for w in run) and any("'wide_t5'" in w["message"] for w in run), run


def test_flux_txt2img_changes_with_a_weight_and_not_at_one(fam_exec, fam_env):
    from tests.families.test_family_txt2img import _enc, txt2img

    images = {}
    for prefix, text in (("wplain", "a red circle"), ("wone", "(a red:1.0) circle"), ("wheavy", "(a red circle:4.0)"), ("wother", "blue square on green grass")):
        wf = txt2img({"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                                      "weight_dtype": "default"}},
                      "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                          "clip_name2": "t5xxl_fp16.safetensors",
                                                                          "type": "flux"}},
                      "p": _enc("clip", text), "n": _enc("clip", "")}, ["p", 0], ["n", 0], cfg=1.0, steps=2,
                     prefix=prefix)
        r = fam_exec.run(wf)
        assert r.status == "success", r.error
        images[prefix] = np.asarray(Image.open(sorted(fam_env.output_dir.glob(f"{prefix}_*.png"))[-1])).astype(int)
    assert np.array_equal(images["wplain"], images["wone"])
    diff = np.abs(images["wplain"] - images["wheavy"]).max()
    other = np.abs(images["wplain"] - images["wother"]).max()
    print(f"\nFLUX.1 64px, 2 steps: max pixel diff plain vs (a red circle:4.0) = {diff}, vs another prompt = {other}")
    assert diff > 0


def test_split_loader_clips_weight_like_clip_text_encode(family_models):
    """SD3's TripleCLIPLoader: the CLIP-L tokens are reweighted against CLIP's empty window (BOS, EOS, pad), the
    pooled vectors are the unweighted prompt's (as ComfyUI), the T5 part is weighted as FLUX.1's (at 77 tokens)."""
    root = family_models[0]
    clip = _clip(_store(root), root, ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3")
    plain, weighted = encode(clip, "red circle")[0], encode(clip, "(red:1.5) circle")[0]
    assert torch.equal(weighted[1]["pooled_output"], plain[1]["pooled_output"])
    te = dict(clip.encoders)["clip_l"].get()
    tok = te.tokenizer
    with torch.no_grad():
        z = te.model(tok("red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids,
                     output_hidden_states=True).hidden_states[-2].float()
        ze = te.model(tok("", padding="max_length", max_length=77, return_tensors="pt").input_ids,
                      output_hidden_states=True).hidden_states[-2].float()
    n = len(tok("red", add_special_tokens=False).input_ids)
    want = z.clone()
    want[:, 1:1 + n] = (z[:, 1:1 + n] - ze[:, 1:1 + n]) * 1.5 + ze[:, 1:1 + n]
    width = z.shape[-1]
    assert torch.equal(plain[0][:, :77, :width], z)
    assert torch.allclose(weighted[0][:, :77, :width], want, atol=1e-6, rtol=0)
    assert not torch.allclose(weighted[0][:, :77, :width], z, atol=1e-4)
    t5 = dict(clip.encoders)["t5"].get()  # SD3's T5 part: FLUX.1's rule at SD3's minimum length, 77 tokens
    t5_tok = t5.tokenizer
    head = t5_tok("red", add_special_tokens=False).input_ids
    ids = head + t5_tok(" circle", add_special_tokens=False).input_ids + [t5_tok.eos_token_id]
    ids += [t5_tok.pad_token_id] * (77 - len(ids))
    with torch.no_grad():
        z5 = t5.model(torch.tensor([ids])).last_hidden_state.float()
        ze5 = t5.model(torch.tensor([[t5_tok.eos_token_id] + [t5_tok.pad_token_id] * 76])).last_hidden_state.float()
    z5[:, :len(head)] = (z5[:, :len(head)] - ze5[:, :len(head)]) * 1.5 + ze5[:, :len(head)]
    assert weighted[0].shape[1] == 154
    assert torch.allclose(weighted[0][:, 77:], z5, atol=1e-5)
    flux = _clip(_store(root), root, ["clip_l.safetensors", "t5xxl_fp16.safetensors"], "flux")
    flux_weighted = encode(flux, "(red:1.5) circle")[0]
    assert flux_weighted[0].shape[1] == 256
    assert torch.equal(flux_weighted[1]["pooled_output"], encode(flux, "red circle")[0][1]["pooled_output"])


def test_weighted_ids_tokenize_each_segment_with_its_weight(clips):
    from nodes.prompt_weights import weighted_ids

    tok = clips[1]["lumina2"][1].tokenizer

    def ids(s):
        return tok(s, add_special_tokens=False).input_ids

    got = weighted_ids(tok, "a \\(b\\) ((red)) (circle:0.5) embedding:x")
    pieces = [("a (b) ", 1.0), ("red", 1.21), (" ", 1.0), ("circle", 0.5), (" embedding:x", 1.0)]
    assert [t for t, _ in got] == [i for s, _ in pieces for i in ids(s)]  # no resolver: embedding words stay text
    assert [w for _, w in got] == pytest.approx([w for s, w in pieces for _ in ids(s)])
    flat = weighted_ids(tok, "a \\(b\\) ((red)) (circle:0.5)", weighted=False)  # Qwen: one segment, escapes undone
    assert flat == [(i, 1.0) for i in ids("a (b) ((red)) (circle:0.5)")]
