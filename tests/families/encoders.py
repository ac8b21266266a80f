"""Test helper: run a node directly on the tiny family files (tests/families/conftest.py's env) and the split
text-encoder loaders the encoder tests use."""
from __future__ import annotations

from nodes import default_registry

REG = default_registry()


class NodeCtx:
    """The run context a node needs here: the env, and warnings collected instead of sent."""

    def __init__(self, env):
        self.env = env
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def run_node(name, env, *args, **kw):
    return REG.get(name)().run(NodeCtx(env), *args, **kw)


def sd3_clip(env):
    return run_node("TripleCLIPLoader", env, "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")[0]


def flux_clip(env):
    return run_node("DualCLIPLoader", env, "clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")[0]
