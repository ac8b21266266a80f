"""LoRA on FLUX.1: Loom's patch against diffusers' own PEFT path, and the key map at full size.
``PYTHONPATH=<dir with peft> python bench/family_lora.py`` (peft is not a Loom dependency: install it aside,
``pip install --target /tmp/peftenv --no-deps peft``; without it only the full-size figure is printed).

1. Full-size FLUX.1 dev shapes (19 double + 38 single blocks, width 3072; header only, no weights): the time to
   derive the file -> diffusers row map from the loader's converter, and a header check of a kohya LoRA naming
   every file weight.
2. A full-width FLUX.1 with 1 double + 1 single block (bf16, ~546M params): time and new bytes of a rank-16 LoRA
   on all 13 block Linears (a full FLUX.1 has 19 + 38 blocks).
3. The tiny FLUX.1 of tests/tiny_families.py with a kohya LoRA (fused qkv of both streams, mlp, modulations) and a
   diffusers/PEFT LoRA (to_q, to_k, to_v, proj_mlp, ff) at strength 0.8: Loom's patched weights and velocity against
   diffusers' ``FluxPipeline.lora_state_dict`` -> ``load_lora_adapter`` -> ``fuse_lora(lora_scale=0.8)`` on the
   same diffusers module (max abs differences).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, sys.path[0] is bench/, whose engine.py would shadow the engine package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402


def full_size_map():
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from modelstore.families import lora as fl, registry
    from tests import tiny_families as tf

    with init_empty_weights():
        m = FluxTransformer2DModel(guidance_embeds=True)
    shapes = {k: tuple(v.shape) for k, v in tf.flux_file(m).items()}
    plan = registry.detect(shapes)
    t = time.perf_counter()
    lay = fl.layout("flux", plan.config, shapes)
    dt = time.perf_counter() - t
    mods = [k[:-len(".weight")] for k, v in lay.file.items() if k.endswith(".weight") and len(v) >= 2]
    keys = [f"lora_unet_{k.replace('.', '_')}.lora_{r}.weight" for k in mods for r in ("up", "down")]
    t = time.perf_counter()
    warnings = fl.header_check(lay, "flux", keys, "all.safetensors")
    print(f"full-size FLUX.1: {len(shapes)} tensors; row map {dt:.2f} s ({len(lay.rows)} file tensors -> "
          f"{len(lay.diffusers)} diffusers tensors, {len(mods)} LoRA-able weights); header check of {len(keys)} LoRA keys "
          f"{time.perf_counter() - t:.3f} s, warnings {warnings}")


def patch_cost():
    """Patch time of a rank-16 LoRA on every block Linear of a full-width FLUX.1 with 1 double + 1 single block
    (random bf16 weights, built directly: no file), one thread."""
    import resource

    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from modelstore.families import lora as fl, registry
    from modelstore.families.flux import FluxDenoiser
    from tests import tiny_families as tf

    with init_empty_weights():
        meta = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    shapes = {k: tuple(v.shape) for k, v in tf.flux_file(meta).items()}
    m = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True).to(torch.bfloat16)
    den = FluxDenoiser(m, registry.detect(shapes))
    den.source_shapes = shapes
    g, r, sd = torch.Generator().manual_seed(0), 16, {}
    for k, s in shapes.items():
        if k.endswith(".weight") and len(s) == 2 and "blocks" in k:
            n = "lora_unet_" + k[:-len(".weight")].replace(".", "_")
            sd[n + ".lora_down.weight"] = torch.randn(r, s[1], generator=g, dtype=torch.bfloat16) * 0.01
            sd[n + ".lora_up.weight"] = torch.randn(s[0], r, generator=g, dtype=torch.bfloat16) * 0.01
    t = time.perf_counter()
    p = fl.patch_model(den, sd, 1.0, "bench")
    dt = time.perf_counter() - t
    print(f"full-width FLUX.1, 1 double + 1 single block ({sum(x.numel() for x in m.parameters()) / 1e6:.0f}M params "
          f"bf16): rank-16 LoRA on {p._loom_lora_applied} targets patched in {dt:.2f} s on one CPU thread, "
          f"{p._loom_own_bytes / 2**20:.0f} MiB of new weights, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def against_peft():
    from diffusers import FluxPipeline

    from engine.folders import ModelFolders
    from modelstore.families.store import load_diffusion_model
    from modelstore.models import ModelStore
    from tests import tiny_families as tf

    root = Path(tempfile.mkdtemp())
    tf.save(tf.flux_file(tf.tiny_flux()), root / "diffusion_models" / "f.safetensors")
    g, d, r = torch.Generator().manual_seed(1), 64, 4

    def pair(sd, n, o, i, alpha=None, kohya=True):
        sd[n + (".lora_up.weight" if kohya else ".lora_B.weight")] = torch.randn(o, r, generator=g) * .2
        sd[n + (".lora_down.weight" if kohya else ".lora_A.weight")] = torch.randn(r, i, generator=g) * .2
        if alpha:
            sd[n + ".alpha"] = torch.tensor(float(alpha))

    kohya, peft_sd = {}, {}
    for name, shape in (("double_blocks_0_img_attn_qkv", (3 * d, d)), ("double_blocks_0_txt_attn_qkv", (3 * d, d)),
                        ("double_blocks_0_img_mlp_0", (4 * d, d)), ("double_blocks_0_txt_mod_lin", (6 * d, d)),
                        ("single_blocks_1_linear2", (d, 5 * d)), ("single_blocks_0_modulation_lin", (3 * d, d))):
        pair(kohya, "lora_unet_" + name, *shape, alpha=2)
    for mod, shape in (("transformer_blocks.0.attn.to_q", (d, d)), ("transformer_blocks.0.attn.to_k", (d, d)),
                       ("single_transformer_blocks.1.attn.to_v", (d, d)),
                       ("single_transformer_blocks.0.proj_mlp", (4 * d, d)), ("transformer_blocks.0.ff.net.2", (d, 4 * d))):
        pair(peft_sd, "transformer." + mod, *shape, kohya=False)
    store = ModelStore(ModelFolders(root), device="cpu", dtype="fp32")
    ref = load_diffusion_model(store, root / "diffusion_models" / "f.safetensors", "f")
    x, sigma = torch.randn(1, 16, 16, 16), torch.tensor([0.7])
    cond = {"context": torch.randn(1, 8, 128), "pooled": torch.randn(1, 64), "guidance": torch.tensor([3.5])}
    for fmt, sd in (("kohya", kohya), ("peft", peft_sd)):
        tf.save(sd, root / "loras" / f"{fmt}.safetensors")
        patched = store.load_lora(ref, None, f"{fmt}.safetensors", 0.8, 0.0)[0].get()
        ours = patched.module.state_dict()
        theirs_m = tf.tiny_flux()  # the same seed: the file's weights
        conv = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
        conv = conv[0] if isinstance(conv, tuple) else conv
        theirs_m.load_lora_adapter(conv, prefix="transformer", adapter_name="x")
        theirs_m.fuse_lora(lora_scale=0.8)
        theirs_m.unload_lora()
        theirs = theirs_m.state_dict()
        base = ref.get().module.state_dict()
        wdiff = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        changed = sum(not torch.equal(ours[k], base[k]) for k in ours)
        with torch.no_grad():
            a = patched.velocity(x, sigma, cond)
            own = patched.module
            patched.__dict__["_modules"]["module"] = theirs_m
            b = patched.velocity(x, sigma, cond)
            patched.__dict__["_modules"]["module"] = own
            moved = (a - ref.get().velocity(x, sigma, cond)).abs().max().item()
        print(f"tiny FLUX.1, {fmt} LoRA at 0.8: {changed} diffusers weights changed; vs diffusers load_lora_adapter + "
              f"fuse_lora: weights max abs diff {wdiff:.2e}, velocity max abs diff {(a - b).abs().max().item():.2e} "
              f"(the LoRA moves the velocity by {moved:.3f})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    full_size_map()
    patch_cost()
    try:
        import peft  # noqa: F401
    except ImportError:
        print("peft not importable: skipping the comparison with diffusers' PEFT path")
    else:
        against_peft()
