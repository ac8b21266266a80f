"""Loads the ComfyUI 0.3.75 sampling fixtures copied under tests/sampling/data (see data/FIXTURES.md)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _need(name: str) -> Path:
    p = DATA / name
    if not p.is_file():  # fail, never skip: the fixtures are part of the checkout
        raise FileNotFoundError(f"fixture {p} is missing")
    return p


@lru_cache(maxsize=None)
def sigmas_json() -> dict:
    return json.loads(_need("sigmas.json").read_text())


@lru_cache(maxsize=None)
def index_json() -> dict:
    return json.loads(_need("samplers_index.json").read_text())


@lru_cache(maxsize=None)
def noise_tensors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(_need("noise.safetensors")))


@lru_cache(maxsize=None)
def sampler_tensors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(_need("samplers.safetensors")))


def floats(values) -> list[float]:
    """JSON doubles, with non-finite values stored as strings ("nan", "inf")."""
    return [float(v) for v in values]
