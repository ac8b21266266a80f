"""Model merging as a store patch: ``MergePatch`` on a MODEL/CLIP key says "every tensor w of this model becomes
w x model_scale + w_other x other_scale", with the two scales chosen per tensor by the longest matching prefix of its
original (LDM) name (``input_blocks.4.``, ``middle_block``, ``out`` ...), as ComfyUI's merge nodes name blocks.

ComfyUI's rules, as (model_scale, other_scale): simple/blocks ``(ratio, 1 - ratio)``; add ``(1, 1)``; subtract
``(multiplier, -multiplier)``. Tensors the other model lacks (or has in another shape) are kept. The merged value
is a new module (the inputs stay shared and unchanged) built once per key and held by the store like any model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .refs import ModelKey, TextEncoders

_LDM = re.compile(r"^(input_blocks|output_blocks|middle_block)_(\d+)_(.*)$")
_DIFFUSERS_GROUPS = (("conv_in.", "input_blocks.0.0."), ("down_blocks.", "input_blocks."),
                     ("mid_block.", "middle_block."), ("up_blocks.", "output_blocks."),
                     ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."), ("time_embedding.", "time_embed."),
                     ("add_embedding.", "label_emb."))


@dataclass(frozen=True)
class MergePatch:
    """A computed patch (hashable: part of the store key). ``other`` is the second model's key; ``default`` the
    (model_scale, other_scale) pair; ``rules`` ((prefix, model_scale, other_scale), ...) by original names."""
    other: ModelKey
    default: tuple[float, float]
    rules: tuple = ()

    def scales(self, name: str) -> tuple[float, float]:
        best, scales = -1, self.default
        for prefix, sm, so in self.rules:
            if name.startswith(prefix) and len(prefix) > best:
                best, scales = len(prefix), (sm, so)
        return scales

    def apply(self, base, ctx):
        """The merged copy of ``base`` (a UNet or ``TextEncoders``), the other model pinned while it is read."""
        with ctx.pinned(self.other) as other:
            if isinstance(base, TextEncoders):
                encs = tuple(self._merge(b, o, clip=True) for b, o in zip(base.encoders, other.encoders))
                return TextEncoders(base.arch, encs + base.encoders[len(encs):], base.tokenizers)
            return self._merge(base, other, clip=False)

    def _merge(self, base, other, clip: bool):
        import copy

        import torch

        names = None if clip else original_names(base)
        out = copy.deepcopy(base)
        theirs = other.state_dict()
        with torch.no_grad():
            for k, v in out.state_dict().items():
                if clip and k.endswith((".position_ids", ".logit_scale")):
                    continue
                o = theirs.get(k)
                if o is None or o.shape != v.shape or not v.is_floating_point():
                    continue
                sm, so = self.scales(k if clip else names(k))
                v.copy_(v * sm + o.to(v.device, v.dtype) * so)
        return out


def original_names(unet):
    """name(diffusers parameter key) -> its original LDM key ('input_blocks.1.1.<rest>'), through the map the SD
    family attaches when it builds a UNet from a single file; by module groups for diffusers folders."""
    mapping = getattr(unet, "_loom_ldm_names", None) or {}
    reverse = {d: l for l, d in mapping.items()}

    def name(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        ldm = reverse.get(module)
        if ldm is not None:
            m = _LDM.match(ldm)
            if m:
                return f"{m.group(1)}.{m.group(2)}.{m.group(3)}.{leaf}"
            for head in ("time_embed", "label_emb", "out"):
                if ldm.startswith(head + "_"):
                    return head + "." + ldm[len(head) + 1:].replace("_", ".") + "." + leaf
            return ldm + "." + leaf
        for d, lprefix in _DIFFUSERS_GROUPS:
            if key.startswith(d):
                return lprefix + key[len(d):]
        return key
    return name


@dataclass(frozen=True)
class ScalePatch:
    """A computed patch multiplying the tensors whose names contain a pattern: ``rules`` ((pattern, factor), ...);
    the first matching pattern wins. (ComfyUI's attention-multiply nodes: q/k/v/out projections.)"""
    rules: tuple

    def apply(self, base, ctx):
        if isinstance(base, TextEncoders):
            encs = tuple(self._scale(e) for e in base.encoders)
            return TextEncoders(base.arch, encs, base.tokenizers)
        return self._scale(base)

    def _scale(self, module):
        import copy

        import torch

        out = copy.deepcopy(module)
        with torch.no_grad():
            for k, v in out.state_dict().items():
                for pattern, factor in self.rules:
                    if pattern in k and v.is_floating_point():
                        v.mul_(float(factor))
                        break
        return out
