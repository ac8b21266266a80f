"""Model families beyond the SD UNet checkpoints: split diffusion-model files (SD3, FLUX.1, Z-Image) and
standalone text encoders (CLIP-L/G, T5, Qwen3), each in its own module; ``registry`` detects a file's family."""
