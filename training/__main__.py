"""Train Loom's bundled model end to end and export it as one SD1 (LDM layout) safetensors file.

    python -m training --out models/checkpoints/loom-shapes-64.safetensors

Stages (each resumable; finished stages are skipped, interrupted ones resume from their last checkpoint):
  1. VAE (training/train_vae.py)          -> training/work/vae_final.pt
  2. fold the latent scale into the VAE so latents*0.18215 have unit std, encode the dataset
                                          -> training/work/vae_folded.pt, latents.pt
  3. UNet + CLIP text encoder (train_unet): phase A (--unet-steps), then the composition phase (--comp-steps)
                                          -> training/work/unet_ckpt.pt
  4. export EMA weights, fp16            -> --out
  5. the 9-channel inpainting variant (train_inpaint), fine-tuned from 3 -> --inpaint-out (--inpaint-steps 0 skips)
  6. clip: a tiny CLIP (train_clip), exported in transformers' CLIPModel layout -> --clip-out, then measured
     (eval_clip: retrieval among 8, ranking 8 generations of the bundled model) -> work/clip_eval.json
  7. lora: the grayscale example LoRA for the bundled model (train_lora) -> --lora-out
  8. upscaler: the 4x RRDBNet example upscaler (train_upscaler) -> --upscaler-out
  9. embedding: the loom-blue-square textual-inversion example (train_embedding) -> --embedding-out
`--only clip` (or lora, upscaler, embedding, diffusion) runs one group; stages 6-9 need only the bundled checkpoint
(--out).
Everything is seeded; with the same thread count a rerun gives the same weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/checkpoints/loom-shapes-64.safetensors")
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--seed", type=int, default=0)
    # 1 thread: on a shared 2-core box, 2 OpenMP threads per process thrash (measured 10x slower under load)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-bs", type=int, default=12)
    ap.add_argument("--vae-lr", type=float, default=6e-4)
    ap.add_argument("--n-latents", type=int, default=24000)
    ap.add_argument("--variant", default="s64x2")
    ap.add_argument("--decoder-steps", type=int, default=450)
    ap.add_argument("--unet-steps", type=int, default=3300)
    ap.add_argument("--unet-bs", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=8e-4)
    ap.add_argument("--comp-steps", type=int, default=600, help="composition phase (teaches positions)")
    ap.add_argument("--comp-lr", type=float, default=3e-4)
    ap.add_argument("--inpaint-steps", type=int, default=600)
    ap.add_argument("--inpaint-out", default="models/checkpoints/loom-shapes-64-inpainting.safetensors")
    ap.add_argument("--fp32", action="store_true", help="store fp32 instead of fp16")
    ap.add_argument("--only", choices=["all", "diffusion", "clip", "lora", "upscaler", "embedding"], default="all")
    ap.add_argument("--clip-steps", type=int, default=2000)
    ap.add_argument("--clip-bs", type=int, default=64)
    ap.add_argument("--clip-out", default="models/clip_vision/loom-shapes-clip.safetensors")
    ap.add_argument("--clip-eval-prompts", type=int, default=48)
    ap.add_argument("--lora-steps", type=int, default=200)
    ap.add_argument("--lora-out", default="models/loras/loom-shapes-grayscale-lora.safetensors")
    ap.add_argument("--upscaler-steps", type=int, default=3000)
    ap.add_argument("--upscaler-out", default="models/upscale_models/loom-shapes-esrgan-x4.safetensors")
    ap.add_argument("--upscaler-lr", type=float, default=2e-3)
    ap.add_argument("--embedding-steps", type=int, default=600)
    ap.add_argument("--embedding-out", default="models/embeddings/loom-blue-square.safetensors")
    ap.add_argument("--upscaler-init", default=None, help="continue from this RRDBNet file (a second stage)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "train.log", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n"); logf.flush()

    t0 = time.time()
    if a.only in ("all", "diffusion"):
        _diffusion(a, work, log)
    if a.only in ("all", "clip"):
        from . import eval_clip, train_clip
        ck = train_clip.train(work, a.clip_steps, a.clip_bs, seed=a.seed, log=log)
        sd = train_clip.export(ck, Path(a.clip_out))
        log(f"exported {a.clip_out}: {len(sd)} tensors, {os.path.getsize(a.clip_out) / 1e6:.1f} MB")
        eval_clip.evaluate(Path(a.clip_out), Path(a.out), work / "clip_eval.json", a.clip_eval_prompts, log=log)
    if a.only in ("all", "lora"):
        from . import train_lora
        r = train_lora.train(Path(a.out), Path(a.lora_out), a.lora_steps, seed=a.seed, work=work, log=log)
        (work / "lora_eval.json").write_text(json.dumps(r, indent=1))
    if a.only in ("all", "upscaler"):
        from . import train_upscaler
        r = train_upscaler.train(Path(a.upscaler_out), a.upscaler_steps, lr=a.upscaler_lr, seed=a.seed,
                                 init=Path(a.upscaler_init) if a.upscaler_init else None, log=log)
        (work / "upscaler_eval.json").write_text(json.dumps(r, indent=1))
    if a.only in ("all", "embedding"):
        from . import train_embedding
        r = train_embedding.train(Path(a.out), Path(a.embedding_out), a.embedding_steps, seed=a.seed, log=log)
        (work / "embedding_eval.json").write_text(json.dumps(r, indent=1))
    log(f"this invocation {time.time() - t0:.0f}s")


def _diffusion(a, work: Path, log) -> None:
    from . import export, finetune_decoder, train_inpaint, train_unet, train_vae
    train_vae.train(work, a.vae_steps, a.vae_bs, a.vae_lr, a.seed, log=log)
    train_unet.encode_dataset(work, a.n_latents, log=log)
    finetune_decoder.finetune(work, a.decoder_steps, log=log)  # independent of the UNet (encoder frozen)
    train_unet.Trainer(work, a.variant, a.unet_steps, a.unet_bs, a.unet_lr, a.seed, comp_steps=a.comp_steps,
                       comp_lr=a.comp_lr, log=log).run()
    st, n = export.export_from_work(work, Path(a.out), torch.float32 if a.fp32 else torch.float16)
    log(f"exported {a.out}: {n} tensors, {os.path.getsize(a.out) / 1e6:.1f} MB")
    if a.inpaint_steps:
        train_inpaint.InpaintTrainer(work, a.inpaint_steps, seed=a.seed, log=log).run()
        sd = train_inpaint.export(work, Path(a.inpaint_out), torch.float32 if a.fp32 else torch.float16)
        log(f"exported {a.inpaint_out}: {len(sd)} tensors, {os.path.getsize(a.inpaint_out) / 1e6:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
