"""T2I-Adapter files: plan (diffusers ``T2IAdapter`` config from tensor shapes, no weights read), key conversion and
build. ComfyUI loads these through its ControlNet loader; Loom does too (modelstore/kinds/controlnet.py).

Layouts (both read from the tensors; neither needs a config.json):

- diffusers' (``T2IAdapter.state_dict()``, e.g. TencentARC's ``t2i-adapter-*-sdxl-1.0`` repos)::

    adapter.conv_in.{weight,bias}                         full / full_xl only
    adapter.body.{i}.in_conv.{weight,bias}                full: where level i changes the channel count; light: always
    adapter.body.{i}.resnets.{j}.block{1,2}.{weight,bias}
    adapter.body.{i}.out_conv.{weight,bias}               light only

- TencentARC's original (``t2iadapter_*_sd14v1`` / ``*_sd15v2`` converted to safetensors): the full adapter's
  resnet blocks are one flat list, ``nrb`` per level; the light adapter nests them::

    conv_in.*                          -> adapter.conv_in.*
    body.{i*nrb+j}.block{1,2}.*        -> adapter.body.{i}.resnets.{j}.block{1,2}.*
    body.{i*nrb}.in_conv.*             -> adapter.body.{i}.in_conv.*
    (light) body.{i}.{in,out}_conv.*   -> adapter.body.{i}.{in,out}_conv.*
    (light) body.{i}.body.{j}.block{1,2}.* -> adapter.body.{i}.resnets.{j}.block{1,2}.*

Variants: ``full_adapter`` (SD1/SD2: pixel-unshuffle 8, one feature per UNet level), ``full_adapter_xl`` (SDXL:
unshuffle 16, the same keys; told apart by the unshuffled input width, 16*16*{1,3} = 256/768 channels, which is
also ComfyUI's rule) and ``light_adapter``. Original variants diffusers cannot hold (a ``skep`` skip conv, a
strided-conv ``down_opt``, a 3x3 ``block2``, the style/CoAdapter models) are refused by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .arch import freeze_config, key_indices, thaw_config
from .tensorfile import CheckpointError

DIFFUSERS_PROBE = "adapter.body.0.resnets.0.block1.weight"


@dataclass(frozen=True)
class T2IAdapterPlan:
    """``layout`` 'original' | 'diffusers'; ``arch`` sd1 | sdxl (the UNet family it feeds); ``config`` diffusers
    ``T2IAdapter`` kwargs as sorted (name, value) pairs; ``nrb`` resnet blocks per level (for the key map)."""
    layout: str
    arch: str
    config: tuple
    nrb: int
    prefix: str = ""
    difference: bool = False
    model: str = "t2i_adapter"

    @property
    def kwargs(self) -> dict:
        return thaw_config(self.config)


def is_t2i_adapter(shapes) -> bool:
    """Whether the tensors look like any T2I-Adapter (supported or not)."""
    return (DIFFUSERS_PROBE in shapes or "adapter.body.0.in_conv.weight" in shapes
            or ("conv_in.weight" in shapes and "body.0.block1.weight" in shapes)
            or "body.0.body.0.block1.weight" in shapes
            or any(k.startswith(("backbone.", "style_embedding")) for k in shapes))


def _refuse_variants(shapes) -> None:
    if any(k.startswith(("backbone.", "style_embedding")) for k in shapes):
        raise CheckpointError("this is a T2I style adapter (CLIP-vision tokens), not a spatial T2I-Adapter: "
                              "not supported")
    if any(".skep." in k for k in shapes):
        raise CheckpointError("T2I-Adapter with skip convolutions (skep, sk=False): diffusers' T2IAdapter has no "
                              "such variant, not supported")
    if any(".down_opt.op." in k for k in shapes):
        raise CheckpointError("T2I-Adapter with strided-conv downsampling (down_opt.op, use_conv=True): diffusers' "
                              "T2IAdapter has no such variant, not supported")


def plan_t2i_adapter(shapes: dict) -> T2IAdapterPlan:
    """Plan a T2I-Adapter from its tensor shapes; CheckpointError naming what does not fit."""
    _refuse_variants(shapes)
    if DIFFUSERS_PROBE in shapes or "adapter.body.0.in_conv.weight" in shapes:
        return _plan(_to_diffusers_names(shapes, "diffusers", 0), "diffusers", 0)
    if "conv_in.weight" in shapes:  # original full adapter: nrb = index of the first level-changing in_conv
        convs = [i for i in key_indices(shapes, "body.") if f"body.{i}.in_conv.weight" in shapes]
        if not convs or convs[0] == 0:
            raise CheckpointError("original T2I-Adapter layout without a level-changing in_conv: cannot tell how "
                                  "many resnet blocks each level has")
        nrb = convs[0]
        return _plan(_to_diffusers_names(shapes, "original", nrb), "original", nrb)
    if "body.0.body.0.block1.weight" in shapes:
        return _plan(_to_diffusers_names(shapes, "original", 0), "original", 0)
    raise CheckpointError("not a T2I-Adapter: expected adapter.body.* (diffusers layout) or conv_in/body.* "
                          "(TencentARC's original layout) tensors")


_FULL = re.compile(r"body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$")
_LIGHT = re.compile(r"body\.(\d+)\.(?:(in_conv|out_conv)|body\.(\d+)\.(block1|block2))\.(weight|bias)$")


def original_to_diffusers(key: str, nrb: int) -> str | None:
    """The diffusers name of an original-layout key (``nrb`` = 0 for the light adapter), or None if unmapped."""
    if key.startswith("conv_in."):
        return "adapter." + key
    if nrb:
        m = _FULL.fullmatch(key)
        if m is None:
            return None
        k, part, t = int(m[1]), m[2], m[3]
        if part == "in_conv":
            return f"adapter.body.{k // nrb}.in_conv.{t}" if k % nrb == 0 else None
        return f"adapter.body.{k // nrb}.resnets.{k % nrb}.{part}.{t}"
    m = _LIGHT.fullmatch(key)
    if m is None:
        return None
    if m[2]:
        return f"adapter.body.{m[1]}.{m[2]}.{m[5]}"
    return f"adapter.body.{m[1]}.resnets.{m[3]}.{m[4]}.{m[5]}"


def _to_diffusers_names(shapes, layout: str, nrb: int) -> dict:
    if layout == "diffusers":
        return dict(shapes)
    out = {}
    for k, v in shapes.items():
        d = original_to_diffusers(k, nrb)
        if d is None:
            raise CheckpointError(f"original T2I-Adapter layout: unexpected tensor {k!r}")
        out[d] = v
    return out


def _plan(s: dict, layout: str, nrb: int) -> T2IAdapterPlan:
    levels = key_indices(s, "adapter.body.")
    n_res = len(key_indices(s, "adapter.body.0.resnets."))
    if "adapter.body.0.out_conv.weight" in s:  # light: in_conv -> resnets (out/4 channels) -> out_conv
        outs = [s[f"adapter.body.{i}.out_conv.weight"][0] for i in levels]
        cin = s["adapter.body.0.in_conv.weight"][1]
        if len(outs) < 2 or outs[-1] != outs[-2]:
            raise CheckpointError(f"light T2I-Adapter: last two levels should have equal channels, got {outs}")
        kind, down, chans, arch = "light_adapter", 8, outs[:-1], "sd1"
    else:
        if "adapter.conv_in.weight" not in s:
            raise CheckpointError("T2I-Adapter: no conv_in tensor (full adapter) and no out_conv (light adapter)")
        chans = [s[f"adapter.body.{i}.resnets.0.block1.weight"][0] for i in levels]
        if s["adapter.body.0.resnets.0.block2.weight"][2] != 1:
            raise CheckpointError("T2I-Adapter with a 3x3 block2 (ksize=3): diffusers' T2IAdapter has 1x1 only, "
                                  "not supported")
        cin = s["adapter.conv_in.weight"][1]
        xl = cin in (256, 768)
        kind, down, arch = ("full_adapter_xl", 16, "sdxl") if xl else ("full_adapter", 8, "sd1")
    if cin % (down * down):
        raise CheckpointError(f"T2I-Adapter input has {cin} channels: not a multiple of {down}x{down} "
                              "(pixel unshuffle)")
    cfg = {"in_channels": cin // (down * down), "channels": list(chans), "num_res_blocks": n_res,
           "downscale_factor": down, "adapter_type": kind}
    return T2IAdapterPlan(layout, arch, freeze_config(cfg), nrb)


def convert_t2i_adapter(sd: dict, plan: T2IAdapterPlan) -> dict:
    """File tensors -> diffusers ``T2IAdapter`` state dict."""
    if plan.layout == "diffusers":
        return dict(sd)
    return {original_to_diffusers(k, plan.nrb): v for k, v in sd.items()}


def build_t2i_adapter(plan: T2IAdapterPlan, sd: dict, device=None):
    """A diffusers ``T2IAdapter`` holding ``sd``'s tensors (adopted, not copied)."""
    from diffusers import T2IAdapter

    from .build import instantiate

    return instantiate(lambda: T2IAdapter(**plan.kwargs), convert_t2i_adapter(sd, plan), device)
