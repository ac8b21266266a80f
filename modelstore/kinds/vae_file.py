"""Standalone VAE files ('vaefile'): LDM or diffusers key layout, built as diffusers ``AutoencoderKL``; the Qwen-Image
(Wan 2.1) VAE as ``AutoencoderKLQwenImage`` behind a 2D interface (modelstore/families/qwen_vae.py)."""
from __future__ import annotations

from typing import Any

from ..build import build_vae
from ..plan import vae_file_plan
from ..refs import ModelKey, module_nbytes
from ..sources import Source
from .base import BuildContext


def _vae_plan(header) -> tuple[str, dict]:
    """(layout, config): 'wan'/'qwen_diffusers' + AutoencoderKLQwenImage config for the Qwen-Image (Wan 2.1) 3D VAE,
    else modelstore.plan.vae_file_plan's ('ldm'|'diffusers', AutoencoderKL config)."""
    from ..families import qwen_vae

    layout = qwen_vae.layout(header.shapes)
    if layout is not None:
        return layout, qwen_vae.config(header.shapes)
    return vae_file_plan(header)


class VAEFile:
    components = ("vaefile",)
    socket = "VAE"
    folder = "vae"

    def _plan(self, src: Source, ctx: BuildContext):
        return ctx.sources.plan(src, "vae", lambda s: _vae_plan(s.header))

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        return (("layout", self._plan(src, ctx)[0]),)

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        src = ctx.sources.current(key.file)
        layout, config = self._plan(src, ctx)
        dt, dev = ctx.torch_dtype(key), key.device
        if layout in ("wan", "qwen_diffusers"):
            from ..families import qwen_vae

            return qwen_vae.build(config, ctx.sources.tensors(src, list(src.header.tensors), dt, dev), layout, dev)
        m = build_vae(config, ctx.sources.tensors(src, list(src.header.tensors), dt, dev), dev)
        if ctx.channels_last:
            import torch

            m.to(memory_format=torch.channels_last)
        return m

    def nbytes(self, value: Any) -> int:
        return module_nbytes(value)


LOADERS = [VAEFile()]
