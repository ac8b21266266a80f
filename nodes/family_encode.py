"""Text encoding for the split-loader families (a ``FamilyClip`` from CLIPLoader / DualCLIPLoader /
TripleCLIPLoader): CONDITIONING as ComfyUI builds it for each family.

- ``lumina2`` (Z-Image, Qwen3): the prompt in Qwen's chat form ``<|im_start|>user\\n{text}<|im_end|>\\n
  <|im_start|>assistant\\n``, unpadded, penultimate hidden layer -> (1, L, D); no pooled output.
- ``qwen_image`` (Qwen-Image, Qwen2.5-VL): the prompt in QwenImagePipeline's template (a system line asking to
  describe the image, then the user turn), unpadded, last hidden state; the template's prefix tokens (everything
  before the prompt: 34 with the real tokenizer) are dropped -> (1, L, D); no pooled output.
- ``flux``: T5 last hidden state of the prompt, eos, then pad to at least 256 tokens -> (1, max(256, L), D);
  CLIP-L's pooled output (B, 768) of the prompt's first 77-token window.
- ``sdxl`` (DualCLIPLoader): CLIP-L ++ CLIP-G penultimate layers (77 tokens per window), CLIP-G's projected pooled
  output of the first window.
- ``sd3``: CLIP-L ++ CLIP-G penultimate layers (77 tokens per window, zero-padded on features to T5's width)
  followed by T5's tokens (padded to at least 77); pooled = CLIP-L ++ CLIP-G projected embeddings of the first
  window. Missing encoders contribute zeros.
CLIP windows (as CLIPTextEncode on SD checkpoints, nodes/prompt_parse.py ``tokenize_weighted``): a prompt longer than
75 tokens is cut at word boundaries into 77-token windows (BOS, up to 75 tokens, EOS, pad), each encoded on its own
and concatenated along tokens; the pooled vector is the first window's (as ComfyUI). When CLIP-L's and CLIP-G's
prompts differ in window count the shorter gets empty-prompt windows (as ComfyUI's CLIPTextEncodeSDXL/SD3).
T5 length (ComfyUI 0.3.75's rule): the prompt, ``</s>``, then ``<pad>`` up to a per-family *minimum* (``T5_MIN_TOKENS``:
FLUX.1 256, SD3 77); a longer prompt is kept whole, never truncated (T5's relative position buckets take any length).
Prompt syntax as ComfyUI reads it (nodes/prompt_weights.py): ``(word:1.2)`` weights on CLIP and T5 tokens; Qwen3
and Qwen2.5-VL prompts are not weighted (ComfyUI disables weights there, the text is encoded as written); escapes
and ``embedding:name`` on every encoder. A prompt without syntax is encoded exactly as before.
"""
from __future__ import annotations

import torch

from .prompt_weights import has_syntax, resolver_for, weighted_ids

QWEN_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
#: diffusers QwenImagePipeline.prompt_template_encode (the text Qwen-Image was trained with)
QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                       "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                       "<|im_end|>\n<|im_start|>assistant\n")
QWEN_IMAGE_MAX_TOKENS = 1024
#: loader type -> the T5 part's minimum length in tokens (padded up to it, never truncated)
T5_MIN_TOKENS = {"flux": 256, "sd3": 77}
#: loader type -> encoder kinds it accepts (ComfyUI's recipes for the families Loom loads)
ACCEPTS = {"lumina2": {"qwen3"}, "qwen_image": {"qwen25vl"}, "flux": {"clip_l", "t5"}, "sd3": {"clip_l", "clip_g", "t5"},
           "stable_diffusion": {"clip_l"}, "sdxl": {"clip_l", "clip_g"}}
REQUIRED = {"lumina2": {"qwen3"}, "qwen_image": {"qwen25vl"}, "flux": {"clip_l", "t5"}, "sdxl": {"clip_l", "clip_g"}}


def check_kinds(type_: str, kinds, names) -> None:
    """Raise ValueError when the files' encoder kinds do not fit the loader type (at load, never silently)."""
    if type_ not in ACCEPTS:
        raise ValueError(f"CLIP type {type_!r} is not supported by Loom yet; supported: {sorted(ACCEPTS)}")
    bad = [f"{n} ({k})" for n, k in zip(names, kinds) if k not in ACCEPTS[type_]]
    if bad:
        raise ValueError(f"type {type_!r} takes {' / '.join(sorted(ACCEPTS[type_]))} text encoders; got "
                         f"{', '.join(bad)}")
    missing = REQUIRED.get(type_, set()) - set(kinds)
    if missing:
        raise ValueError(f"type {type_!r} needs {' and '.join(sorted(REQUIRED[type_]))}; missing {sorted(missing)}")


def _ids(tok, text: str, length: int | None, dev):
    if length is None:
        enc = tok(text, return_tensors="pt")
    else:
        enc = tok(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc.input_ids.to(dev)


def _plain(te, text):
    """No ``embedding:`` resolver: such words stay prompt text."""
    return None


def _weighted(te, pairs: list, empty: list, features, memo: dict | None = None):
    """Token features (1, L, D) of the (id, weight) ``pairs`` by ``features(ids)`` (``embedding:`` vectors injected),
    reweighted against ``features`` of the ``empty`` ids where a weight is not 1 (nodes/prompt_weights.py).
    ``memo``: shared by calls with the same ``empty`` ids (a long prompt's windows), so it is encoded once."""
    from .embeddings import inject
    from .prompt_weights import reweight

    dev = next(te.model.parameters()).device
    ids = torch.tensor([[t for t, _ in pairs]], device=dev)
    with inject(te.model, ids, [pairs]):
        out = features(ids)
    z = out[0] if isinstance(out, tuple) else out
    z = z.float().cpu()
    weights = torch.tensor([w for _, w in pairs])
    if (weights != 1.0).any():
        ze = memo.get("empty") if memo is not None else None
        if ze is None:
            ze = features(torch.tensor([empty], device=dev))
            ze = (ze[0] if isinstance(ze, tuple) else ze).float().cpu()
            if memo is not None:
                memo["empty"] = ze
        z = reweight(z, ze, weights)
    return (z,) + tuple(out[1:]) if isinstance(out, tuple) else z


def _clip_windows(te, text: str, res=_plain) -> list:
    """CLIP (id, weight) windows of 77 tokens (BOS, up to 75 prompt tokens, EOS, pad): nodes/prompt_parse.py
    ``tokenize_weighted``, the windows CLIPTextEncode uses on SD checkpoints; at least one."""
    from .prompt_parse import tokenize_weighted

    return tokenize_weighted(te.tokenizer, text, res(te, text) if has_syntax(text) else None)


def _clip_run(te, text: str, windows: list, features, n: int = 1):
    """``features`` over the CLIP ``windows`` of ``text``, padded with the empty prompt's window up to ``n`` windows
    (as ComfyUI pads the shorter of two CLIPs' prompts): (token features (1, 77*max(n, len(windows)), D) = the
    windows' concatenated along tokens, each reweighted against the empty window as in CLIPTextEncode, then the
    first window's other outputs (its pooled vector; unweighted, as ComfyUI)). One window of a prompt without
    syntax: the tokenizer's own 77-token encoding, bit for bit the encoding before windows."""
    from .prompt_parse import tokenize_weighted

    dev = next(te.model.parameters()).device
    if n <= 1 and len(windows) == 1 and not has_syntax(text):
        out = features(_ids(te.tokenizer, text, 77, dev))
        return tuple(o.float().cpu() for o in out)
    empty = tokenize_weighted(te.tokenizer, "")[0]
    windows = windows + [empty] * (n - len(windows))
    empty_ids, memo = [t for t, _ in empty], {}  # the empty window is encoded once for all windows
    outs = [_weighted(te, w, empty_ids, features, memo) for w in windows]
    return (torch.cat([o[0] for o in outs], 1),) + tuple(o.float().cpu() for o in outs[0][1:])


def _clip_hidden(te, o):
    """CLIP's penultimate hidden state and its pooled vector: projected text_embeds when the file has a projection,
    else the pooled output (final-norm feature at the first end token)."""
    pooled = getattr(o, "text_embeds", None)
    return o.hidden_states[-2], (pooled if pooled is not None else o.pooler_output)


def _clip(te, text: str, res=_plain, n: int = 1):
    """(penultimate hidden (1, 77*k, D) of the prompt's k windows (at least ``n``), the first window's pooled
    (1, P)). Weights reweight the hidden states; the pooled output is the unweighted prompt's (as ComfyUI)."""
    return _clip_run(te, text, _clip_windows(te, text, res),
                     lambda ids: _clip_hidden(te, te.model(ids, output_hidden_states=True)), n)


def _clip_pooled_output(te, text: str, res=_plain):
    """CLIP's un-projected pooled output (Flux uses it) of the prompt's first 77-token window: final-norm feature at
    the first end token. A longer prompt's later windows do not reach it (as the first window's pooled on SD)."""
    from .embeddings import inject

    dev = next(te.model.parameters()).device
    windows = _clip_windows(te, text, res)
    if has_syntax(text) or len(windows) > 1:
        pairs = windows[0]
        ids = torch.tensor([[t for t, _ in pairs]], device=dev)
    else:
        pairs, ids = [], _ids(te.tokenizer, text, 77, dev)
    with inject(te.model, ids, [pairs]):
        o = te.model(ids, output_hidden_states=True)
    if getattr(o, "pooler_output", None) is not None:
        return o.pooler_output.float().cpu()
    eos = te.model.config.eos_token_id
    pos = (ids == eos).int().argmax(-1)
    return o.last_hidden_state[torch.arange(ids.shape[0]), pos].float().cpu()


def _t5(te, text: str, min_tokens: int, res=_plain):
    """T5 last hidden state (1, max(min_tokens, L), D) of the prompt's L tokens (``</s>`` included) padded with
    ``<pad>`` up to ``min_tokens``; never truncated. Weighted: the empty sequence is ``</s>`` then pad, at the same
    length."""
    def features(ids):
        return te.model(ids).last_hidden_state

    tok = te.tokenizer
    if not has_syntax(text):
        ids = tok(text, verbose=False).input_ids  # verbose=False: no "longer than 512" warning, T5 takes any length
        ids = ids + [tok.pad_token_id] * (min_tokens - len(ids))
        return features(torch.tensor([ids], device=next(te.model.parameters()).device)).float().cpu()
    pairs = weighted_ids(tok, text, res(te, text)) + [(tok.eos_token_id, 1.0)]
    pairs += [(tok.pad_token_id, 1.0)] * (min_tokens - len(pairs))
    return _weighted(te, pairs, [tok.eos_token_id] + [tok.pad_token_id] * (len(pairs) - 1), features)


def _qwen(te, text: str, res=_plain):
    """Qwen3 penultimate hidden layer of the templated prompt (1, L, D). No prompt weights (as ComfyUI); escapes
    and ``embedding:`` words are read in the templated text (nodes/prompt_weights.py)."""
    def features(ids):
        return te.model(input_ids=ids, output_hidden_states=True).hidden_states[-2]

    tok = te.tokenizer
    if not has_syntax(text, weighted=False):
        return features(_ids(tok, QWEN_TEMPLATE.format(text), None, next(te.model.parameters()).device)).float().cpu()
    pairs = weighted_ids(tok, QWEN_TEMPLATE.format(text), res(te, text), weighted=False)
    return _weighted(te, pairs, [], features)


def _qwen_image(te, text: str, res=_plain):
    """QwenImagePipeline's prompt embedding: template, last hidden state, the template prefix dropped. No prompt
    weights (as ComfyUI); with escapes or ``embedding:`` words the prefix end is found as ComfyUI finds it (the
    second ``<|im_start|>``, then ``user\\n`` when it follows: an embedding right after the template's newline
    takes that newline, as in ComfyUI)."""
    def features(ids):
        mask = torch.ones_like(ids)
        return te.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]

    tok = te.tokenizer
    dev = next(te.model.parameters()).device
    prefix = QWEN_IMAGE_TEMPLATE.split("{}")[0]
    drop = len(tok(prefix).input_ids)
    if not has_syntax(text):
        enc = tok(QWEN_IMAGE_TEMPLATE.format(text), max_length=QWEN_IMAGE_MAX_TOKENS + drop, truncation=True,
                  return_tensors="pt")
        ids = enc.input_ids.to(dev)
        h = te.model(input_ids=ids, attention_mask=enc.attention_mask.to(dev),
                     output_hidden_states=True).hidden_states[-1]
        return h[:, drop:].float().cpu()
    pairs = weighted_ids(tok, QWEN_IMAGE_TEMPLATE.format(text), res(te, text), weighted=False)
    pairs = pairs[:QWEN_IMAGE_MAX_TOKENS + drop]
    return _weighted(te, pairs, [], features)[:, _template_end(tok, [t for t, _ in pairs]):]


def _template_end(tok, ids: list) -> int:
    """Where Qwen-Image's prompt starts in ``ids``: after the second ``<|im_start|>`` and the ``user\\n`` that
    normally follows it (ComfyUI's rule for the templated sequence)."""
    start = tok.convert_tokens_to_ids("<|im_start|>")
    user = tok("user\n", add_special_tokens=False).input_ids
    seen = [i for i, t in enumerate(ids) if t == start][:2]
    end = seen[-1] if seen else 0
    if len(ids) > end + len(user) + 1 and list(ids[end + 1:end + 1 + len(user)]) == user:
        end += 1 + len(user)
    return end


def encode(clip, text: str | dict, warn=None) -> list:
    """CONDITIONING for ``text`` (one string, or a dict kind -> string as CLIPTextEncodeFlux/SD3 give). ``clip`` is a
    split loader's ``FamilyClip`` or the CLIP ref of an all-in-one checkpoint (meta ``clip_type``). Prompt syntax as
    nodes/prompt_weights.py says; embedding problems go to ``warn``."""
    texts = text if isinstance(text, dict) else {k: text for k in ("clip_l", "clip_g", "t5", "qwen3", "qwen25vl")}
    store = clip.store
    kinds = list(clip.kinds()) if hasattr(clip, "encoders") else []
    cache: dict = {}

    def res(te, t):
        """The ``embedding:`` resolver for ``te`` (one per encoder, so each warning is given once), None if unused."""
        if "embedding:" not in t:
            return None
        if te.kind not in cache:
            cache[te.kind] = resolver_for(store, te, kinds.index(te.kind) if te.kind in kinds else 0, warn)
        return cache[te.kind]

    if hasattr(clip, "encoders"):
        with clip.store.using(*[r for _, r in clip.encoders]) as tes, torch.no_grad():
            return _encode(clip.type, {te.kind: te for te in tes}, texts, res)
    with clip.store.using(clip) as (bundle,), torch.no_grad():
        return _encode(bundle.clip_type, {te.kind: te for te in bundle.encoders}, texts, res)


def clip_type(clip) -> str | None:
    """The loader type of a family CLIP value (None for SD checkpoint CLIPs)."""
    if hasattr(clip, "encoders") and hasattr(clip, "type"):
        return clip.type
    return getattr(clip, "meta", {}).get("clip_type")


def _encode(type_: str, by: dict, texts: dict, res=_plain) -> list:
    if type_ == "lumina2":
        return [[_qwen(by["qwen3"], texts["qwen3"], res), {}]]
    if type_ == "qwen_image":
        return [[_qwen_image(by["qwen25vl"], texts["qwen25vl"], res), {}]]
    if type_ == "flux":
        t5 = _t5(by["t5"], texts["t5"], T5_MIN_TOKENS["flux"], res)
        return [[t5, {"pooled_output": _clip_pooled_output(by["clip_l"], texts["clip_l"], res)}]]
    if type_ == "sd3":
        return [_sd3(by, texts, res)]
    if type_ == "sdxl":  # SDXL: both CLIPs' penultimate layers side by side, CLIP-G's projected pooled output
        n = max(len(_clip_windows(by[k], texts[k], res)) for k in ("clip_l", "clip_g"))
        hl, _ = _clip(by["clip_l"], texts["clip_l"], res, n)
        hg, pg = _clip(by["clip_g"], texts["clip_g"], res, n)
        return [[torch.cat([hl, hg], -1), {"pooled_output": pg}]]
    if type_ == "stable_diffusion":
        te, text = by["clip_l"], texts["clip_l"]

        def features(ids):
            o = te.model(ids)
            pooled = getattr(o, "text_embeds", None)
            return o.last_hidden_state, (pooled if pooled is not None else o.pooler_output)

        h, pooled = _clip_run(te, text, _clip_windows(te, text, res), features)
        return [[h, {"pooled_output": pooled}]]
    raise ValueError(f"CLIP type {type_!r} cannot encode text yet")


def _sd3(by: dict, texts: dict, res=_plain):
    feats, pooled = [], []
    t5 = _t5(by["t5"], texts["t5"], T5_MIN_TOKENS["sd3"], res) if "t5" in by else None
    width = t5.shape[-1] if t5 is not None else 4096
    # every CLIP gets as many 77-token windows as the longest CLIP prompt (the shorter padded with empty windows)
    n = max([len(_clip_windows(by[k], texts[k], res)) for k in ("clip_l", "clip_g") if k in by] or [1])
    for kind, dim in (("clip_l", 768), ("clip_g", 1280)):
        if kind in by:
            h, p = _clip(by[kind], texts[kind], res, n)
        elif kind == "clip_l":  # a missing CLIP-L is zeros of its real width (768), before CLIP-G
            h, p = torch.zeros(1, 77 * n, dim), torch.zeros(1, dim)
        else:  # a missing CLIP-G: zero features come from the padding to T5's width, zero pooled from the sampler
            continue
        feats.append(h)
        pooled.append(p)
    clip_feats = torch.cat(feats, -1)
    clip_feats = torch.nn.functional.pad(clip_feats, (0, width - clip_feats.shape[-1]))
    cond = clip_feats if t5 is None else torch.cat([clip_feats, t5], 1)
    return [cond, {"pooled_output": torch.cat(pooled, -1)}]
