"""T5-XXL prompt length as ComfyUI 0.3.75 builds it: the prompt, ``</s>``, then ``<pad>`` up to a per-family
minimum (SD3/SD3.5: 77, FLUX.1: 256), never truncated. Through the real nodes (TripleCLIPLoader, DualCLIPLoader,
CheckpointLoaderSimple, CLIPTextEncode, CLIPTextEncodeSD3, CLIPTextEncodeFlux) on the tiny family files; the T5
part is checked against the tiny T5 run by hand on the expected ids, so a wrong length or a truncation fails."""
from __future__ import annotations

import pytest
import torch

from .encoders import flux_clip as _flux_clip
from .encoders import run_node as _node
from .encoders import sd3_clip as _sd3_clip


def _t5(clip):
    return dict(clip.encoders)["t5"].get()


def _by_hand(te, ids: list, min_tokens: int, weighted: int = 0, w: float = 1.0):
    """T5 features of ``ids`` (no special tokens) + ``</s>``, padded with ``<pad>`` to ``min_tokens``; with
    ``weighted`` > 0 the first ``weighted`` tokens are reweighted by ``w`` against ``</s>`` + pad at the same
    length (ComfyUI's z_empty)."""
    tok, m = te.tokenizer, te.model
    full = ids + [tok.eos_token_id]
    full += [tok.pad_token_id] * (min_tokens - len(full))
    with torch.no_grad():
        z = m(torch.tensor([full])).last_hidden_state.float()
        if weighted:
            ze = m(torch.tensor([[tok.eos_token_id] + [tok.pad_token_id] * (len(full) - 1)])).last_hidden_state.float()
            z[:, :weighted] = (z[:, :weighted] - ze[:, :weighted]) * w + ze[:, :weighted]
    return z


def _long_text(tok, n: int = 300) -> tuple[str, list]:
    """A prompt of at least ``n`` T5 tokens (``</s>`` included) on the tiny tokenizer: one word repeated."""
    words = ["red"]
    while len(tok(" ".join(words), verbose=False).input_ids) < n:
        words.append("red")
    text = " ".join(words)
    return text, tok(text, add_special_tokens=False, verbose=False).input_ids


def test_sd3_short_prompt_is_77_clip_plus_77_t5(fam_env):
    clip = _sd3_clip(fam_env)
    te = _t5(clip)
    want = _by_hand(te, te.tokenizer("a red circle", add_special_tokens=False).input_ids, 77)
    conds = {"CLIPTextEncode": _node("CLIPTextEncode", fam_env, "a red circle", clip)[0],
             "CLIPTextEncodeSD3": _node("CLIPTextEncodeSD3", fam_env, clip, "a red circle", "a red circle",
                                        "a red circle", "none")[0]}
    for name, cond in conds.items():
        c = cond[0][0]
        assert c.shape[1] == 154, (name, c.shape)
        assert torch.allclose(c[:, 77:], want, atol=1e-5), name


def test_sd3_all_in_one_checkpoint_short_prompt_is_154_tokens(fam_env):
    _, clip, _ = _node("CheckpointLoaderSimple", fam_env, "sd3.5_medium_incl_clips.safetensors")
    cond = _node("CLIPTextEncode", fam_env, "a red circle", clip)[0]
    assert cond[0][0].shape[1] == 154


def test_flux_short_prompt_t5_is_256_tokens(fam_env):
    clip = _flux_clip(fam_env)
    te = _t5(clip)
    want = _by_hand(te, te.tokenizer("a red circle", add_special_tokens=False).input_ids, 256)
    for cond in (_node("CLIPTextEncode", fam_env, "a red circle", clip)[0],
                 _node("CLIPTextEncodeFlux", fam_env, clip, "a red circle", "a red circle", 3.5)[0]):
        c = cond[0][0]
        assert c.shape[1] == 256, c.shape
        assert torch.allclose(c, want, atol=1e-5)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_long_prompt_is_not_truncated(fam_env, family):
    """A prompt of 300+ T5 tokens keeps every token (past 256 and past the tokenizer's 512-free model length)."""
    clip = _flux_clip(fam_env) if family == "flux" else _sd3_clip(fam_env)
    te = _t5(clip)
    text, ids = _long_text(te.tokenizer)
    n = len(ids) + 1
    assert n >= 300
    c = _node("CLIPTextEncode", fam_env, text, clip)[0][0][0]
    t5_part = c if family == "flux" else c[:, -n:]  # SD3: the CLIP windows (77 tokens each), then T5
    assert t5_part.shape[1] == n and (family == "flux" or (c.shape[1] - n) % 77 == 0), (c.shape, n)
    assert torch.allclose(t5_part, _by_hand(te, ids, n), atol=1e-5)


@pytest.mark.parametrize("family,long", [("flux", False), ("flux", True), ("sd3", False), ("sd3", True)])
def test_weighting_empty_sequence_has_the_prompts_length(fam_env, family, long):
    """``(red:1.3) ...``: z_empty (``</s>`` + pad) is as long as the prompt's padded T5 sequence (77 / 256 for a short
    prompt on SD3 / FLUX.1, the whole prompt for a long one); the expectation is built with that length."""
    clip = _flux_clip(fam_env) if family == "flux" else _sd3_clip(fam_env)
    te = _t5(clip)
    tok = te.tokenizer
    rest = _long_text(tok)[0] if long else "circle on a blue background"
    head = tok("red", add_special_tokens=False).input_ids
    ids = head + tok(" " + rest, add_special_tokens=False, verbose=False).input_ids
    min_tokens = 256 if family == "flux" else 77
    text = f"(red:1.3) {rest}"
    node = ("CLIPTextEncodeFlux", (clip, "red", text, 3.5)) if family == "flux" else \
        ("CLIPTextEncodeSD3", (clip, "red", "red", text, "none"))
    c = _node(node[0], fam_env, *node[1])[0][0][0]
    want = _by_hand(te, ids, min_tokens, weighted=len(head), w=1.3)
    t5_part = c if family == "flux" else c[:, -want.shape[1]:]  # SD3: after the CLIP windows
    assert t5_part.shape[1] == max(min_tokens, len(ids) + 1) == want.shape[1], text
    assert torch.allclose(t5_part, want, atol=1e-5)
    plain = _by_hand(te, ids, min_tokens)
    assert not torch.allclose(t5_part[:, :len(head)], plain[:, :len(head)], atol=1e-3)  # the weight did act
