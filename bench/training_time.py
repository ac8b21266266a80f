"""Projected wall time of a straight `python -m training` run on this machine.

Runs every stage of the bundled model's training for a few steps in a scratch folder, with the real models, batch
sizes and data, measures seconds per step (or per image for the latent encoding), and multiplies by the default
step counts of `python -m training`. Overheads that happen once (evaluations, checkpoint writes) are inside the
short runs, so the projection errs high.

    python bench/training_time.py              # 2 torch threads (an idle 2-core box)
    python bench/training_time.py --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def _quiet(*a, **k):
    pass


def main(argv=None):
    from training import __main__ as cli
    from training import finetune_decoder, train_inpaint, train_unet, train_vae

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="steps timed per stage")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    d = vars(cli.build_parser().parse_args([]))  # the defaults of `python -m training`
    n = a.steps
    rows = []

    def timed(name, fn, count, total):
        t = time.time()
        fn()
        per = (time.time() - t) / count
        rows.append((name, per, total, per * total))
        print(f"{name:<22} {per:7.3f} s/unit x {total:>6} = {per * total / 60:6.1f} min", flush=True)

    with tempfile.TemporaryDirectory(prefix="loom-train-time-") as tmp:
        work = Path(tmp)
        timed("vae", lambda: train_vae.train(work, n, d["vae_bs"], d["vae_lr"], log=_quiet), n, d["vae_steps"])
        n_img = 2048
        timed("encode latents", lambda: train_unet.encode_dataset(work, n_img, log=_quiet), n_img, d["n_latents"])
        timed("decoder fine-tune", lambda: finetune_decoder.finetune(work, n, log=_quiet), n, d["decoder_steps"])
        tr = train_unet.Trainer(work, d["variant"], n, d["unet_bs"], d["unet_lr"], comp_steps=n, log=_quiet)
        tr.load_data()

        def steps(k):
            for _ in range(k):
                tr.train_step()
        timed("unet phase A", lambda: steps(n), n, d["unet_steps"])
        timed("unet phase B", lambda: steps(n), n, d["comp_steps"])
        tr.save()
        it = train_inpaint.InpaintTrainer(work, n, log=_quiet)
        timed("inpaint variant", lambda: [it.train_step() for _ in range(n)], n, d["inpaint_steps"])
    total = sum(r[3] for r in rows)
    base = sum(r[3] for r in rows if r[0] != "inpaint variant")
    print(f"projected straight run, {a.threads} thread(s): {total / 60:.1f} min "
          f"({base / 60:.1f} min without the inpainting variant)")


if __name__ == "__main__":
    main()
