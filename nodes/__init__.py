"""Loom's node catalogue, gathered from explicit per-module lists (no discovery by import *).

Each module defines ``NODES = [...]``; add a module here to register its nodes. Node modules never import
torch, numpy, PIL, diffusers or transformers at module level: they import them inside the functions that run,
so listing the catalogue, ``/object_info`` and validation stay torch-free (tests/test_torch_free.py).
"""
from __future__ import annotations

import importlib

from engine.node import Node, Registry

MODULES = [
    "nodes.primitives",
    "nodes.image",
    "nodes.loaders",
    "nodes.conditioning",
    "nodes.latents",
    "nodes.sampling",
    "nodes.sigmas",
    "nodes.sampler_params",
    "nodes.guiders",
    "nodes.model_sampling",
    "nodes.vae",
    "nodes.masks",
    "nodes.mask_ops",
    "nodes.upscale",
    "nodes.conditioning_ops",
    "nodes.latent_ops",
    "nodes.image_ops",
    "nodes.mask_edit",
    "nodes.preprocessors",
    "nodes.string_ops",
    "nodes.controlnet",
    "nodes.model_merge",
    "nodes.model_patches",
    "nodes.self_attention_guidance",
    "nodes.hypernetwork",
    "nodes.style_model",
    "nodes.save_models",
    "nodes.attention_multiply",
    "nodes.latent_operations",
    "nodes.animation",
    "nodes.compositing",
    "nodes.preview_any",
    "nodes.clip_vision",
    "nodes.testing",
    "nodes.loaders_split",
    "nodes.text_encode_families",
    "nodes.latent_formats",
]


def all_nodes() -> list[type[Node]]:
    out: list[type[Node]] = []
    for name in MODULES:  # a module that fails to import is an error, never silently skipped
        out.extend(importlib.import_module(name).NODES)
    return out


def default_registry() -> Registry:
    return Registry(all_nodes())
