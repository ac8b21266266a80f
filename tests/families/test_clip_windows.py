"""Long prompts on the transformer families' CLIP encoders, windowed as CLIPTextEncode windows them on SD checkpoints
(nodes/prompt_parse.py ``tokenize_weighted``): 77-token windows (BOS, up to 75 tokens, EOS, pad) encoded one by one and
concatenated along tokens, the pooled vector from the first window. Through the real nodes on the tiny family files;
each window is compared with the encoding of its own words alone, so a truncation, a wrong cut or a leak between
windows fails."""
from __future__ import annotations

import torch

from .encoders import flux_clip as _flux_clip
from .encoders import run_node as _node
from .encoders import sd3_clip as _sd3_clip

WORDS = ["red", "blue", "green", "circle", "cat", "dog", "house", "tree"]  # one CLIP token each


def _words(n: int, start: int = 0) -> list[str]:
    return [WORDS[(start + i) % len(WORDS)] for i in range(n)]


def _long_prompt(clip, n: int = 100) -> tuple[str, str, str]:
    """(prompt of ``n`` CLIP tokens, its first 75 words, the rest) with one-token words (checked on the tokenizer)."""
    words = _words(n)
    tok = dict(clip.encoders)["clip_l"].get().tokenizer
    text = " ".join(words)
    assert len(tok(text, add_special_tokens=False).input_ids) == n
    return text, " ".join(words[:75]), " ".join(words[75:])


def _encode(env, clip, text):
    return _node("CLIPTextEncode", env, text, clip)[0][0]


def test_sd3_100_token_prompt_is_two_clip_windows_then_t5(fam_env):
    clip = _sd3_clip(fam_env)
    text, first, rest = _long_prompt(clip)
    c, opts = _encode(fam_env, clip, text)
    t5 = dict(clip.encoders)["t5"].get()
    t5_tokens = max(77, len(t5.tokenizer(text, verbose=False).input_ids))  # prompt + </s>, padded to 77
    assert c.shape[1] == 2 * 77 + t5_tokens
    c1, o1 = _encode(fam_env, clip, first)
    c2, _ = _encode(fam_env, clip, rest)
    assert torch.equal(c[:, :77], c1[:, :77])  # window 1 = the first 75 tokens alone
    assert torch.equal(c[:, 77:154], c2[:, :77])  # window 2 = the rest alone
    assert not torch.equal(c[:, :77], c[:, 77:154])
    assert torch.equal(opts["pooled_output"], o1["pooled_output"])  # pooled: the first window's
    width = c1.shape[-1]
    assert torch.equal(c[:, :154, 128:], torch.zeros(1, 154, width - 128))  # CLIP-L|CLIP-G (64+64), zero-padded


def test_sd3_t5_part_is_unchanged_by_clip_windows(fam_env):
    """The T5 tokens after the CLIP windows are the prompt's T5 encoding (T5 rules: pad to 77, never truncate)."""
    clip = _sd3_clip(fam_env)
    text, _, _ = _long_prompt(clip)
    c = _encode(fam_env, clip, text)[0]
    t5only = _node("CLIPTextEncodeSD3", fam_env, clip, "", "", text, "none")[0][0][0]
    assert t5only.shape[1] == 77 + (c.shape[1] - 154)  # empty CLIP prompts: one window
    assert torch.equal(c[:, 154:], t5only[:, 77:])


def test_sd3_short_prompt_is_the_plain_77_token_encoding(fam_env):
    """A prompt in one window: each CLIP's penultimate layer of the tokenizer's 77 ids, bit for bit."""
    clip = _sd3_clip(fam_env)
    c, opts = _encode(fam_env, clip, "a red circle on a blue background")
    assert c.shape[1] == 154
    feats, pooled = [], []
    for kind in ("clip_l", "clip_g"):
        te = dict(clip.encoders)[kind].get()
        ids = te.tokenizer("a red circle on a blue background", padding="max_length", max_length=77,
                           truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            o = te.model(ids, output_hidden_states=True)
        feats.append(o.hidden_states[-2].float())
        pooled.append(o.text_embeds.float())
    want = torch.cat(feats, -1)
    assert torch.equal(c[:, :77, :want.shape[-1]], want)
    assert torch.equal(opts["pooled_output"], torch.cat(pooled, -1))


def test_sd3_clip_prompts_of_different_lengths_pad_with_empty_windows(fam_env):
    """CLIPTextEncodeSD3 with a long CLIP-L and a short CLIP-G prompt: CLIP-G gets the empty prompt's window."""
    clip = _sd3_clip(fam_env)
    text, _, _ = _long_prompt(clip)
    c = _node("CLIPTextEncodeSD3", fam_env, clip, text, "red circle", "red circle", "empty_prompt")[0][0][0]
    short = _node("CLIPTextEncodeSD3", fam_env, clip, "", "red circle", "red circle", "empty_prompt")[0][0][0]
    empty = _node("CLIPTextEncodeSD3", fam_env, clip, "", "", "red circle", "empty_prompt")[0][0][0]
    assert c.shape[1] == 154 + 77
    assert torch.equal(c[:, :77, 64:128], short[:, :77, 64:128])  # CLIP-G window 1: its prompt
    assert torch.equal(c[:, 77:154, 64:128], empty[:, :77, 64:128])  # CLIP-G window 2: the empty prompt


def test_sd3_weights_act_per_window(fam_env):
    """``(cat:1.3)`` in the second window: window 1 is the plain first 75 tokens, window 2 is the weighted rest
    alone (reweighted against the empty window, as CLIPTextEncode)."""
    clip = _sd3_clip(fam_env)
    words = _words(99)
    first, rest = " ".join(words[:75]), " ".join(words[75:])
    c = _encode(fam_env, clip, f"{first} (cat:1.3) {rest}")[0]
    assert c.shape[1] > 154
    alone = _encode(fam_env, clip, f"(cat:1.3) {rest}")[0]
    plain = _encode(fam_env, clip, f"cat {rest}")[0]
    assert torch.equal(c[:, :77], _encode(fam_env, clip, first)[0][:, :77])
    assert torch.allclose(c[:, 77:154], alone[:, :77], atol=1e-6)
    assert not torch.allclose(c[:, 77:154], plain[:, :77], atol=1e-4)  # the weight did act


def test_flux_long_prompt_pooled_is_the_first_windows(fam_env):
    """A multi-token word across token 75 moves whole to the second window (CLIPTextEncode's cut), so the first
    window holds 74 tokens: a plain cut at 75 tokens would give another pooled vector."""
    clip = _flux_clip(fam_env)
    tok = dict(clip.encoders)["clip_l"].get().tokenizer
    assert 2 <= len(tok("xyzzyplugh", add_special_tokens=False).input_ids) <= 8
    first, rest = " ".join(_words(74)), " ".join(["xyzzyplugh"] + _words(30))
    text = f"{first} {rest}"
    c, opts = _encode(fam_env, clip, text)
    _, o1 = _encode(fam_env, clip, first)
    _, o2 = _encode(fam_env, clip, rest)
    assert torch.equal(opts["pooled_output"], o1["pooled_output"])
    assert not torch.equal(opts["pooled_output"], o2["pooled_output"])
    t5 = _node("CLIPTextEncodeFlux", fam_env, clip, "", text, 3.5)[0][0][0]
    assert torch.equal(c, t5)  # T5 part: the whole prompt, unchanged


def test_flux_short_prompt_pooled_is_the_plain_encoding(fam_env):
    clip = _flux_clip(fam_env)
    te = dict(clip.encoders)["clip_l"].get()
    ids = te.tokenizer("a red circle", padding="max_length", max_length=77, truncation=True,
                       return_tensors="pt").input_ids
    with torch.no_grad():
        h = te.model(ids).last_hidden_state.float()  # un-projected pooled: final-norm feature at the first EOS
    want = h[:, (ids[0] == te.tokenizer.eos_token_id).nonzero()[0, 0]]
    _, opts = _encode(fam_env, clip, "a red circle")
    assert torch.equal(opts["pooled_output"], want)
