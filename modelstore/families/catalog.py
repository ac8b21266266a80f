"""What Loom can load, torch-free (for /system_stats and docs): diffusion-model families and text-encoder kinds,
with the files each reads."""
from __future__ import annotations

DIFFUSION = {
    "sd1": "Stable Diffusion 1.x UNet (checkpoints)",
    "sd2": "Stable Diffusion 2.x UNet, eps or v-prediction (checkpoints)",
    "sdxl": "SDXL base UNet (checkpoints)",
    "sdxl_refiner": "SDXL refiner UNet (checkpoints)",
    "flux": "FLUX.1 dev/schnell (double_blocks/single_blocks; UNETLoader)",
    "sd3": "Stable Diffusion 3 / 3.5 MMDiT (joint_blocks; UNETLoader)",
    "zimage": "Z-Image (Turbo) single-stream DiT (layers/noise_refiner/cap_embedder; UNETLoader)",
    "qwen_image": "Qwen-Image MMDiT (txt_norm/img_in/transformer_blocks, diffusers key names; UNETLoader)",
}
TEXT_ENCODERS = {"clip_l": "CLIP ViT-L text model", "clip_g": "OpenCLIP bigG text model",
                 "t5": "T5 v1.1 XXL encoder (tokenizer from models/tokenizers/t5)",
                 "qwen3": "Qwen3 (Z-Image; tokenizer from models/tokenizers/qwen3)",
                 "qwen25vl": "Qwen2.5-VL language model (Qwen-Image; tokenizer from models/tokenizers/qwen25vl)"}
CLIP_TYPES = {"stable_diffusion": ["clip_l"], "sd3": ["clip_l", "clip_g", "t5"], "flux": ["clip_l", "t5"],
              "lumina2": ["qwen3"], "qwen_image": ["qwen25vl"]}
VAES = {"4-channel": "SD1/SD2/SDXL VAEs", "16-channel": "FLUX.1 / Z-Image ae.safetensors, SD3 VAE",
        "qwen_image": "Qwen-Image VAE qwen_image_vae.safetensors (Wan 2.1 layout, 16 channels, per-channel mean/std)"}


def summary() -> dict:
    """JSON-ready description of the loadable families (names -> descriptions)."""
    return {"diffusion_models": dict(DIFFUSION), "text_encoders": dict(TEXT_ENCODERS),
            "clip_loader_types": {k: list(v) for k, v in CLIP_TYPES.items()}, "vae": dict(VAES)}
