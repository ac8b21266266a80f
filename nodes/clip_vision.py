"""CLIP vision: ComfyUI's CLIPVisionLoader, CLIPVisionEncode and unCLIPConditioning, and Loom's LoomCLIPRankImages,
which scores a batch of images against a text and sorts it.

CLIP_VISION is a small handle (file identity); the modules load on first use through modelstore.clip_vision and are
shared. CLIP_VISION_OUTPUT is ComfyUI's set of fields: ``image_embeds`` (B, P), ``last_hidden_state`` (B, T, H),
``penultimate_hidden_states`` (B, T, H). Loom's bundled ``loom-shapes-clip.safetensors`` (models/clip_vision/) is a
full CLIPModel (image and text towers), trained on the shapes world by ``python -m training --only clip``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from engine.node import Combo, Float, Int, Node, Output, Socket, String

from .loaders import file_fingerprint, model_list


@dataclass(frozen=True)
class ClipVisionRef:
    """CLIP_VISION: the file (path, size, mtime); ``get()`` returns modelstore.clip_vision.ClipVision."""
    path: str
    size: int
    mtime_ns: int
    name: str

    def get(self):
        from modelstore.clip_vision import load
        return load(self.path)

    def __loom_nbytes__(self) -> int:
        return 64


class CLIPVisionLoader(Node):
    """Loads a CLIP vision model from clip_vision/ (.safetensors in transformers' CLIPModel or
    CLIPVisionModelWithProjection key layout; the config is read from the tensor shapes)."""
    display_name = "Load CLIP Vision"
    category = "loaders"
    inputs = (Combo("clip_name", model_list("clip_vision")),)
    outputs = (Output("CLIP_VISION"),)

    @classmethod
    def check(cls, env, clip_name=None, **_):
        if isinstance(clip_name, str) and not clip_name.lower().endswith(".safetensors"):
            return {"clip_name": "only .safetensors CLIP vision files are loaded (pickle files can run code)"}
        return None

    @classmethod
    def fingerprint(cls, env, clip_name=None, **_):
        return file_fingerprint(env, "clip_vision", clip_name)

    def run(self, ctx, clip_name):
        from modelstore.clip_vision import ClipVisionError

        p = ctx.env.folders.resolve("clip_vision", clip_name)
        ref = ClipVisionRef(str(p), p.stat().st_size, p.stat().st_mtime_ns, clip_name)
        try:
            ref.get()  # fail here, naming the file, rather than in a downstream node
        except ClipVisionError as e:
            raise ValueError(f"CLIPVisionLoader: {e}") from None
        return (ref,)


class CLIPVisionEncode(Node):
    """Encodes images with a CLIP vision model: resized to the model's input size (crop "center" first cuts the
    central square, "none" squashes), CLIP-normalised."""
    display_name = "CLIP Vision Encode"
    category = "conditioning"
    inputs = (Socket("clip_vision", "CLIP_VISION"), Socket("image", "IMAGE"), Combo("crop", ["center", "none"]))
    outputs = (Output("CLIP_VISION_OUTPUT"),)

    def run(self, ctx, clip_vision, image, crop):
        return (clip_vision.get().encode_image(image, crop),)


class unCLIPConditioning(Node):  # noqa: N801 - ComfyUI's name
    """Attaches a CLIP vision embedding to the conditioning for unCLIP models (``unclip_conditioning`` entries:
    embedding, strength, noise augmentation). Models without an unCLIP image input (SD1, SDXL, Loom's bundled
    model) ignore it, as in ComfyUI; Loom has no unCLIP model family yet."""
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
              Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, clip_vision_output, strength, noise_augmentation):
        if strength == 0:
            return (conditioning,)
        item = {"clip_vision_output": clip_vision_output, "strength": strength,
                "noise_augmentation": noise_augmentation}
        out = []
        for cond, extra in conditioning:
            d = dict(extra)
            d["unclip_conditioning"] = list(d.get("unclip_conditioning", [])) + [item]
            out.append([cond, d])
        return (out,)


class LoomCLIPRankImages(Node):
    """Scores each image of a batch against a text (cosine similarity of the CLIP image and text embeddings, -1..1)
    and returns the batch sorted best first (``top_k`` > 0 keeps only the best k), plus the scores as JSON text:
    ``[{"index": position in the input batch, "score": similarity}, ...]`` in the output order. Needs a CLIP vision
    file with a text tower (a full CLIPModel, like the bundled loom-shapes-clip)."""
    display_name = "Rank Images by CLIP Similarity (Loom)"
    category = "image/loom"
    inputs = (Socket("clip_vision", "CLIP_VISION"), Socket("images", "IMAGE"),
              String("text", "", multiline=True, tooltip="What the best image shows."),
              Int("top_k", 0, min=0, max=4096, tooltip="Keep only the k best images (0 keeps all)."),
              Combo("crop", ["center", "none"]))
    outputs = (Output("IMAGE", "images"), Output("STRING", "scores"))

    def run(self, ctx, clip_vision, images, text, top_k, crop):
        cv = clip_vision.get()
        if not cv.has_text:
            raise ValueError(f"LoomCLIPRankImages: {cv.name} has no text tower (text_model.*); load a full CLIPModel "
                             "file such as loom-shapes-clip.safetensors")
        import torch  # lazily: the catalogue loads without torch

        sims = cv.similarity(images, text, crop)
        order = torch.argsort(sims, descending=True, stable=True)
        if top_k:
            order = order[:top_k]
        scores = [{"index": int(i), "score": round(float(sims[i]), 6)} for i in order]
        return (images[order].contiguous(), json.dumps(scores))


NODES = [CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning, LoomCLIPRankImages]
