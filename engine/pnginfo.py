"""PNG text chunks, in pure Python: read ``tEXt``/``zTXt``/``iTXt`` (SaveImage writes them with PIL).

ComfyUI stores the API workflow in a ``prompt`` chunk and the editor's graph in a ``workflow`` chunk
(one chunk per ``extra_pnginfo`` key). Reading never raises on damaged data: it returns the chunks
it could decode before the damage. Compressed chunks are capped (``MAX_TEXT``) against zip bombs.
"""
from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 64 * 1024 * 1024


def _inflate(data: bytes) -> bytes | None:
    try:
        d = zlib.decompressobj()
        out = d.decompress(data, MAX_TEXT)
        return None if d.unconsumed_tail else out
    except zlib.error:
        return None


def iter_chunks(data: bytes):
    """Yield ``(type, payload)`` for each well-formed chunk, stopping at IEND or damage."""
    if data[:8] != SIGNATURE:
        return
    pos, n = 8, len(data)
    while pos + 12 <= n:
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            return
        yield ctype, data[pos + 8:end]
        if ctype == b"IEND":
            return
        pos = end + 4


def read_text_chunks(data: bytes) -> dict[str, str]:
    """All text chunks of a PNG as ``{keyword: text}`` (the first chunk wins for a repeated key)."""
    out: dict[str, str] = {}
    for ctype, body in iter_chunks(bytes(data)):
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, sep, rest = body.partition(b"\x00")
        if not sep or not key:
            continue
        keyword = key.decode("latin-1")
        text: str | None = None
        if ctype == b"tEXt":
            text = rest.decode("latin-1")
        elif ctype == b"zTXt":
            raw = _inflate(rest[1:]) if rest[:1] == b"\x00" else None
            text = raw.decode("latin-1") if raw is not None else None
        else:  # iTXt: flag, method, language\0, translated keyword\0, text (utf-8)
            if len(rest) < 2:
                continue
            flag, method = rest[0], rest[1]
            parts = rest[2:].split(b"\x00", 2)
            if len(parts) != 3:
                continue
            raw = parts[2]
            if flag:
                raw = _inflate(raw) if method == 0 else None
            if raw is not None:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
        if text is not None and keyword not in out:
            out[keyword] = text
    return out
