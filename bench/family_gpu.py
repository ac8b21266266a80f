"""Real-size family load on a GPU (issue 12): the editor's default Z-Image Turbo graph on random weights.

    python bench/family_gpu.py                  # CUDA, bf16, real sizes (~6.2B DiT, ~4.0B Qwen3, FLUX VAE)
    python bench/family_gpu.py --tiny --device cpu --dtype fp32 --size 64 --steps 2    # CPU smoke check

Writes the three files under their template names (``z_image_turbo_bf16.safetensors`` in the original Z-Image
key layout, ``qwen_3_4b.safetensors`` as ``model.*``, the FLUX ``ae.safetensors`` in LDM keys) with seeded random
weights made on the GPU (never downloaded; a tiny BPE tokenizer stands in for Qwen3's, which changes nothing but
the token ids), then loads each through Loom's model store and runs the editor's default graph
(tests/families/zimage_default_graph_api.json: 1024x1024, res_multistep, 8 steps, cfg 1) through the engine, twice.
Prints file sizes, write time, load seconds per component, peak VRAM after loading and after the runs, per-node
durations of the second (warm) run and the sampler's it/s.

Measured 30 Nov 2026 on one NVIDIA H200 (torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0), bf16:
- parameters: DiT 6.155 B, Qwen3 4.022 B, VAE 83.8 M; files 11.46 + 7.49 + 0.16 GiB, built on the GPU in 10.9 s
  and written in 24.1 s;
- load through the model store: DiT 10.93 s, text encoder 6.46 s, VAE 0.09 s; peak VRAM 27.24 GiB after loading
  and after the runs (all three resident, nothing offloaded);
- the default graph at 1024x1024, res_multistep, 8 steps: cold run 3.88 s (KSampler 1.91 s = 4.19 it/s),
  warm run 1.58 s (KSampler 1.216 s = 6.58 it/s, text encode 0.04 s, VAE decode 0.09 s, PNG save 0.20 s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build(tiny: bool, device: str):
    """(DiT, Qwen3, VAE) diffusers/transformers modules with random weights on ``device`` (bf16 on CUDA)."""
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from tests import tiny_families as tf

    if tiny:
        return tf.tiny_zimage(), tf.tiny_qwen3(), tf.tiny_vae16()
    dt = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    with torch.device(device):
        dit = ZImageTransformer2DModel().to(dt)  # diffusers' defaults are Z-Image Turbo's released config
        te = Qwen3Model(Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                                    max_position_embeddings=40960, tie_word_embeddings=True,
                                    rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})).to(dt)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                            scaling_factor=0.3611, shift_factor=0.1159).to(dt)
    with torch.no_grad():  # seeded noise; norms near 1 so activations stay finite through 30+ layers
        for m in (dit, te, vae):
            for name, p in m.named_parameters():
                r = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32) * 0.02
                p.copy_((1.0 + r) if ("norm" in name and p.ndim == 1 and name.endswith("weight")) else r)
    return dit.eval(), te.eval(), vae.eval()


def write(models: Path, tiny: bool, device: str) -> dict:
    import torch
    from safetensors.torch import save_file

    from tests import tiny_families as tf
    from tests.models.ldm_export import vae_to_ldm

    t = time.perf_counter()
    dit, te, vae = build(tiny, device)
    out = {"params_dit_b": sum(p.numel() for p in dit.parameters()) / 1e9,
           "params_text_encoder_b": sum(p.numel() for p in te.parameters()) / 1e9,
           "params_vae_m": sum(p.numel() for p in vae.parameters()) / 1e6, "build_s": time.perf_counter() - t}
    t = time.perf_counter()
    files = {models / "diffusion_models" / "z_image_turbo_bf16.safetensors": tf.zimage_file(dit),
             models / "text_encoders" / "qwen_3_4b.safetensors": tf.qwen3_file(te),
             models / "vae" / "ae.safetensors": vae_to_ldm(vae, prefix="")}
    for path, sd in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in sd.items()}, str(path))
    tf.write_qwen_tokenizer(models / "text_encoders" / "qwen_3_4b_tokenizer")
    del dit, te, vae, files
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    out["write_s"] = time.perf_counter() - t
    out["files_gib"] = {p.name: round(p.stat().st_size / 2**30, 2) for p in models.rglob("*.safetensors")}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="Loom's compute dtype (default bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    import torch

    dev = a.device
    cuda = dev.startswith("cuda")
    dtype = a.dtype or ("bf16" if cuda else "fp32")
    root = Path(a.workdir or tempfile.mkdtemp(prefix="loom-family-gpu-"))
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": dtype}
    res.update(write(root, a.tiny, dev))
    print(json.dumps(res), flush=True)

    from engine.context import Env
    from engine.executor import Executor
    from engine.folders import ModelFolders
    from modelstore.families import store as fs
    from modelstore.models import ModelStore
    from nodes import default_registry

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vram = (lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2)) if cuda else (lambda: None)
    store = ModelStore(ModelFolders(root), device=dev, dtype=dtype)
    load = {}
    t = time.perf_counter()
    fs.load_diffusion_model(store, root / "diffusion_models" / "z_image_turbo_bf16.safetensors",
                            "z_image_turbo_bf16.safetensors").get()
    sync()
    load["dit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fs.load_text_encoder(store, root / "text_encoders" / "qwen_3_4b.safetensors")[1].get()
    sync()
    load["text_encoder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    store.load_vae("ae.safetensors").get()
    sync()
    load["vae_s"] = time.perf_counter() - t
    res = {"load": {k: round(v, 2) for k, v in load.items()}, "peak_vram_gib_after_load": vram()}
    print(json.dumps(res), flush=True)

    wf = json.loads((ROOT / "tests" / "families" / "zimage_default_graph_api.json").read_text())
    for node in wf.values():
        ins = node["inputs"]
        if node["class_type"] == "EmptySD3LatentImage":
            ins["width"] = ins["height"] = a.size
        if node["class_type"] == "KSampler":
            ins["steps"] = a.steps
            sampler = ins["sampler_name"]
        if node["class_type"] == "SaveImage":
            ins["filename_prefix"] = "family_gpu"
    env = Env(input_dir=root / "in", output_dir=root / "out", temp_dir=root / "tmp", models_dir=root,
              model_store_factory=lambda e: store)
    ex = Executor(default_registry(), env)
    for run in ("cold", "warm"):
        events = []
        if run == "warm":
            ex.free()  # drop cached outputs (not the models): the whole graph runs again
        t = time.perf_counter()
        r = ex.run(wf, sink=events.append)
        sync()
        wall = time.perf_counter() - t
        assert r.status == "success", r
        nodes = {e.data["class_type"]: round(e.data["duration_ms"] / 1000, 3) for e in events
                 if e.type == "node_done" and "duration_ms" in e.data}
        ks = nodes.get("KSampler")
        print(json.dumps({"run": run, "wall_s": round(wall, 2), "node_s": nodes, "sampler": sampler,
                          "size": a.size, "steps": a.steps,
                          "sampler_it_s": round(a.steps / ks, 2) if ks else None,
                          "peak_vram_gib": vram()}), flush=True)
    imgs = sorted((root / "out").glob("family_gpu*.png"))
    print(json.dumps({"images": [p.name for p in imgs]}), flush=True)


if __name__ == "__main__":
    main()
