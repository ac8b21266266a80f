"""Model loaders. They return references from the model store (modelstore/models.py); weights load on first use and
are shared by every node and prompt that references the same file. Their combo options come from the
environment's folder service (``env.folders``): listing files never creates the store nor imports torch."""
from __future__ import annotations

from engine.node import Combo, Float, Node, Output, Socket


def store_of(env):
    return env.model_store()


def model_list(kind: str):
    """Combo options: the files of a model folder kind (``checkpoints``, ``vae``, ...) from ``env.folders``."""
    def options(env):
        return [] if env is None else env.folders.list(kind)
    return options


def file_fingerprint(env, kind: str, name) -> tuple | None:
    """Cache identity of the file ``name`` in the model folder ``kind``: (size in bytes, mtime in ns), or None when
    it cannot be resolved or read (the node then runs and reports the problem)."""
    try:
        st = env.folders.resolve(kind, name).stat()
        return (st.st_size, st.st_mtime_ns)
    except Exception:
        return None


class CheckpointLoaderSimple(Node):
    """Loads a diffusion model checkpoint (single-file .safetensors in the original layout, or a diffusers
    folder); diffusion models are used to denoise latents."""
    display_name = "Load Checkpoint"
    category = "loaders"
    inputs = (Combo("ckpt_name", model_list("checkpoints"), tooltip="The name of the checkpoint (model) to load."),)
    outputs = (Output("MODEL", tooltip="The model used for denoising latents."),
               Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
               Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from latent "
                                     "space."))

    def run(self, ctx, ckpt_name):
        return tuple(store_of(ctx.env).load_checkpoint(ckpt_name))


class VAELoader(Node):
    """Loads a standalone VAE (.safetensors, original or diffusers key layout)."""
    display_name = "Load VAE"
    category = "loaders"
    inputs = (Combo("vae_name", model_list("vae")),)
    outputs = (Output("VAE"),)

    def run(self, ctx, vae_name):
        return (store_of(ctx.env).load_vae(vae_name),)


class LoraLoader(Node):
    """LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as
    applying styles. Multiple LoRA nodes can be linked together."""
    display_name = "Load LoRA"
    category = "loaders"
    inputs = (Socket("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Socket("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              Combo("lora_name", model_list("loras"), tooltip="The name of the LoRA."),
              Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the diffusion model. This value can be negative."),
              Float("strength_clip", 1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the CLIP model. This value can be negative."))
    outputs = (Output("MODEL", tooltip="The modified diffusion model."),
               Output("CLIP", tooltip="The modified CLIP model."))

    def run(self, ctx, model, clip, lora_name, strength_model, strength_clip):
        m, c = store_of(ctx.env).load_lora(model, clip, lora_name, strength_model, strength_clip,
                                           warn=getattr(ctx, "warn", None))
        return (m, c)


class LoraLoaderModelOnly(Node):
    """LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as
    applying styles. Multiple LoRA nodes can be linked together."""
    category = "loaders"
    inputs = (Socket("model", "MODEL"), Combo("lora_name", model_list("loras")),
              Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01))
    outputs = (Output("MODEL", tooltip="The modified diffusion model."),)

    def run(self, ctx, model, lora_name, strength_model):
        m, _ = store_of(ctx.env).load_lora(model, None, lora_name, strength_model, 0.0, warn=getattr(ctx, "warn", None))
        return (m,)


class UpscaleModelLoader(Node):
    """Loads a super-resolution model (ESRGAN, SwinIR, ... via spandrel) from upscale_models/ (.safetensors only),
    through the model store: keyed by file identity, counted in its memory budget, the header checked here."""
    display_name = "Load Upscale Model"
    category = "loaders"
    inputs = (Combo("model_name", model_list("upscale_models")),)
    outputs = (Output("UPSCALE_MODEL"),)

    @classmethod
    def check(cls, env, model_name=None, **_):
        if isinstance(model_name, str) and not model_name.lower().endswith((".safetensors", ".sft")):
            return {"model_name": "only .safetensors upscale models are loaded (pickle files can run code)"}
        return None

    def run(self, ctx, model_name):
        return (store_of(ctx.env).load("upscale", model_name),)


NODES = [CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, UpscaleModelLoader]
