"""The diffusion-model families Loom loads from split files, and detection of a file's family from its tensors.

A family module provides ``PROBE`` (keys that identify it, without prefix), ``matches(shapes)``,
``plan(shapes, prefix) -> FamilyPlan``, ``convert_state(config, sd) -> diffusers state dict`` (file layout ->
diffusers layout; LoRA patching derives its key map from it, see ``families.lora``) and
``build(plan, state_dict) -> FlowDenoiser``. Register it in ``FAMILIES``; detection tries them in order and
never falls back to another family.
"""
from __future__ import annotations

from . import flux, qwen_image, sd3, zimage
from .catalog import DIFFUSION
from .common import FamilyPlan, UnknownModelFile, strip_prefix

#: name -> (module, human description). Order matters only for error messages.
FAMILIES = {name: (mod, DIFFUSION[name]) for name, mod in (("flux", flux), ("sd3", sd3), ("zimage", zimage),
                                                                        ("qwen_image", qwen_image))}
#: UNet families the SD checkpoint loader handles
UNET_FAMILIES = {k: v for k, v in DIFFUSION.items() if k not in FAMILIES}


def known() -> list[str]:
    """'name: description' for every loadable diffusion-model family (for errors and /features)."""
    return [f"{n}: {d}" for n, (_, d) in FAMILIES.items()] + [f"{n}: {d}" for n, d in UNET_FAMILIES.items()]


def detect(shapes, name: str = "file") -> FamilyPlan:
    """The FamilyPlan of a transformer diffusion-model file, or ``UnknownModelFile`` naming the keys probed."""
    prefix, s = strip_prefix(shapes)
    for fam, (mod, _) in FAMILIES.items():
        if mod.matches(s):
            return mod.plan(s, prefix)
    probes = [f"{fam}: {', '.join(mod.PROBE)}" for fam, (mod, _) in FAMILIES.items()]
    err = UnknownModelFile(name, "diffusion model", sorted(shapes)[:8], known())
    err.args = (f"{err.args[0]}. Keys looked for (after stripping {prefix or 'no'} prefix): " + "; ".join(probes),)
    raise err


def build(plan: FamilyPlan, sd: dict):
    """The family's FlowDenoiser; ``source_shapes`` keeps the file's key -> shape (LoRA files name those keys)."""
    model = FAMILIES[plan.family][0].build(plan, sd)
    model.source_shapes = {k: tuple(v.shape) for k, v in sd.items()}
    return model
