"""Checkpoint components ('unet', 'vae', 'clip'): the family that claims a checkpoint plans and builds them.

``plan_of(src, ctx)`` picks the family (highest ``priority`` whose ``claims`` is true) and caches its plan by file
identity; ``CheckpointComponents`` builds a component by asking that family."""
from __future__ import annotations

from typing import Any

from ..refs import ModelKey, module_nbytes
from ..sources import Source
from ..tensorfile import CheckpointError
from .base import BuildContext, Family, Plan


def plan_of(src: Source, ctx: BuildContext) -> tuple[Family, Plan]:
    """(family, plan) of a checkpoint file or diffusers folder; CheckpointError when no family claims it."""
    def make(s: Source):
        for fam in ctx.families:
            if fam.claims(s):
                return fam, fam.plan(s)
        raise CheckpointError(f"{s.path.name}: no supported architecture family recognises this checkpoint "
                              f"(known: {', '.join(f.name for f in ctx.families)})")
    return ctx.sources.plan(src, "checkpoint", make)


class CheckpointComponents:
    """The MODEL/CLIP/VAE parts of a checkpoint. ``key.patches`` (LoRA) are applied by ``patch``."""
    components = ("unet", "vae", "clip")
    socket = "MODEL"
    folder = "checkpoints"

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        return plan_of(src, ctx)[1].info()

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        src = ctx.sources.current(key.file)
        fam, plan = plan_of(src, ctx)
        return fam.build(key.component, src, plan, key, ctx)

    def patch(self, key: ModelKey, base: Any, lora_state: dict, strength: float, ctx: BuildContext) -> Any:
        fam, _ = plan_of(ctx.sources.current(key.file), ctx)
        return fam.patch(key.component, base, lora_state, strength)

    def nbytes(self, value: Any) -> int:
        own = getattr(value, "_loom_own_bytes", None)
        return module_nbytes(value) if own is None else own


LOADERS = [CheckpointComponents()]
