"""ComfyUI 0.3.75's published node schema (its /object_info), vendored under tests/data/ as data.

Parity tests compare Loom's declarations with it. A missing file fails the test that needs it (it is
part of the checkout), never skips it.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

OBJECT_INFO = Path(__file__).parent / "data" / "object_info-comfyui-0.3.75.json"


@functools.cache
def _load() -> str:
    if not OBJECT_INFO.is_file():
        raise AssertionError(f"{OBJECT_INFO} is missing: it is ComfyUI 0.3.75's /object_info snapshot, part of "
                             "the checkout")
    return OBJECT_INFO.read_text()


def comfy_object_info() -> dict:
    """A fresh copy of the whole snapshot: node name -> object_info entry."""
    return json.loads(_load())
