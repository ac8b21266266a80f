"""Prompt syntax for the transformer families' text encoders, as ComfyUI 0.3.75 reads it, with the parser of
CLIPTextEncode (nodes/prompt_parse.py ``parse_weights``): ``(x:1.2)``, ``(x)`` = 1.1, nesting multiplies, ``\\(`` /
``\\)`` are literal parentheses, ``embedding:name`` is a textual-inversion embedding.

Which encoders weight (ComfyUI's tokenizers, facts of its source): T5 (FLUX.1, SD3) and the CLIPs do. Qwen3
(Z-Image, CLIPLoader lumina2) and Qwen2.5-VL (Qwen-Image) do NOT: ComfyUI tokenizes their templated prompt with
``disable_weights=True`` (ComfyUI PR #9438 "Disable prompt weights for qwen.", and z_image.py since Z-Image came),
so there ``(red:1.3)`` reaches the tokenizer as written; only ``\\(`` / ``\\)`` lose their backslash and
``embedding:name`` is still resolved. ``WEIGHTED`` below is that list.

Tokens: each weighted segment is unescaped and tokenized on its own (no special tokens) and the ids are
concatenated, so a token's weight is its segment's. Inside a segment, ComfyUI's embedding rule: the text is split
before every `` embedding:`` / ``\\nembedding:`` (the space or newline is dropped); an embedding word's name is its
first whitespace-separated word (a trailing ``,.;:`` is retried without it and stays text), it becomes one
``EmbeddingToken`` per vector (nodes/embeddings.py), and the rest of the piece is tokenized with its whitespace
collapsed to single spaces.

Weights act on the encoder's output as ComfyUI's: with ``z`` the prompt's token features (all weights 1) and
``z_empty`` ComfyUI's *empty sequence for that encoder at the same length*, a token of weight ``w != 1`` gets
``(z - z_empty) * w + z_empty``; tokens of weight 1 keep ``z`` exactly. The empty sequence is the encoder's
start token (if it has one), its end token (if it has one), then its pad token up to the prompt's length:
- T5: ``</s>`` then ``<pad>`` to the prompt's padded length (at least 256 on FLUX.1, 77 on SD3, longer when the
  prompt is: never truncated) = the empty prompt padded like the prompt;
- CLIP: BOS, EOS, then pad to 77 (as CLIPTextEncode).
Without any syntax the callers keep their plain path (bit for bit today's encoding).
"""
from __future__ import annotations

import re

from .prompt_parse import _unescape, parse_weights

#: encoder kinds whose prompts ComfyUI weights (Qwen3 / Qwen2.5-VL: ``disable_weights=True``)
WEIGHTED = frozenset({"clip_l", "clip_g", "t5"})
PREFIX = "embedding:"
_SPLIT = re.compile(r"[ \n]embedding:")


def has_syntax(text: str, weighted: bool = True) -> bool:
    """Whether ``text`` needs this module: weighting (when the encoder ``weighted``), escapes or embeddings."""
    marks = ("(", ")", "\\", PREFIX) if weighted else ("\\(", "\\)", PREFIX)
    return any(s in text for s in marks)


def _pieces(seg: str):
    """(text, is_embedding_word) pieces of one unescaped segment, split as ComfyUI splits them."""
    parts = _SPLIT.split(seg)
    for i, part in enumerate(parts):
        word = part if i == 0 else PREFIX + part
        if word:
            yield word, word.startswith(PREFIX)


def weighted_ids(tok, text: str, resolver=None, weighted: bool = True) -> list[tuple[int, float]]:
    """(token id, weight) pairs of ``text`` without special tokens: weighted segments tokenized one by one
    (``weighted`` False: one segment of weight 1, escapes still undone). ``resolver`` (nodes/embeddings.py
    ``Resolver``, or None: the words stay text as written) resolves ``embedding:`` words."""
    out: list[tuple[int, float]] = []
    for seg, w in (parse_weights(text) if weighted else [(text, 1.0)]):
        seg = _unescape(seg)
        for piece, is_emb in (_pieces(seg) if resolver is not None else [(seg, False)]):
            if is_emb:
                words = piece[len(PREFIX):].strip("\n").split()
                if words:
                    toks, punct = resolver.split(PREFIX + words[0])
                    out += [(t, w) for t in toks]
                    rest = " ".join(words[1:])
                    piece = f"{punct} {rest}" if punct else rest
            if piece:
                out += [(i, w) for i in tok(piece, add_special_tokens=False)["input_ids"]]
    return out


def reweight(z, z_empty, weights):
    """ComfyUI's weighting of token features ``z`` (B, L, D) against the empty sequence's ``z_empty`` (B or 1, L, D):
    ``(z - z_empty) * w + z_empty`` where ``weights`` (L,) is not 1; ``z`` itself (bit for bit) where it is."""
    import torch

    w = torch.as_tensor(weights, dtype=z.dtype, device=z.device).view(1, -1, 1)
    return torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)


def resolver_for(store, te, index: int, warn):
    """An ``embedding:`` resolver for one loaded family text encoder ``te`` (``model``, ``kind``; ``index``: its place
    among the CLIP's encoders, for messages), or None when there is no models folder; vectors must match the encoder's token width, else ``warn`` names the file."""
    import logging

    from .embeddings import Resolver, _token_embedding

    folders = getattr(store, "folders", None)
    if folders is None:
        return None
    width = _token_embedding(te.model).weight.shape[-1]
    log = logging.getLogger(__name__)
    return Resolver(folders, bool(getattr(store, "allow_pickle", False)), width, te.kind, index,
                    warn or (lambda m: log.warning("%s", m)))
