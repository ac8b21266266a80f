"""Prompt weighting and ``embedding:name`` for the transformer families' text encoders (T5, Qwen3, Qwen2.5-VL),
with the parser of CLIPTextEncode (nodes/prompt_parse.py ``parse_weights``): ``(x:1.2)``, ``(x)`` = 1.1, nesting
multiplies, ``\\(`` / ``\\)`` are literal parentheses.

Tokens: each weighted segment is unescaped and tokenized on its own (no special tokens) and the ids are
concatenated, so a token's weight is its segment's; ``embedding:name`` words (preceded by the start, a space or a
newline; one space before them is dropped, a newline kept) become one ``EmbeddingToken`` per vector
(nodes/embeddings.py).

Weights act on the encoder's output as ComfyUI's: with ``z`` the prompt's token features (all weights 1) and
``z_empty`` ComfyUI's *empty sequence for that encoder at the same length*, a token of weight ``w != 1`` gets
``(z - z_empty) * w + z_empty``; tokens of weight 1 keep ``z`` exactly. The empty sequence is the encoder's
start token (if it has one), its end token (if it has one), then its pad token up to the prompt's length:
- T5: ``</s>`` then ``<pad>`` to the prompt's padded length (256) = the empty prompt padded like the prompt;
- Qwen3 / Qwen2.5-VL (no start or end token in ComfyUI's recipe): ``<|endoftext|>`` (the pad token) repeated for
  the length of the templated prompt, encoded as causal as the prompt and without a padding mask;
- CLIP: BOS, EOS, then pad to 77 (as CLIPTextEncode).
The chat template's own tokens carry weight 1 (the template holds no parentheses), so only the prompt's tokens are
reweighted. Without any syntax (no parenthesis, backslash or ``embedding:``) the callers keep their plain path.
"""
from __future__ import annotations

import re

from .prompt_parse import _unescape, parse_weights

_EMBEDDING = re.compile(r"(?:^|(?<=[ \n]))embedding:[^\s]+")


def has_syntax(text: str) -> bool:
    """Whether ``text`` uses weighting, escapes or embeddings (else it is tokenized as written)."""
    return any(s in text for s in ("(", ")", "\\", "embedding:"))


def _pieces(seg: str):
    """(text, is_embedding_word) pieces of one unescaped segment; the one space before an embedding word is
    dropped (it separates words; it is not prompt text), a newline is kept (the chat templates end in one)."""
    pos = 0
    for m in _EMBEDDING.finditer(seg):
        before = seg[pos:m.start()]
        if before.endswith(" "):
            before = before[:-1]
        if before:
            yield before, False
        yield m.group(0), True
        pos = m.end()
    if pos < len(seg):
        yield seg[pos:], False


def weighted_ids(tok, text: str, resolver=None) -> list[tuple[int, float]]:
    """(token id, weight) pairs of ``text`` without special tokens: weighted segments tokenized one by one.
    ``resolver`` (nodes/embeddings.py ``Resolver``, or None: the words stay text) resolves ``embedding:`` words."""
    out: list[tuple[int, float]] = []
    for seg, w in parse_weights(text):
        seg = _unescape(seg)
        for piece, is_emb in (_pieces(seg) if resolver is not None else [(seg, False)]):
            if is_emb and resolver is not None:
                toks, piece = resolver.split(piece)
                out += [(t, w) for t in toks]
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
