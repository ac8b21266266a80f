"""A tiny SD1-architecture model built from config (random weights) and its LDM-layout single-file save:
shared by the model-store, node and server tests."""
from __future__ import annotations


def build_tiny_sd1(in_channels: int = 4, seed: int = 0):
    """(unet, vae, text_encoder): UNet (32,64,64) x2 layers, VAE (32,32,64,64), CLIP hidden 64, 2 layers."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8).eval()
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()
    return unet, vae, te


def save_checkpoint(path, unet, vae, te):
    from safetensors.torch import save_file

    from tests.models.ldm_export import clip_to_ldm, unet_to_ldm, vae_to_ldm

    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
