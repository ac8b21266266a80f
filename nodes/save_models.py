"""Saving models (ComfyUI's names and semantics): CheckpointSave, ModelSave, VAESave, CLIPSave. Files are
.safetensors in the output folder (``<prefix>_00001_.safetensors``), in the original single-file layout
(modelstore/export.py: the loaded file's own key names, values from the live, possibly LoRA-patched or merged,
model), with the prompt and workflow and ComfyUI's model-spec entries in the metadata."""
from __future__ import annotations

import json

from engine.node import Node, Output, Result, Socket, String

MOD = "comfy_extras.nodes_model_merging"


def _write(ctx, prefix: str, tensors: dict, prompt, extra_pnginfo, meta: dict | None = None) -> Result:
    from safetensors.torch import save_file

    from .image import save_path

    folder, stem, subfolder, counter = save_path(ctx.env.output_dir, prefix, 0, 0)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = dict(meta or {})
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for k, v in (extra_pnginfo or {}).items():
        metadata[str(k)] = json.dumps(v)
    name = f"{stem}_{counter:05}_.safetensors"
    save_file(tensors, str(folder / name), metadata=metadata)
    return Result(ui={"models": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


class _Save(Node):
    category = "advanced/model_merging"
    python_module = MOD
    output_node = True
    outputs = ()
    hidden = ("PROMPT", "EXTRA_PNGINFO")


class CheckpointSave(_Save):
    """Saves MODEL, CLIP and VAE as one checkpoint (original SD single-file layout) in output/."""
    display_name = "Save Checkpoint"
    inputs = (Socket("model", "MODEL"), Socket("clip", "CLIP"), Socket("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI"))

    def run(self, ctx, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        from modelstore.export import export_clip, export_unet, export_vae, modelspec

        store = model.store
        sd = {**export_unet(store, model), **export_clip(store, clip), **export_vae(store, vae)}
        meta = modelspec(model.meta.get("arch", "sd1"), filename_prefix.rpartition("/")[2])
        if model.meta.get("prediction_type") == "v_prediction":
            meta["modelspec.predict_key"] = "v"
        return _write(ctx, filename_prefix, sd, prompt, extra_pnginfo, meta)


class ModelSave(_Save):
    """Saves the diffusion model alone (``model.diffusion_model.*`` keys) in output/."""
    display_name = "ModelSave"
    inputs = (Socket("model", "MODEL"), String("filename_prefix", "diffusion_models/ComfyUI"))

    def run(self, ctx, model, filename_prefix, prompt=None, extra_pnginfo=None):
        from modelstore.export import export_unet, modelspec

        meta = modelspec(model.meta.get("arch", "sd1"), filename_prefix.rpartition("/")[2])
        return _write(ctx, filename_prefix, export_unet(model.store, model), prompt, extra_pnginfo, meta)


class VAESave(_Save):
    """Saves the VAE (LDM layout, no prefix: what Load VAE reads) in output/."""
    display_name = "VAESave"
    inputs = (Socket("vae", "VAE"), String("filename_prefix", "vae/ComfyUI_vae"))

    def run(self, ctx, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        from modelstore.export import export_vae

        return _write(ctx, filename_prefix, export_vae(vae.store, vae, prefix=""), prompt, extra_pnginfo)


class CLIPSave(_Save):
    """Saves each text encoder of the CLIP as its own file (``<prefix>_clip_l``/``_clip_g``, transformers key
    layout ``text_model.*``) in output/."""
    display_name = "CLIPSave"
    inputs = (Socket("clip", "CLIP"), String("filename_prefix", "clip/ComfyUI"))

    def run(self, ctx, clip, filename_prefix, prompt=None, extra_pnginfo=None):
        files = []
        with clip.store.using(clip) as (tenc,):
            n = len(tenc.encoders)
            for i, te in enumerate(tenc.encoders):
                width = te.config.hidden_size
                name = {768: "clip_l", 1280: "clip_g", 1024: "clip_h"}.get(width, f"clip_{i}") if n > 1 or \
                    width in (768, 1280, 1024) else "clip"
                sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k):
                      v.detach().to("cpu").contiguous() for k, v in te.state_dict().items()
                      if not k.endswith("position_ids")}
                files += _write(ctx, f"{filename_prefix}_{name}", sd, prompt, extra_pnginfo).ui["models"]
        return Result(ui={"models": files})


NODES = [CheckpointSave, ModelSave, VAESave, CLIPSave]
