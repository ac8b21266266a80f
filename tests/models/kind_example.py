"""A model kind defined outside ``modelstore/kinds`` (used by test_kinds.py): a Linear layer from
``controlnet/*.safetensors`` holding ``weight`` (out, in) and ``bias`` (out). It shows the whole extension
surface: ``components``, ``socket``, ``folder``, ``describe`` (header only), ``build``, ``nbytes``."""
from __future__ import annotations

import torch

from modelstore.refs import module_nbytes
from modelstore.tensorfile import CheckpointError


class LinearKind:
    components = ("example_linear",)
    socket = "EXAMPLE"
    folder = "controlnet"

    def describe(self, src, ctx):
        shapes = src.header.shapes
        if "weight" not in shapes:
            raise CheckpointError(f"{src.path.name}: no 'weight' tensor")
        return (("features", tuple(shapes["weight"])),)

    def build(self, key, ctx):
        src = ctx.sources.current(key.file)
        sd = ctx.sources.tensors(src, ["weight", "bias"], ctx.torch_dtype(key), key.device)
        out_f, in_f = sd["weight"].shape
        with torch.device("meta"):
            m = torch.nn.Linear(in_f, out_f)
        m.load_state_dict(sd, assign=True)
        return m.requires_grad_(False)

    def nbytes(self, value):
        return module_nbytes(value)


LOADERS = [LinearKind()]
