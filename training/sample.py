"""A small, direct diffusers sampling loop over the Loom model parts (no pipeline object), used by the trainer's
quick evals and by bench/quality.py --backend diffusers."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

SCALING = 0.18215
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "modelstore" / "model_configs" / "clip_tokenizer"
SD1_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon")

_TOK = None


def tokenizer():
    global _TOK
    if _TOK is None:
        from transformers import CLIPTokenizer
        _TOK = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    return _TOK


def tokenize(texts: list[str]) -> torch.Tensor:
    return tokenizer()(list(texts), padding="max_length", max_length=77, truncation=True,
                       return_tensors="pt").input_ids


def make_scheduler(name: str):
    import diffusers
    extra = {}
    if name == "ddim":
        cls, extra = diffusers.DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    elif name == "euler":
        cls = diffusers.EulerDiscreteScheduler
    elif name == "euler_a":
        cls = diffusers.EulerAncestralDiscreteScheduler
    elif name == "dpmpp_2m":
        cls = diffusers.DPMSolverMultistepScheduler
    elif name == "pndm":
        cls, extra = diffusers.PNDMScheduler, dict(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    elif name == "ddpm":
        cls = diffusers.DDPMScheduler
    else:
        raise ValueError(f"unknown scheduler {name}")
    return cls.from_config({**SD1_SCHEDULER, **extra})


@torch.no_grad()
def encode_text(text_encoder, texts: list[str]) -> torch.Tensor:
    return text_encoder(tokenize(texts), attention_mask=None)[0]


@torch.no_grad()
def generate(unet, text_encoder, vae, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 5.0,
             sampler: str = "euler", negative: str = "", batch: int = 32) -> np.ndarray:
    """Returns N x 64 x 64 x 3 uint8. Noise per image from torch.Generator('cpu').manual_seed(seed)."""
    out = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i:i + batch], seeds[i:i + batch]
        n = len(ps)
        cond = encode_text(text_encoder, ps)
        use_cfg = cfg != 1.0
        if use_cfg:
            unc = encode_text(text_encoder, [negative]).expand(n, -1, -1)
            ctx = torch.cat([unc, cond])
        else:
            ctx = cond
        c = unet.config.in_channels
        h = unet.config.sample_size if isinstance(unet.config.sample_size, int) else 8
        lat = torch.cat([torch.randn(1, c, h, h, generator=torch.Generator("cpu").manual_seed(s)) for s in ss])
        sch = make_scheduler(sampler)
        sch.set_timesteps(steps)
        lat = lat * sch.init_noise_sigma
        kw = {}
        sig = inspect.signature(sch.step).parameters
        if "generator" in sig:
            kw["generator"] = torch.Generator("cpu").manual_seed(ss[0] + 7919)
        for t in sch.timesteps:
            inp = torch.cat([lat] * 2) if use_cfg else lat
            inp = sch.scale_model_input(inp, t)
            eps = unet(inp, t, encoder_hidden_states=ctx).sample
            if use_cfg:
                eu, ec = eps.chunk(2)
                eps = eu + cfg * (ec - eu)
            lat = sch.step(eps, t, lat, **kw).prev_sample
        img = vae.decode(lat / SCALING).sample
        out.append(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
