"""ComfyUI's prompt syntax, shared by every text encoder: ``(x:1.2)`` weights, ``(x)`` = 1.1 (nesting multiplies),
``\\(`` / ``\\)`` literal parentheses (``parse_weights``), and CLIP's 77-token windows of (token id, weight) pairs
(``tokenize_weighted``). No torch: tokenizers are passed in.
"""
from __future__ import annotations

CHUNK = 75  # content tokens per 77-token window (BOS + 75 + EOS)
MAX_WORD = 8  # words longer than this (in tokens) may be split across windows


# ------------------------------------------------------------------------------------------ weighting
def _split_top(text: str) -> list[str]:
    """Top-level pieces: '(...)' groups (balanced, unescaped) and the plain text between them."""
    out, buf, depth, start = [], [], 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if ch == "(":
            if depth == 0:
                if buf:
                    out.append("".join(buf))
                    buf = []
            depth += 1
            buf.append(ch)
        elif ch == ")" and depth > 0:
            depth -= 1
            buf.append(ch)
            if depth == 0:
                out.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
        i += 1
    if buf:
        out.append("".join(buf))
    return out


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """ComfyUI prompt weighting: ``(x)`` multiplies x's weight by 1.1 (nesting compounds), ``(x:1.5)`` sets it,
    ``\\(`` and ``\\)`` are literal parentheses. Returns (text, weight) segments in order."""
    out: list[tuple[str, float]] = []
    for piece in _split_top(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            w = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += parse_weights(inner, w)
        else:
            out.append((piece, weight))
    return out


def _unescape(s: str) -> str:
    return s.replace("\\(", "(").replace("\\)", ")")


def tokenize_weighted(tok, text: str, embeddings=None) -> list[list[tuple[int, float]]]:
    """Windows of 77 (token id, weight) pairs: BOS, up to 75 tokens, EOS, padding. Words are not split across
    windows unless longer than 8 tokens; an empty prompt gives one window. ``embeddings`` (nodes/embeddings.py
    ``Resolver``) turns ``embedding:name`` words into one ``EmbeddingToken`` per vector."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    words: list[tuple[str, float]] = []
    for seg, w in parse_weights(text):
        for word in _unescape(seg).replace("\n", " ").split(" "):
            if word:
                words.append((word, w))
    ids_per_word = tok([w for w, _ in words], add_special_tokens=False)["input_ids"] if words else []
    if embeddings is not None:
        resolved = []
        for (word, _), ids in zip(words, ids_per_word):
            if word.startswith("embedding:"):
                toks, rest = embeddings.split(word)  # 'embedding:name,': the comma stays prompt text
                ids = toks + (tok(rest, add_special_tokens=False)["input_ids"] if rest else [])
            resolved.append(ids)
        ids_per_word = resolved
    windows: list[list[tuple[int, float]]] = []
    cur: list[tuple[int, float]] = []
    for (word, w), ids in zip(words, ids_per_word):
        toks = [(i, w) for i in ids]
        if len(cur) + len(toks) > CHUNK:
            if len(toks) > MAX_WORD:  # a long word fills this window and continues in the next
                while len(cur) + len(toks) > CHUNK:
                    room = CHUNK - len(cur)
                    cur += toks[:room]
                    toks = toks[room:]
                    windows.append(cur)
                    cur = []
            else:
                windows.append(cur)
                cur = []
        cur += toks
    if cur or not windows:
        windows.append(cur)
    out = []
    for win in windows:
        seq = [(bos, 1.0)] + win + [(eos, 1.0)]
        seq += [(pad, 1.0)] * (CHUNK + 2 - len(seq))
        out.append(seq)
    return out
