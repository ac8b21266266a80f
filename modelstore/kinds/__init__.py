"""The model store's kinds and families, gathered from explicit per-module lists (like ``nodes/__init__.py``).

Each module defines ``LOADERS = [...]`` (``base.KindLoader``: builds the values of some ``ModelKey.component``
names) and/or ``FAMILIES = [...]`` (``base.Family``: plans and builds checkpoint components of one architecture
family). Add a ControlNet kind, a CLIP-vision kind or an SD3/Flux family by writing a module and listing it here.
"""
from __future__ import annotations

import importlib

from .base import Family, KindLoader

MODULES = [
    "modelstore.kinds.checkpoint",
    "modelstore.kinds.sd",
    "modelstore.kinds.vae_file",
    "modelstore.kinds.upscale",
    "modelstore.kinds.taesd",
    "modelstore.kinds.controlnet",
    "modelstore.kinds.families",
]


def gather() -> tuple[dict[str, KindLoader], tuple[Family, ...]]:
    """({component name: loader}, families by descending priority). Two loaders claiming one component name, or
    two families with one name, are an error (a silent override would load the wrong architecture)."""
    loaders: dict[str, KindLoader] = {}
    families: dict[str, Family] = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        for loader in getattr(mod, "LOADERS", ()):
            for comp in loader.components:
                if comp in loaders:
                    raise ValueError(f"{name}: component {comp!r} already has a loader "
                                     f"({type(loaders[comp]).__name__})")
                loaders[comp] = loader
        for fam in getattr(mod, "FAMILIES", ()):
            if fam.name in families:
                raise ValueError(f"{name}: family {fam.name!r} is registered twice")
            families[fam.name] = fam
    return loaders, tuple(sorted(families.values(), key=lambda f: -f.priority))
