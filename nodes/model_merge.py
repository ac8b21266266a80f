"""Model merging (ComfyUI's names and semantics): weighted average, per-block average, add and subtract, for the
diffusion model and for CLIP. The result is a store ref whose key carries a ``MergePatch`` (modelstore/merge.py):
it is built once, when first used, and shared like any loaded model. Ratios are model1's share."""
from __future__ import annotations

from dataclasses import replace

from engine.node import Float, Node, Output, Socket

MOD = "comfy_extras.nodes_model_merging"
RATIO = dict(min=0.0, max=1.0, step=0.01)
MULT = dict(min=-10.0, max=10.0, step=0.01)


def merged(ref1, ref2, default: tuple[float, float], rules: tuple = ()):
    """``ref1`` with a MergePatch of ``ref2`` appended to its key (model1's info and options are kept)."""
    from modelstore.merge import MergePatch

    if ref1.kind != ref2.kind:
        raise ValueError(f"cannot merge a {ref1.kind} with a {ref2.kind}")
    patch = MergePatch(ref2.key, (float(default[0]), float(default[1])), tuple(rules))
    return replace(ref1, key=replace(ref1.key, patches=ref1.key.patches + (patch,)))


class _Merge(Node):
    category = "advanced/model_merging"
    python_module = MOD


class ModelMergeSimple(_Merge):
    """model1 x ratio + model2 x (1 - ratio), tensor by tensor."""
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Float("ratio", 1.0, **RATIO))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, ratio):
        return (merged(model1, model2, (ratio, 1.0 - ratio)),)


class ModelMergeBlocks(_Merge):
    """Like ModelMergeSimple with one ratio for the input (encoder) blocks, one for the middle block and one for
    the output (decoder) blocks; other tensors (time embedding) use the input ratio."""
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Float("input", 1.0, **RATIO),
              Float("middle", 1.0, **RATIO), Float("out", 1.0, **RATIO))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, input, middle, out):
        rules = tuple((p, r, 1.0 - r) for p, r in (("input", input), ("middle", middle), ("out", out)))
        return (merged(model1, model2, (input, 1.0 - input), rules),)


class ModelMergeSubtract(_Merge):
    """(model1 - model2) x multiplier: the difference between two models (for example an inpainting model minus
    its base), to be added to another with ModelMergeAdd."""
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Float("multiplier", 1.0, **MULT))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, multiplier):
        return (merged(model1, model2, (multiplier, -multiplier)),)


class ModelMergeAdd(_Merge):
    """model1 + model2, tensor by tensor."""
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2):
        return (merged(model1, model2, (1.0, 1.0)),)


class CLIPMergeSimple(_Merge):
    """clip1 x ratio + clip2 x (1 - ratio) (position ids and logit scale are kept from clip1)."""
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), Float("ratio", 1.0, **RATIO))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2, ratio):
        return (merged(clip1, clip2, (ratio, 1.0 - ratio)),)


class CLIPMergeSubtract(_Merge):
    """(clip1 - clip2) x multiplier."""
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), Float("multiplier", 1.0, **MULT))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2, multiplier):
        return (merged(clip1, clip2, (multiplier, -multiplier)),)


class CLIPMergeAdd(_Merge):
    """clip1 + clip2."""
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2):
        return (merged(clip1, clip2, (1.0, 1.0)),)


# ---------------------------------------------------------------------------------- per-block, per architecture
def _blocks(inputs: int, outputs: int, dot: bool) -> list[str]:
    sep = "." if dot else ""
    return (["time_embed.", "label_emb."] + [f"input_blocks.{i}{sep}" for i in range(inputs)]
            + [f"middle_block.{i}{sep}" for i in range(3)] + [f"output_blocks.{i}{sep}" for i in range(outputs)]
            + ["out."])


class _ModelMergeBlockwise(Node):
    """Merges two models with one ratio per block of the original UNet layout (model1's share)."""
    category = "advanced/model_merging/model_specific"
    python_module = "comfy_extras.nodes_model_merging_model_specific"
    blocks: tuple = ()
    outputs = (Output("MODEL"),)

    def __init_subclass__(cls, **kw):
        cls.inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"),
                      *(Float(b, 1.0, **RATIO) for b in cls.blocks))
        super().__init_subclass__(**kw)

    def run(self, ctx, model1, model2, **ratios):
        first = next(iter(ratios.values()))
        rules = tuple((p, float(r), 1.0 - float(r)) for p, r in ratios.items())
        return (merged(model1, model2, (first, 1.0 - first), rules),)


class ModelMergeSD1(_ModelMergeBlockwise):
    """Merges two SD1 models with one ratio per block (model1's share)."""
    blocks = tuple(_blocks(12, 12, True))


class ModelMergeSD2(_ModelMergeBlockwise):
    """Merges two SD2 models with one ratio per block (model1's share)."""
    blocks = tuple(_blocks(12, 12, True))


class ModelMergeSDXL(_ModelMergeBlockwise):
    """Merges two SDXL models with one ratio per block (model1's share)."""
    blocks = tuple(_blocks(9, 9, False))


NODES = [ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple, CLIPMergeSubtract,
         CLIPMergeAdd, ModelMergeSD1, ModelMergeSD2, ModelMergeSDXL]
