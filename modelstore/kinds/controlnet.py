"""ControlNets ('controlnet', folder ``controlnet``, socket CONTROL_NET): original single-file or diffusers key
layout, built as diffusers ``ControlNetModel`` (plan, conversion and build in ``modelstore.controlnet``); T2I-Adapters
in TencentARC's original or diffusers' layout, built as diffusers ``T2IAdapter`` (meta ``model`` 't2i_adapter')."""
from __future__ import annotations

from typing import Any

from ..controlnet import build_controlnet, controlnet_keys, plan_controlnet
from ..refs import ModelKey, module_nbytes
from ..sources import Source
from ..tensorfile import CheckpointError
from .base import BuildContext


class ControlNets:
    components = ("controlnet",)
    socket = "CONTROL_NET"
    folder = "controlnet"

    def _plan(self, src: Source, ctx: BuildContext):
        if src.header is None:
            raise CheckpointError(f"{src.path.name}: ControlNets are loaded from single .safetensors files")
        return ctx.sources.plan(src, "controlnet", lambda s: plan_controlnet(s.header.shapes))

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        plan = self._plan(src, ctx)
        return (("arch", plan.arch), ("layout", plan.layout), ("difference", plan.difference), ("model", plan.model),
                ("concat_mask", getattr(plan, "extra", 0) > 0),
                ("union_types", dict(plan.config).get("num_control_type", 0)))

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        src = ctx.sources.current(key.file)
        plan = self._plan(src, ctx)
        dt, dev = ctx.torch_dtype(key), key.device
        return build_controlnet(plan, ctx.sources.tensors(src, controlnet_keys(src.header.shapes, plan), dt, dev), dev)

    def nbytes(self, value: Any) -> int:
        return module_nbytes(value)


LOADERS = [ControlNets()]
