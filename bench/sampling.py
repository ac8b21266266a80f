"""Benchmark (not a test): sampling speed and the engine's overhead.

    python bench/sampling.py --core-only     # the sampling core vs calling the tiny UNet directly (issue 11 item 8)
    python bench/sampling.py                 # + tiny model: KSampler vs bare diffusers loop, 20-step 64x64 run
    python bench/sampling.py --sd15          # + full-size SD1.5-architecture random checkpoint, 64x64 px fp32/bf16

1. Overhead: the same tiny SD1 checkpoint, scheduler (euler/normal), 20 steps, cfg 7.5, 64x64, 1 thread. Loom runs
   the KSampler node through the Executor (loader and text encoders cached, a new seed each run, so only KSampler
   executes; its time is the node's own duration) against a bare loop written directly on diffusers (fresh
   scheduler, randn, scale_model_input, batched CFG UNet call, step). Overhead = median(Loom) / median(bare) - 1.
2. A whole 20-step 64x64 txt2img workflow (load excluded, encode + sample + decode + save) on 2 threads.
3. --sd15: bench/load_sd15.py's random-weight SD1.5 single-file checkpoint (generated once, reused), loaded through
   the store in fp32 and bf16; per-step time of KSampler at 64x64 px (latent 8x8, batch 1, CFG: UNet batch 2).

0. The sampling core (sampling.ksampler.run with euler, ComfyUI's model sampling and CFG) around the tiny UNet
   against the same 20 UNet calls made directly, 1 thread. Figure for the 1% target: core_overhead_pct = (time the
   core spends outside the UNet forward - time the direct loop spends outside it) / direct UNet time per step.
   Measured 30 Nov 2026 21:25 UTC, load average 2.5-3 on 2 cores (helpers' jobs), 3 runs of --core-only --reps 7:
   core adds 0.194 / 0.221 / 0.374 ms per step over direct UNet calls of 32.2 / 34.8 / 41.1 ms = 0.60 / 0.64 / 0.91%
   (before this change: 0.35-0.48 ms = 0.99-1.35%). What was cut: the nearest-timestep search and the EPS input
   scaling are memoised per sigma on the CPU (a sampler revisits the same sigmas; on a GPU they are computed as
   before, never read back), euler's per-step sigma tensors are made once, sigma broadcasting skips no-op
   conversions. Same numbers as before: the 128 ComfyUI fixture runs still match.

Measured (Nov 2026) on the 2-core machine while two training jobs ran on it (load average 3-4), so absolute times
are 3-8x slower than on an idle machine and totals are noisy; the outside-UNet comparison is the stable number:
- tiny, 1 thread, 20 steps: bare diffusers 30-64 ms/step, KSampler 29-64 ms/step (medians of interleaved runs;
  total ratio -4%..+8% run to run = load noise). Time outside the UNet forward: Loom 0.45-0.77 ms/step vs bare
  0.38-0.73 ms/step, i.e. engine overhead 0.06-0.23% of a step (< 3% target).
- tiny, 20-step 64x64 txt2img workflow, 2 threads: 4-17 s under that load (2 threads on 2 busy cores spin on
  OpenMP barriers); the sampling itself is 20 x ~10 ms on an idle machine (offline-models.md section 3).
- SD1.5-size random checkpoint, 64x64 px, CFG (UNet batch 2), 3 steps: fp32 2 threads 7.29 s/step (bare diffusers
  7.27), fp32 1 thread 1.75 s/step (bare 1.63); bf16 2 threads 7.26 s/step (bare 6.89) - this CPU has no AMX, so
  bf16 is no faster than fp32. Store load of UNet+CLIP 8-17 s; peak RSS 4.6-4.7 GiB fp32, 2.6 GiB bf16.
  (ComfyUI 0.3.75 on an idle machine: 0.89 s/step fp32.) Set LOOM_BENCH_THREADS=1 on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PROMPT = "a red circle on a blue square"


def workflow(ckpt: str, seed: int, steps: int, size: int = 64, save: bool = False) -> dict:
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 7.5,
                                                  "sampler_name": "euler", "scheduler": "normal",
                                                  "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage" if save else "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if save:
        wf["7"]["inputs"]["filename_prefix"] = "bench"
    return wf


def make_env(models_dir: Path, io: Path, dtype: str = "fp32", extra=None):
    from engine.context import Env
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore

    return Env(input_dir=io / "in", output_dir=io / "out", temp_dir=io / "tmp", models_dir=models_dir,
               model_store_factory=lambda e: ModelStore(ModelFolders(e.models_dir, extra), device="cpu", dtype=dtype))


def bare_loop(unet, te, tok, sched_config, seed: int, steps: int, size: int = 64):
    """The reference: a plain diffusers denoise loop (what a pipeline does, minus its bookkeeping)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    dt = next(unet.parameters()).dtype
    with torch.no_grad():
        ids = tok([PROMPT, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        emb = te(ids)[0]
        emb = torch.cat([emb[1:], emb[:1]])  # uncond, cond
        t_enc = time.perf_counter()
        sched = EulerDiscreteScheduler.from_config({**sched_config, "timestep_spacing": "linspace", "steps_offset": 0})
        sched.set_timesteps(steps)
        x = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(seed))
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            xin = sched.scale_model_input(torch.cat([x] * 2), t)
            eps = unet(xin.to(dt), t, encoder_hidden_states=emb.to(dt), return_dict=False)[0].float()
            u, c = eps.chunk(2)
            x = sched.step(u + 7.5 * (c - u), t, x, return_dict=False)[0]
    return x, time.perf_counter() - t_enc


def core_overhead(reps: int, steps: int = 20) -> dict:
    """The sampling core (sampling.ksampler.run: model sampling, CFG, euler, callbacks) around the tiny UNet vs
    the same UNet calls made directly in a loop, 1 thread, 64x64 (latent 8x8, CFG batch 2). Ratio = core / direct."""
    import torch

    from sampling.guidance import GuidedDenoiser
    from sampling.ksampler import run
    from sampling.model_sampling import Discrete
    from sampling.schedulers import ksampler_sigmas
    from tests.tiny_sd import build_tiny_sd1

    torch.set_num_threads(1)
    unet = build_tiny_sd1()[0].eval()
    dim = unet.config.cross_attention_dim
    emb = torch.randn(2, 77, dim, generator=torch.manual_seed(0))
    ms = Discrete()
    sigmas = ksampler_sigmas(ms, "normal", "euler", steps)
    noise = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(1))

    def predict(x, sigma):
        xin = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma)
        out = unet(torch.cat([xin, xin]), torch.cat([t, t]), encoder_hidden_states=emb, return_dict=False)[0]
        u, c = out.chunk(2)  # as nodes/sampler_core does: one batched call, x0 per half
        return ms.calculate_denoised(sigma, c, x), ms.calculate_denoised(sigma, u, x)

    def core():
        t0 = time.perf_counter()
        run(GuidedDenoiser(predict, 7.5, model_sampling=ms), ms, "euler", sigmas, torch.zeros(1, 4, 8, 8), noise, 0,
            callback=lambda *a: None)
        return time.perf_counter() - t0

    def direct():
        x = torch.cat([noise, noise])
        t = torch.tensor([999, 999])
        t0 = time.perf_counter()
        for _ in range(steps):
            unet(x, t, encoder_hidden_states=emb, return_dict=False)
        return time.perf_counter() - t0

    in_unet = [0.0, 0.0]
    unet.register_forward_pre_hook(lambda *a: in_unet.__setitem__(1, time.perf_counter()))
    unet.register_forward_hook(lambda *a: in_unet.__setitem__(0, in_unet[0] + time.perf_counter() - in_unet[1]))
    with torch.no_grad():
        core(), direct()
        c, d, c_out, d_out, d_in = [], [], [], [], []
        for _ in range(reps):  # interleaved, so machine load hits both alike
            in_unet[0] = 0.0
            c.append(core())
            c_out.append(c[-1] - in_unet[0])  # time the core spends outside the UNet forward: load-robust
            in_unet[0] = 0.0
            d.append(direct())
            d_out.append(d[-1] - in_unet[0])  # the direct loop's own outside time (module call, hooks, loop)
            d_in.append(in_unet[0])
    ratio = statistics.median([a / b for a, b in zip(c, d)])
    out_ms = statistics.median(c_out) / steps * 1000
    base_ms = statistics.median(d_out) / steps * 1000
    unet_ms = statistics.median(d) / steps * 1000
    added_ms = out_ms - base_ms
    return {"core_ms_per_step": round(statistics.median(c) / steps * 1000, 3),
            "direct_unet_ms_per_step": round(unet_ms, 3),
            "core_over_direct_ratio_wall": round(ratio, 4),
            "core_outside_unet_ms_per_step": round(out_ms, 3),
            "direct_outside_unet_ms_per_step": round(base_ms, 3),
            "core_added_ms_per_step": round(added_ms, 3),
            # the figure for the 1% target: what the core adds outside the network, per UNet step
            "core_overhead_pct": round(added_ms / unet_ms * 100, 2),
            "core_overhead_pct_outside_unet": round(out_ms / unet_ms * 100, 2)}


def tiny_bench(reps: int) -> dict:
    import torch

    from engine.executor import Executor
    from nodes import default_registry
    from tests.nodes.conftest import build_tiny_sd1, save_checkpoint

    out = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "models" / "checkpoints").mkdir(parents=True)
        save_checkpoint(d / "models" / "checkpoints" / "tiny.safetensors", *build_tiny_sd1())
        env = make_env(d / "models", d)
        ex = Executor(default_registry(), env)
        torch.set_num_threads(1)
        steps = 20
        ex.run(workflow("tiny.safetensors", 0, steps))  # warm: loads, encodes, first-call costs
        m, c, _ = env.model_store().load_checkpoint("tiny.safetensors")
        unet, tenc = m.get(), c.get()
        cfg = dict(m.meta["scheduler_config"])
        bare_loop(unet, tenc.encoders[0], tenc.tokenizers[0], cfg, 0, steps)
        loom_t, bare_t, loom_out, bare_out = [], [], [], []
        in_unet = [0.0, 0.0]
        pre = unet.register_forward_pre_hook(lambda *a: in_unet.__setitem__(1, time.perf_counter()))
        post = unet.register_forward_hook(lambda *a: in_unet.__setitem__(0, in_unet[0] + time.perf_counter() - in_unet[1]))
        for i in range(reps):  # interleaved so machine load affects both alike
            ev = []
            in_unet[0] = 0.0
            ex.run(workflow("tiny.safetensors", 1000 + i, steps), sink=ev.append)
            loom_t.append(next(e.data["duration_ms"] for e in ev if e.type == "node_done"
                               and e.data["class_type"] == "KSampler") / 1000)
            loom_out.append(loom_t[-1] - in_unet[0])
            in_unet[0] = 0.0
            bare_t.append(bare_loop(unet, tenc.encoders[0], tenc.tokenizers[0], cfg, 1000 + i, steps)[1])
            bare_out.append(bare_t[-1] - in_unet[0])
        pre.remove()
        post.remove()
        # time outside the UNet forward (scheduler, CFG, noise, events, engine bookkeeping): robust to load noise,
        # which mostly lands inside the UNet's kernels
        out["outside_unet_ms_per_step_loom"] = round(statistics.median(loom_out) / steps * 1000, 3)
        out["outside_unet_ms_per_step_bare"] = round(statistics.median(bare_out) / steps * 1000, 3)
        out["engine_overhead_pct_outside_unet"] = round(
            (statistics.median(loom_out) - statistics.median(bare_out)) / statistics.median(bare_t) * 100, 2)
        lm, bm = statistics.median(loom_t), statistics.median(bare_t)
        out["tiny_1thread_bare_ms_per_step"] = round(bm / steps * 1000, 2)
        out["tiny_1thread_ksampler_ms_per_step"] = round(lm / steps * 1000, 2)
        out["engine_overhead_pct"] = round((lm / bm - 1) * 100, 2)
        out["engine_overhead_pct_min"] = round((min(loom_t) / min(bare_t) - 1) * 100, 2)
        out["engine_overhead_pct_paired_median"] = round((statistics.median(
            [a / b for a, b in zip(loom_t, bare_t)]) - 1) * 100, 2)
        # a whole 20-step 64x64 txt2img on 2 threads (models loaded; encode+sample+decode+save)
        torch.set_num_threads(2)
        ex.run(workflow("tiny.safetensors", 1, steps, save=True))
        runs = []
        for i in range(max(3, reps // 3)):
            ex.free()  # drop cached outputs so the text encoders run again too
            t = time.perf_counter()
            r = ex.run(workflow("tiny.safetensors", 2000 + i, steps, save=True))
            runs.append(time.perf_counter() - t)
            assert r.status == "success"
        out["tiny_2threads_20step_64px_workflow_s"] = round(statistics.median(runs), 3)
    return out


def sd15_bench(dtype: str, steps: int) -> dict:
    """Runs in its own process: per-step KSampler time on the full-size random SD1.5 checkpoint."""
    import resource

    import torch

    from engine.executor import Executor
    from nodes import default_registry

    torch.set_num_threads(int(os.environ.get("LOOM_BENCH_THREADS", "2")))
    models = Path(os.environ["LOOM_SD15_DIR"])
    with tempfile.TemporaryDirectory() as d:
        env = make_env(models, Path(d), dtype)
        ex = Executor(default_registry(), env)
        t = time.perf_counter()
        m, c, v = env.model_store().load_checkpoint("sd15-random.safetensors")
        m.get(), c.get()
        load_s = time.perf_counter() - t
        wf = workflow("sd15-random.safetensors", 0, steps)
        ex.run(wf)  # warm-up (first-call costs, VAE load)
        per = []
        for seed in (1, 2):
            ev = []
            wf["5"]["inputs"]["seed"] = seed
            assert ex.run(wf, sink=ev.append).status == "success"
            ks = next(e for e in ev if e.type == "node_done" and e.data["class_type"] == "KSampler")
            per.append(ks.data["duration_ms"] / 1000 / steps)
        te = c.get()
        bare = min(bare_loop(m.get(), te.encoders[0], te.tokenizers[0], dict(m.meta["scheduler_config"]), s, steps)[1]
                   for s in (1, 2)) / steps
        return {"dtype": dtype, "threads": torch.get_num_threads(), "load_unet_clip_s": round(load_s, 1), "sec_per_step_64px": round(min(per), 3),
                "bare_diffusers_sec_per_step_64px": round(bare, 3),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--sd15", action="store_true", help="also benchmark the full-size random SD1.5 checkpoint")
    ap.add_argument("--sd15-dir", default="/tmp/loom-bench/fp16", help="load_sd15.py's models dir (made if missing)")
    ap.add_argument("--sd15-steps", type=int, default=4)
    ap.add_argument("--core-only", action="store_true", help="only the sampling core vs direct UNet calls")
    ap.add_argument("--_sd15", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._sd15:
        return print(json.dumps(sd15_bench(a._sd15, a.sd15_steps)))
    print(json.dumps(core_overhead(a.reps * 3)))
    if a.core_only:
        return
    res = tiny_bench(a.reps)
    print(json.dumps(res))
    if a.sd15:
        ckpt = Path(a.sd15_dir) / "checkpoints" / "sd15-random.safetensors"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOM_SD15_DIR": a.sd15_dir}
        if not ckpt.exists():
            subprocess.run([sys.executable, str(ROOT / "bench" / "load_sd15.py"), "--file-dtype", "fp16",
                            "--_make", str(ckpt)], check=True, env=env)
        for dt in ("fp32", "bf16"):
            r = subprocess.run([sys.executable, __file__, "--_sd15", dt, "--sd15-steps", str(a.sd15_steps)],
                               env=env, capture_output=True, text=True)
            print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"sd15 {dt} failed: {r.stderr[-800:]}")


if __name__ == "__main__":
    main()
