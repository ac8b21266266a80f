"""Style models: ComfyUI's StyleModelLoader and StyleModelApply. A style model (modelstore/style_model.py: the SD1
T2I-Adapter style model or FLUX.1 Redux) turns a CLIP vision encoding into extra context tokens, which
StyleModelApply appends to every entry of a conditioning.

STYLE_MODEL is a small handle (file identity); the module loads on first use and is shared. The tokens of every
image of the CLIP vision batch are appended as one sequence (an image batch of N gives N x tokens extra tokens),
scaled by ``strength`` ("multiply"). ComfyUI's other strength_type, "attn_bias" (an attention bias on the appended
tokens inside the model's cross-attention), is not implemented in Loom: it is refused at validation rather than
silently treated as "multiply".
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.node import Combo, Float, Node, Output, Socket

from .loaders import file_fingerprint, model_list

STRENGTH_TYPES = ["multiply", "attn_bias"]


@dataclass(frozen=True)
class StyleModelRef:
    """STYLE_MODEL: the file (path, size, mtime) and whether pickle was allowed when it was chosen."""
    path: str
    size: int
    mtime_ns: int
    name: str
    allow_pickle: bool = False

    def get(self):
        from modelstore.style_model import load
        return load(self.path, self.allow_pickle)

    def __loom_nbytes__(self) -> int:
        return 64


class StyleModelLoader(Node):
    """Loads a style model from style_models/: the SD1 T2I-Adapter style model or FLUX.1 Redux (.safetensors;
    pickle files only where the model store allows them)."""
    display_name = "Load Style Model"
    category = "loaders"
    python_module = "nodes"
    inputs = (Combo("style_model_name", model_list("style_models")),)
    outputs = (Output("STYLE_MODEL"),)

    @classmethod
    def fingerprint(cls, env, style_model_name=None, **_):
        return file_fingerprint(env, "style_models", style_model_name)

    def run(self, ctx, style_model_name):
        from modelstore.style_model import StyleModelError
        from modelstore.tensorfile import PickleRefused

        p = ctx.env.folders.resolve("style_models", style_model_name)
        allow = bool(getattr(ctx.env.model_store(), "allow_pickle", False))
        ref = StyleModelRef(str(p), p.stat().st_size, p.stat().st_mtime_ns, style_model_name, allow)
        try:
            ref.get()  # fail here, naming the file, rather than in StyleModelApply
        except (StyleModelError, PickleRefused) as e:
            raise ValueError(f"StyleModelLoader: {e}") from None
        return (ref,)


class StyleModelApply(Node):
    """Appends a style model's tokens for a CLIP vision encoding to every conditioning entry, scaled by
    ``strength`` ("multiply"; "attn_bias" is not supported by Loom and is refused)."""
    display_name = "Apply Style Model"
    category = "conditioning/style_model"
    python_module = "nodes"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("style_model", "STYLE_MODEL"),
              Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.001), Combo("strength_type", STRENGTH_TYPES))
    outputs = (Output("CONDITIONING"),)

    @classmethod
    def check(cls, env, strength_type=None, **_):
        if strength_type == "attn_bias":
            return {"strength_type": "'attn_bias' (ComfyUI's attention-bias weighting of the style tokens) is not "
                                     "supported by Loom; use 'multiply'"}
        return None

    def run(self, ctx, conditioning, style_model, clip_vision_output, strength, strength_type):
        if strength_type != "multiply":
            raise ValueError(f"StyleModelApply: strength_type {strength_type!r} is not supported by Loom; use "
                             "'multiply'")
        import torch

        model = style_model.get()
        hidden = clip_vision_output["last_hidden_state"]
        if hidden.shape[-1] != model.in_width:
            raise ValueError(f"StyleModelApply: {style_model.name} takes CLIP vision features of width "
                             f"{model.in_width}, the CLIP vision output has {hidden.shape[-1]}")
        with torch.no_grad():
            p = next(model.parameters())
            tokens = model(hidden.to(p.device, p.dtype)).float().cpu()
        tokens = tokens.reshape(1, -1, tokens.shape[-1]) * float(strength)  # every image's tokens, one sequence
        out = []
        for cond, extra in conditioning:
            if cond.shape[-1] != tokens.shape[-1]:
                raise ValueError(f"StyleModelApply: {style_model.name} makes tokens of width {tokens.shape[-1]}, "
                                 f"the conditioning's are {cond.shape[-1]} wide (a model of another family?)")
            add = tokens.to(cond.dtype).expand(cond.shape[0], -1, -1)
            out.append([torch.cat([cond, add], 1), dict(extra)])
        return (out,)


NODES = [StyleModelLoader, StyleModelApply]
