"""Equivalence with the diffusers pipelines on the tiny models: Loom's KSampler path (split loaders, text encoding,
flow sampling with euler on the 'simple' schedule) against ZImagePipeline, FluxPipeline, StableDiffusion3Pipeline and
QwenImagePipeline given the same sigmas, initial noise and prompts. Compared in the transformer's latent
space; the tolerance is stated per family (float32, one thread). Printed: max abs diff."""
from __future__ import annotations

import pytest
import torch

from modelstore.families import store as fs

STEPS, SEED = 4, 11


def _store(root):
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore

    return ModelStore(ModelFolders(root), device="cpu", dtype="fp32")


def _clip(st, root, names, type_):
    refs = tuple(fs.load_text_encoder(st, root / "text_encoders" / n) for n in names)
    return fs.FamilyClip(type_, refs, store=st)


def _ours(st, root, unet, clip, pos, neg, cfg, guidance=None, size=64):
    from nodes.family_encode import encode
    from nodes.family_sampling import sample

    model = fs.load_diffusion_model(st, root / "diffusion_models" / unet, unet)
    p, n = encode(clip, pos), encode(clip, neg)
    if guidance is not None:
        p = [[c, {**o, "guidance": guidance}] for c, o in p]
    lat = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    out = sample(None, model, p, n, lat, seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple")
    from nodes.family_sampling import latent_affine

    scale, shift = latent_affine(model.meta)  # Qwen-Image: per-channel (latent - mean) / std
    return (out - shift) * scale, model


def _sigmas_and_noise(model, size=64):
    from nodes.family_sampling import sampling_spec
    from sampling.model_sampling import from_spec
    from sampling.noise import prepare_noise
    from sampling.schedulers import ksampler_sigmas

    ms = from_spec(sampling_spec(model))
    sig = ksampler_sigmas(ms, "simple", "euler", STEPS, 1.0)
    return sig, prepare_noise(torch.zeros(1, 16, size // 8, size // 8), SEED)


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def _report(name, a, b, tol):
    d = (a - b).abs().max().item()
    print(f"\n{name}: max abs diff {d:.3g} (latent max {b.abs().max().item():.3g})")
    assert d <= tol, d


def test_zimage_matches_pipeline(family_models):
    from diffusers import ZImagePipeline

    root, orig = family_models
    st = _store(root)
    clip = _clip(st, root, ["qwen_3_4b.safetensors"], "lumina2")
    ours, model = _ours(st, root, "z_image_turbo_bf16.safetensors", clip, "a red circle", "", cfg=1.0)
    sig, noise = _sigmas_and_noise(model)
    o = orig["zimage"]
    te = clip.encoders[0][1].get()
    pipe = ZImagePipeline(scheduler=_scheduler(), vae=o["vae"], text_encoder=o["text_encoder"], tokenizer=te.tokenizer,
                          transformer=o["transformer"])
    ref = pipe("a red circle", height=64, width=64, num_inference_steps=STEPS, sigmas=sig[:-1].tolist(),
               guidance_scale=0.0, latents=noise.clone(), output_type="latent").images
    _report("Z-Image", ours, ref, 1e-4)


def test_flux_matches_pipeline(family_models):
    from diffusers import FluxPipeline

    from modelstore.families.flux import pack

    root, orig = family_models
    st = _store(root)
    clip = _clip(st, root, ["clip_l.safetensors", "t5xxl_fp16.safetensors"], "flux")
    ours, model = _ours(st, root, "flux1-dev.safetensors", clip, "a red circle", "", cfg=1.0, guidance=3.5)
    sig, noise = _sigmas_and_noise(model)
    o = orig["flux"]
    toks = {k: r.get().tokenizer for k, r in clip.encoders}
    from transformers import CLIPTextModel

    plain = CLIPTextModel(o["clip_l"].config).eval()  # FluxPipeline reads pooler_output (no projection)
    plain.load_state_dict({k.removeprefix("text_model."): v for k, v in o["clip_l"].state_dict().items()
                           if not k.startswith("text_projection") and not k.endswith("position_ids")}, strict=False)
    pipe = FluxPipeline(scheduler=_scheduler(), vae=o["vae"], text_encoder=plain, tokenizer=toks["clip_l"],
                        text_encoder_2=o["t5"], tokenizer_2=toks["t5"], transformer=o["transformer"])
    ref = pipe("a red circle", height=64, width=64, num_inference_steps=STEPS, sigmas=sig[:-1].tolist(),
               guidance_scale=3.5, latents=pack(noise)[0], max_sequence_length=256, output_type="latent").images
    ours_packed = pack(ours)[0]
    _report("FLUX.1 dev", ours_packed, ref, 1e-4)


def test_sd3_matches_pipeline_with_cfg(family_models):
    from diffusers import StableDiffusion3Pipeline

    root, orig = family_models
    st = _store(root)
    clip = _clip(st, root, ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3")
    ours, model = _ours(st, root, "sd3.5_medium.safetensors", clip, "a red circle", "", cfg=2.5)
    sig, noise = _sigmas_and_noise(model)
    o = orig["sd3"]
    toks = {k: r.get().tokenizer for k, r in clip.encoders}
    pipe = StableDiffusion3Pipeline(transformer=o["transformer"], scheduler=_scheduler(), vae=o["vae"],
                                    text_encoder=o["clip_l"], tokenizer=toks["clip_l"], text_encoder_2=o["clip_g"],
                                    tokenizer_2=toks["clip_g"], text_encoder_3=o["t5"], tokenizer_3=toks["t5"])
    ref = pipe("a red circle", negative_prompt="", height=64, width=64, num_inference_steps=STEPS,
               sigmas=sig[:-1].tolist(), guidance_scale=2.5, latents=noise.clone(), max_sequence_length=77,
               output_type="latent").images
    _report("SD3", ours, ref, 1e-4)


def _qwen_pipe(st, root, orig):
    """QwenImagePipeline on the tiny originals; the tokenizer is the one Loom loaded (models/tokenizers/qwen25vl).
    ``prompt_template_encode_start_idx`` (34 = the template prefix's token count with the real Qwen tokenizer) is
    set to the prefix's token count with the tiny tokenizer."""
    from diffusers import QwenImagePipeline

    from nodes.family_encode import QWEN_IMAGE_TEMPLATE

    clip = _clip(st, root, ["qwen_2.5_vl_7b_fp8_scaled.safetensors"], "qwen_image")
    tok = clip.encoders[0][1].get().tokenizer
    o = orig["qwen_image"]
    pipe = QwenImagePipeline(scheduler=_scheduler(), vae=o["vae"], text_encoder=o["text_encoder"], tokenizer=tok,
                             transformer=o["transformer"])
    pipe.prompt_template_encode_start_idx = len(tok(QWEN_IMAGE_TEMPLATE.split("{}")[0]).input_ids)
    return pipe, clip


def test_qwen_image_matches_pipeline(family_models):
    from modelstore.families.qwen_image import pack

    root, orig = family_models
    st = _store(root)
    pipe, clip = _qwen_pipe(st, root, orig)
    ours, model = _ours(st, root, "qwen_image_fp8_e4m3fn.safetensors", clip, "a red circle", "", cfg=1.0)
    sig, noise = _sigmas_and_noise(model)
    ref = pipe("a red circle", height=64, width=64, num_inference_steps=STEPS, sigmas=sig[:-1].tolist(),
               true_cfg_scale=1.0, latents=pack(noise), output_type="latent").images
    _report("Qwen-Image", pack(ours), ref, 1e-4)


def test_qwen_image_cfg_matches_pipeline_parts(family_models):
    """CFG with a negative prompt: QwenImagePipeline also rescales the guided velocity to the conditional one's norm,
    which ComfyUI (and Loom's KSampler) does not; so the reference here is the pipeline's own encode_prompt,
    transformer and scheduler in its denoising loop with plain CFG (ComfyUI's rule)."""
    from modelstore.families.qwen_image import pack

    root, orig = family_models
    st = _store(root)
    pipe, clip = _qwen_pipe(st, root, orig)
    ours, model = _ours(st, root, "qwen_image_fp8_e4m3fn.safetensors", clip, "a red circle", "blurry, low quality",
                        cfg=2.5)
    sig, noise = _sigmas_and_noise(model)
    pos, _ = pipe.encode_prompt("a red circle", device="cpu")
    neg, _ = pipe.encode_prompt("blurry, low quality", device="cpu")
    sch = pipe.scheduler
    sch.set_timesteps(sigmas=sig[:-1].tolist(), device="cpu")
    lat = pack(noise)
    with torch.no_grad():
        for t in sch.timesteps:
            ts = t.expand(1) / 1000
            v = [pipe.transformer(hidden_states=lat, encoder_hidden_states=e, encoder_hidden_states_mask=None,
                                  timestep=ts, img_shapes=[[(1, 4, 4)]], return_dict=False)[0] for e in (pos, neg)]
            lat = sch.step(v[1] + 2.5 * (v[0] - v[1]), t, lat, return_dict=False)[0]
    _report("Qwen-Image cfg 2.5", pack(ours), lat, 1e-4)
