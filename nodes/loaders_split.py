"""Split loaders: a diffusion model, its text encoders and its VAE from separate files (ComfyUI's UNETLoader,
CLIPLoader, DualCLIPLoader, TripleCLIPLoader). The family is detected from each file's tensors; a file of no known
family, or a text encoder that does not fit the loader type, is a clear error at load.

Folders: diffusion models from models/diffusion_models and models/unet; text encoders from models/text_encoders
and models/clip (ComfyUI reads both pairs)."""
from __future__ import annotations

from engine.node import Combo, Node, Output

from .loaders import store_of

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2"]
DUAL_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15"]
KIND_FOLDERS = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}


def files(kind: str):
    """Combo options: files of both folders of ``kind`` (sorted, de-duplicated)."""
    def options(env):
        if env is None:
            return []
        f = env.folders
        out = set()
        for k in KIND_FOLDERS[kind]:
            try:
                out.update(f.list(k))
            except KeyError:
                pass
        return sorted(out)
    return options


def resolve(store, kind: str, name: str):
    """Path of ``name`` in the first folder of ``kind`` holding it (ModelNotFoundError lists both folders)."""
    from engine.folders import ModelNotFoundError

    for k in KIND_FOLDERS[kind]:
        try:
            return store.folders.resolve(k, name)
        except ModelNotFoundError:
            continue
    raise ModelNotFoundError(kind, name, sorted({n for k in KIND_FOLDERS[kind] for n in store.folders.list(k)}))


def load_clip(ctx, names, type_):
    from modelstore.families.store import FamilyClip, load_text_encoder

    from .family_encode import check_kinds

    store = store_of(ctx.env)
    loaded = [load_text_encoder(store, resolve(store, "text_encoders", n)) for n in names]
    check_kinds(type_, [k for k, _ in loaded], names)
    return FamilyClip(type_, tuple(loaded), store=store)


class UNETLoader(Node):
    """Loads a diffusion model on its own (a split file: SD3/SD3.5, FLUX.1, Z-Image); its family is detected
    from the tensors. weight_dtype fp8_*: Linear weights stay in 8 bits and are up-cast per layer."""
    display_name = "Load Diffusion Model"
    category = "advanced/loaders"
    inputs = (Combo("unet_name", files("diffusion_models")),
              Combo("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]))
    outputs = (Output("MODEL"),)

    def run(self, ctx, unet_name, weight_dtype="default"):
        from modelstore.families.store import load_diffusion_model

        store = store_of(ctx.env)
        return (load_diffusion_model(store, resolve(store, "diffusion_models", unet_name), unet_name, weight_dtype),)


class CLIPLoader(Node):
    """[Recipes]

    stable_diffusion: clip-l
    stable_cascade: clip-g
    sd3: t5 xxl/ clip-g / clip-l
    stable_audio: t5 base
    mochi: t5 xxl
    cosmos: old t5 xxl
    lumina2: gemma 2 2B
    wan: umt5 xxl
     hidream: llama-3.1 (Recommend) or t5
    omnigen2: qwen vl 2.5 3B"""
    display_name = "Load CLIP"
    category = "advanced/loaders"
    inputs = (Combo("clip_name", files("text_encoders")), Combo("type", CLIP_TYPES),
              Combo("device", ["default", "cpu"], optional=True, advanced=True))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip_name, type, device="default"):
        return (load_clip(ctx, [clip_name], type),)


class DualCLIPLoader(Node):
    """[Recipes]

    sdxl: clip-l, clip-g
    sd3: clip-l, clip-g / clip-l, t5 / clip-g, t5
    flux: clip-l, t5
    hidream: at least one of t5 or llama, recommended t5 and llama
    hunyuan_image: qwen2.5vl 7b and byt5 small"""
    category = "advanced/loaders"
    inputs = (Combo("clip_name1", files("text_encoders")), Combo("clip_name2", files("text_encoders")),
              Combo("type", DUAL_TYPES), Combo("device", ["default", "cpu"], optional=True, advanced=True))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip_name1, clip_name2, type, device="default"):
        return (load_clip(ctx, [clip_name1, clip_name2], type),)


class TripleCLIPLoader(Node):
    """[Recipes]

    sd3: clip-l, clip-g, t5"""
    category = "advanced/loaders"
    inputs = (Combo("clip_name1", files("text_encoders")), Combo("clip_name2", files("text_encoders")),
              Combo("clip_name3", files("text_encoders")))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip_name1, clip_name2, clip_name3):
        return (load_clip(ctx, [clip_name1, clip_name2, clip_name3], "sd3"),)


NODES = [UNETLoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader]
