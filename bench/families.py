"""Per-family load cost on tiny random files: ``python bench/families.py [zimage|flux|sd3|qwen_image ...]``.

For each family (Z-Image, FLUX.1 dev, SD3, Qwen-Image) a fresh interpreter writes the tiny file set of tests/tiny_families.py
(the families' real single-file layouts), then loads every component through the model store (diffusion model,
text encoders, VAE: header + weights + module build) and runs one txt2img through the engine (64x64, 4 euler
steps). Printed per family: load seconds per component, txt2img seconds, and the process's peak RSS (MiB) before
loading (after imports) and after the run. One thread. Real-size figures need a GPU machine and real files.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from tests import tiny_families as tf
from engine.folders import ModelFolders
from modelstore.models import ModelStore
from modelstore.families import store as fs
fam = sys.argv[1]
root = Path(tempfile.mkdtemp())
sets = {"zimage": (tf.write_zimage_set, "z_image_turbo_bf16.safetensors", ["qwen_3_4b.safetensors"], "ae.safetensors", "lumina2"),
        "flux": (tf.write_flux_set, "flux1-dev.safetensors", ["clip_l.safetensors", "t5xxl_fp16.safetensors"], "ae.safetensors", "flux"),
        "sd3": (tf.write_sd3_set, "sd3.5_medium.safetensors", ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3_vae.safetensors", "sd3"),
        "qwen_image": (tf.write_qwen_image_set, "qwen_image_fp8_e4m3fn.safetensors", ["qwen_2.5_vl_7b_fp8_scaled.safetensors"], "qwen_image_vae.safetensors", "qwen_image")}
write, dm, tes, vae, typ = sets[fam]
write(root)
import gc; gc.collect()
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"rss_before_mib": rss(), "file_mib": sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 2**20}
st = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
t = time.perf_counter(); m = fs.load_diffusion_model(st, root / "diffusion_models" / dm, dm); m.get()
out["load_dit_s"] = time.perf_counter() - t
t = time.perf_counter()
refs = [fs.load_text_encoder(st, root / "text_encoders" / n) for n in tes]
for _, r in refs: r.get()
out["load_text_encoders_s"] = time.perf_counter() - t
t = time.perf_counter(); st.load_vae(vae).get(); out["load_vae_s"] = time.perf_counter() - t
from engine.context import Env
from engine.executor import Executor
from nodes import default_registry
env = Env(input_dir=root / "in", output_dir=root / "out", temp_dir=root / "tmp", models_dir=root,
          model_store_factory=lambda e: st)
if fam in ("zimage", "qwen_image"):
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": tes[0], "type": typ}}
elif fam == "flux":
    clip = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": tes[0], "clip_name2": tes[1], "type": typ}}
else:
    clip = {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": tes[0], "clip_name2": tes[1], "clip_name3": tes[2]}}
wf = {"u": {"class_type": "UNETLoader", "inputs": {"unet_name": dm, "weight_dtype": "default"}}, "c": clip,
      "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a red circle"}},
      "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": ""}},
      "v": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
      "l": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
      "k": {"class_type": "KSampler", "inputs": {"model": ["u", 0], "seed": 1, "steps": 4, "cfg": 3.0 if fam in ("sd3", "qwen_image") else 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["p", 0], "negative": ["n", 0],
            "latent_image": ["l", 0], "denoise": 1.0}},
      "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["v", 0]}},
      "s": {"class_type": "SaveImage", "inputs": {"images": ["d", 0], "filename_prefix": fam}}}
t = time.perf_counter(); r = Executor(default_registry(), env).run(wf); out["txt2img_s"] = time.perf_counter() - t
assert r.status == "success", r.error
out["rss_peak_mib"] = rss()
print(json.dumps(out))
"""


def main(only: list[str]) -> None:
    for fam in [f for f in ("zimage", "flux", "sd3", "qwen_image") if not only or f in only]:
        r = subprocess.run([sys.executable, "-c", CHILD, fam], cwd=ROOT, capture_output=True, text=True,
                           env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                                "PATH": "/usr/bin:/bin"})
        if r.returncode:
            print(fam, "FAILED", r.stderr[-2000:])
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{fam:10s} files {d['file_mib']:.1f} MiB | load DiT {d['load_dit_s']:.2f} s, text encoders "
              f"{d['load_text_encoders_s']:.2f} s, VAE {d['load_vae_s']:.2f} s | txt2img 64px 4 steps "
              f"{d['txt2img_s']:.2f} s | peak RSS {d['rss_before_mib']:.0f} MiB after imports+writing, "
              f"{d['rss_peak_mib']:.0f} MiB after the run")


if __name__ == "__main__":
    main(sys.argv[1:])
