"""LoRA on the transformer families (FLUX.1, SD3, Z-Image), on tiny random models in their real single-file layouts
(tests/tiny_families.py) and tiny random LoRA files written here in the formats found in the wild:
ComfyUI's original layout (``diffusion_model.<file key>`` with lora_up/lora_down/alpha or lora_A/lora_B), kohya
(``lora_unet_<file key with _>``, ``lora_te1_`` for CLIP-L) and diffusers/PEFT (``transformer.<diffusers module>``).

The expected weights are written out by hand per family here (which diffusers weight holds which rows of a fused
file weight), independently of modelstore/families/lora.py, which derives them from the loader's converter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests import tiny_families as tf

R = 4


def _rnd(g, *shape):
    return torch.randn(*shape, generator=g) * 0.2


def _pair(sd, name, out_f, in_f, g, style="kohya", alpha=None):
    """Add one LoRA module to ``sd``; returns (up, down, scale)."""
    up, down = _rnd(g, out_f, R), _rnd(g, R, in_f)
    if style == "kohya":
        sd[name + ".lora_up.weight"], sd[name + ".lora_down.weight"] = up, down
    else:
        sd[name + ".lora_B.weight"], sd[name + ".lora_A.weight"] = up, down
    if alpha is not None:
        sd[name + ".alpha"] = torch.tensor(float(alpha))
    return up, down, (alpha / R if alpha is not None else 1.0)


def _store(root):
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore

    return ModelStore(ModelFolders(root), device="cpu", dtype="fp32")


def _dm(store, root, name):
    from modelstore.families.store import load_diffusion_model

    return load_diffusion_model(store, root / "diffusion_models" / name, name)


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _save_lora(root, name, sd):
    tf.save(sd, root / "loras" / name)
    return name


# ---------------------------------------------------------------------------------------------- FLUX.1 formats
def flux_loras(g, d=64, mlp=256):
    """Three LoRA files for the tiny FLUX.1 (width d = 64, 1 double + 2 single blocks), one per format, and the
    expected change of each diffusers weight at strength 1 ({name: {diffusers weight: delta}})."""
    exp = {}
    # (a) ComfyUI / original layout: fused qkv (rows q|k|v) and linear1 (rows q|k|v|mlp), lora_A/B without alpha
    a = {}
    up, down, s = _pair(a, "diffusion_model.double_blocks.0.img_attn.qkv", 3 * d, d, g, alpha=2)
    full = s * up @ down
    ea = {f"transformer_blocks.0.attn.to_{c}.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")}
    up, down, s = _pair(a, "diffusion_model.single_blocks.1.linear1", 3 * d + mlp, d, g, style="peft")
    full = s * up @ down
    ea.update({f"single_transformer_blocks.1.attn.to_{c}.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")})
    ea["single_transformer_blocks.1.proj_mlp.weight"] = full[3 * d:]
    exp["flux-comfy.safetensors"] = (a, ea)
    # (b) kohya: lora_unet_<file key>; the final adaLN (shift, scale in the file; diffusers holds scale, shift)
    b = {}
    up, down, s = _pair(b, "lora_unet_double_blocks_0_txt_attn_qkv", 3 * d, d, g, alpha=8)
    full = s * up @ down
    eb = {f"transformer_blocks.0.attn.add_{c}_proj.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")}
    up, down, s = _pair(b, "lora_unet_final_layer_adaLN_modulation_1", 2 * d, d, g, alpha=4)
    full = s * up @ down
    eb["norm_out.linear.weight"] = torch.cat([full[d:], full[:d]])
    up, down, s = _pair(b, "lora_unet_double_blocks_0_img_mlp_0", 4 * d, d, g, alpha=1)
    eb["transformer_blocks.0.ff.net.0.proj.weight"] = s * up @ down
    exp["flux-kohya.safetensors"] = (b, eb)
    # (c) diffusers / PEFT: q, k, v separately on the diffusers modules
    c = {}
    ec = {}
    for mod in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "single_transformer_blocks.0.attn.to_v",
                "transformer_blocks.0.ff_context.net.2"):
        shape = (d, mlp) if "net.2" in mod else (d, d)
        up, down, s = _pair(c, "transformer." + mod, shape[0], shape[1], g, style="peft")
        ec[mod + ".weight"] = up @ down
    exp["flux-peft.safetensors"] = (c, ec)
    return exp


@pytest.fixture(scope="module")
def flux_lora_files(family_models):
    root, _ = family_models
    exp = flux_loras(torch.Generator().manual_seed(11))
    for name, (sd, _) in exp.items():
        _save_lora(root, name, sd)
    return exp


def _check(patched, base, expected, strength):
    """Every weight equals base + strength * expected delta; all others unchanged."""
    for k, w in patched.items():
        want = base[k] + strength * expected[k] if k in expected else base[k]
        assert torch.allclose(w, want, atol=1e-5), (k, (w - want).abs().max())
    assert set(expected) <= set(patched)


@pytest.mark.parametrize("fmt", ["flux-comfy.safetensors", "flux-kohya.safetensors", "flux-peft.safetensors"])
def test_flux_lora_formats_patch_exact_weights(family_models, flux_lora_files, fmt):
    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    pm, _ = store.load_lora(ref, None, fmt, 0.7, 0.0)
    got = pm.get()
    _check(_weights(got), base, flux_lora_files[fmt][1], 0.7)
    assert got._loom_lora_unmatched == [] and got._loom_lora_applied == len(
        {k.rsplit(".", 2)[0] for k in flux_lora_files[fmt][0] if not k.endswith("alpha")})
    assert _weights(ref.get()).keys() == base.keys()
    assert all(torch.equal(v, base[k]) for k, v in _weights(ref.get()).items())  # base not mutated


def test_strength_negative_zero_chain_and_cache_keys(family_models, flux_lora_files):
    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    assert store.load_lora(ref, None, "flux-kohya.safetensors", 0.0, 0.0)[0] == ref    # strength 0: the same model
    neg, _ = store.load_lora(ref, None, "flux-kohya.safetensors", -1.5, 0.0)
    _check(_weights(neg.get()), base, flux_lora_files["flux-kohya.safetensors"][1], -1.5)
    # two LoraLoaders in a chain compose; the key names both files and strengths
    one, _ = store.load_lora(ref, None, "flux-comfy.safetensors", 0.5, 0.0)
    two, _ = store.load_lora(one, None, "flux-peft.safetensors", 2.0, 0.0)
    e1, e2 = flux_lora_files["flux-comfy.safetensors"][1], flux_lora_files["flux-peft.safetensors"][1]
    both = {k: 0.5 * e1.get(k, 0) + 2.0 * e2.get(k, 0) for k in set(e1) | set(e2)}
    _check(_weights(two.get()), base, both, 1.0)
    keys = {ref.key, neg.key, one.key, two.key, store.load_lora(ref, None, "flux-comfy.safetensors", 0.6, 0.0)[0].key,
            store.load_lora(ref, None, "flux-peft.safetensors", 0.5, 0.0)[0].key}
    assert len(keys) == 6
    assert all(torch.equal(v, base[k]) for k, v in _weights(ref.get()).items())


def test_flux_lora_matches_diffusers_conversion(family_models, flux_lora_files):
    """diffusers' own LoRA conversion (FluxPipeline.lora_state_dict: kohya -> transformer.<module>.lora_A/B with
    alpha folded in) applied as W + s * B @ A gives the same weights as Loom's patch. (single_blocks.N.linear1 is
    left out: diffusers' converter splits it with FLUX.1's full widths, 3072/12288 rows, hard-coded; the final
    layer has no alpha here: diffusers' converter drops a final_layer alpha, ComfyUI and Loom apply it.)"""
    from diffusers import FluxPipeline

    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    g = torch.Generator().manual_seed(3)
    sd, d = {}, 64
    for name, shape in (("double_blocks_0_img_attn_qkv", (3 * d, d)), ("double_blocks_0_txt_mlp_2", (d, 4 * d)),
                        ("single_blocks_0_modulation_lin", (3 * d, d)), ("single_blocks_1_linear2", (d, 5 * d)),
                        ("final_layer_adaLN_modulation_1", (2 * d, d)), ("double_blocks_0_img_mod_lin", (6 * d, d))):
        _pair(sd, "lora_unet_" + name, shape[0], shape[1], g, alpha=None if name.startswith("final") else 3)
    _save_lora(root, "flux-kohya-eq.safetensors", sd)
    conv = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
    conv = conv[0] if isinstance(conv, tuple) else conv
    exp = {}
    for k, a in conv.items():
        if k.endswith(".lora_A.weight"):
            mod = k.removeprefix("transformer.")[:-len(".lora_A.weight")]  # (norm_out comes without it)
            exp[mod + ".weight"] = exp.get(mod + ".weight", 0) + conv[k.replace("lora_A", "lora_B")] @ a
    pm, _ = store.load_lora(ref, None, "flux-kohya-eq.safetensors", 0.8, 0.0)
    got = _weights(pm.get())
    diffs = {k: (got[k] - (base[k] + 0.8 * e)).abs().max().item() for k, e in exp.items()}
    diff = max(diffs.values())
    assert len(exp) == 8 and diff < 1e-5, diffs
    print(f"FLUX.1 kohya LoRA vs diffusers lora_state_dict conversion: {len(exp)} weights, max abs diff {diff:.2e}")


# ---------------------------------------------------------------------------------------------- SD3 / Z-Image
def sd3_lora(g, d=128):
    """Original-layout fused qkv of the x block, kohya context mlp, PEFT to_out of the x block."""
    sd, exp = {}, {}
    up, down, s = _pair(sd, "diffusion_model.joint_blocks.1.x_block.attn.qkv", 3 * d, d, g, alpha=2)
    full = s * up @ down
    exp.update({f"transformer_blocks.1.attn.to_{c}.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")})
    up, down, s = _pair(sd, "lora_unet_joint_blocks_0_context_block_mlp_fc1", 4 * d, d, g, alpha=1)
    exp["transformer_blocks.0.ff_context.net.0.proj.weight"] = s * up @ down
    up, down, s = _pair(sd, "transformer.transformer_blocks.1.attn.to_out.0", d, d, g, style="peft")
    exp["transformer_blocks.1.attn.to_out.0.weight"] = up @ down
    return sd, exp


@pytest.mark.parametrize("family", ["sd3", "zimage"])
def test_sd3_and_zimage_lora_exact(family_models, family):
    root, sets = family_models
    store = _store(root)
    name = {"sd3": "sd3.5_medium.safetensors", "zimage": "z_image_turbo_bf16.safetensors"}[family]
    ref = _dm(store, root, name)
    base = _weights(ref.get())
    g = torch.Generator().manual_seed(5)
    if family == "sd3":
        sd, exp = sd3_lora(g)
    else:
        sd, exp = {}, {}
        d = 64
        up, down, s = _pair(sd, "diffusion_model.layers.1.attention.qkv", 3 * d, d, g, alpha=8)
        full = s * up @ down
        exp.update({f"layers.1.attention.to_{c}.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")})
        ff = base["layers.0.feed_forward.w1.weight"].shape
        up, down, s = _pair(sd, "lora_unet_layers_0_feed_forward_w1", ff[0], ff[1], g, alpha=2)
        exp["layers.0.feed_forward.w1.weight"] = s * up @ down
        up, down, s = _pair(sd, "transformer.noise_refiner.0.attention.to_k", d, d, g, style="peft")
        exp["noise_refiner.0.attention.to_k.weight"] = up @ down
        # diffusers module names under ComfyUI's prefix, PEFT's adapter-named tensors (musubi/Z-Image trainers)
        up, down = _rnd(g, d, R), _rnd(g, R, d)
        sd["diffusion_model.layers.0.attention.to_v.lora_B.default.weight"] = up
        sd["diffusion_model.layers.0.attention.to_v.lora_A.default.weight"] = down
        exp["layers.0.attention.to_v.weight"] = up @ down
    _save_lora(root, f"{family}-lora.safetensors", sd)
    pm, _ = store.load_lora(ref, None, f"{family}-lora.safetensors", 1.25, 0.0)
    _check(_weights(pm.get()), base, exp, 1.25)
    assert pm.get()._loom_lora_applied == len(exp) - 2  # one fused qkv target = three diffusers weights


def test_flux_diff_and_bias_diff_keys(family_models):
    """Full-tensor updates as kohya/ComfyUI write them next to LoRA pairs: ``.diff_b`` (a bias; the fused qkv bias
    splits into to_q/to_k/to_v biases), ``.diff`` (a whole weight), a norm scale named by its full key."""
    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    g, d = torch.Generator().manual_seed(21), 64
    qkv_b, img_in, qn = _rnd(g, 3 * d), _rnd(g, *base["x_embedder.weight"].shape), _rnd(g, 32)
    sd = {"lora_unet_double_blocks_0_img_attn_qkv.diff_b": qkv_b, "diffusion_model.img_in.diff": img_in,
          "diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale.diff": qn}
    up, down, s = _pair(sd, "lora_unet_double_blocks_0_img_attn_qkv", 3 * d, d, g, alpha=2)
    full = s * up @ down
    exp = {f"transformer_blocks.0.attn.to_{c}.bias": qkv_b[i * d:(i + 1) * d] for i, c in enumerate("qkv")}
    exp.update({f"transformer_blocks.0.attn.to_{c}.weight": full[i * d:(i + 1) * d] for i, c in enumerate("qkv")})
    exp["x_embedder.weight"] = img_in
    exp["transformer_blocks.0.attn.norm_q.weight"] = qn
    _save_lora(root, "flux-diff.safetensors", sd)
    pm, _ = store.load_lora(ref, None, "flux-diff.safetensors", 0.5, 0.0)
    _check(_weights(pm.get()), base, exp, 0.5)
    assert pm.get()._loom_lora_unmatched == []


def test_flux_dora(family_models):
    """DoRA: W' = m * (W + dW) / ||W + dW|| (norm per output row for a (rows, 1) dora_scale, per input column for
    (1, cols)), applied at strength s as W + s (W' - W); the row norm of a fused qkv spans its three diffusers
    weights' rows, the column norm of img_mlp.2 (d, 4d) is taken over the whole weight."""
    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    g, d, s_ = torch.Generator().manual_seed(31), 64, 0.6
    sd = {}
    up, down, sc = _pair(sd, "diffusion_model.double_blocks.0.img_attn.qkv", 3 * d, d, g, alpha=2)
    qkv = torch.cat([base[f"transformer_blocks.0.attn.to_{c}.weight"] for c in "qkv"])
    m_rows = 1.0 + _rnd(g, 3 * d, 1)
    sd["diffusion_model.double_blocks.0.img_attn.qkv.dora_scale"] = m_rows
    wc = qkv + sc * up @ down
    new_qkv = wc * m_rows / wc.norm(dim=1, keepdim=True)
    up, down, sc = _pair(sd, "lora_unet_double_blocks_0_img_mlp_2", d, 4 * d, g, alpha=4)
    w2 = base["transformer_blocks.0.ff.net.2.weight"]
    m_cols = 1.0 + _rnd(g, 1, 4 * d)
    sd["lora_unet_double_blocks_0_img_mlp_2.dora_scale"] = m_cols
    wc = w2 + sc * up @ down
    new_w2 = wc * m_cols / wc.norm(dim=0, keepdim=True)
    exp = {f"transformer_blocks.0.attn.to_{c}.weight": (new_qkv - qkv)[i * d:(i + 1) * d] for i, c in enumerate("qkv")}
    exp["transformer_blocks.0.ff.net.2.weight"] = new_w2 - w2
    _save_lora(root, "flux-dora.safetensors", sd)
    pm, _ = store.load_lora(ref, None, "flux-dora.safetensors", s_, 0.0)
    _check(_weights(pm.get()), base, exp, s_)
    assert pm.get()._loom_lora_unmatched == []


def test_flux_lycoris_loha_and_lokr(family_models):
    """LyCORIS: LoHa dW = (w1a w1b) * (w2a w2b) * alpha / rank; LoKr dW = kron(w1, w2a w2b) * alpha / rank(w2), here on
    the fused qkv (rows split into to_q/to_k/to_v)."""
    root, _ = family_models
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    base = _weights(ref.get())
    g, d = torch.Generator().manual_seed(41), 64
    n = "lora_unet_double_blocks_0_txt_mlp_0"
    h = {k: _rnd(g, *sh) for k, sh in (("hada_w1_a", (4 * d, 2)), ("hada_w1_b", (2, d)), ("hada_w2_a", (4 * d, 2)),
                                       ("hada_w2_b", (2, d)))}
    sd = {f"{n}.{k}": v for k, v in h.items()}
    sd[f"{n}.alpha"] = torch.tensor(1.0)
    loha = (h["hada_w1_a"] @ h["hada_w1_b"]) * (h["hada_w2_a"] @ h["hada_w2_b"]) * 0.5
    m = "diffusion_model.double_blocks.0.img_attn.qkv"
    w1, w2a, w2b = _rnd(g, 3, 4), _rnd(g, d, 2), _rnd(g, 2, 16)
    sd.update({f"{m}.lokr_w1": w1, f"{m}.lokr_w2_a": w2a, f"{m}.lokr_w2_b": w2b, f"{m}.alpha": torch.tensor(4.0)})
    lokr = torch.kron(w1, w2a @ w2b) * 2.0
    exp = {"transformer_blocks.0.ff_context.net.0.proj.weight": loha}
    exp.update({f"transformer_blocks.0.attn.to_{c}.weight": lokr[i * d:(i + 1) * d] for i, c in enumerate("qkv")})
    _save_lora(root, "flux-lycoris.safetensors", sd)
    pm, _ = store.load_lora(ref, None, "flux-lycoris.safetensors", 0.9, 0.0)
    _check(_weights(pm.get()), base, exp, 0.9)
    assert pm.get()._loom_lora_unmatched == [] and pm.get()._loom_lora_applied == 2


def test_lora_on_fp8_weights(family_models, flux_lora_files):
    """UNETLoader weight_dtype fp8_e4m3fn: the patched weights stay fp8 (W + s * delta, rounded once) and the
    patched copy computes with its own weights, not the base's."""
    from modelstore.families.store import load_diffusion_model

    root, _ = family_models
    store = _store(root)
    ref = load_diffusion_model(store, root / "diffusion_models" / "flux1-dev.safetensors", "f", "fp8_e4m3fn")
    base = _weights(ref.get())
    pm, _ = store.load_lora(ref, None, "flux-comfy.safetensors", 1.0, 0.0)
    got = _weights(pm.get())
    k = "transformer_blocks.0.attn.to_k.weight"
    assert got[k].dtype == torch.float8_e4m3fn
    want = (base[k].float() + flux_lora_files["flux-comfy.safetensors"][1][k]).to(torch.float8_e4m3fn)
    assert torch.equal(got[k].float(), want.float())
    lin_base = ref.get().module.transformer_blocks[0].attn.to_k
    lin_new = pm.get().module.transformer_blocks[0].attn.to_k
    x = torch.randn(2, 64)
    assert torch.allclose(lin_new(x), x @ got[k].float().T + lin_new.bias, atol=1e-5)
    assert not torch.allclose(lin_new(x), lin_base(x))


# ---------------------------------------------------------------------------------------------- text encoders
def test_lora_clip_l_on_split_and_all_in_one_flux(family_models):
    """lora_te1_ (kohya) keys patch the CLIP-L of a DualCLIPLoader's FamilyClip and of an all-in-one checkpoint;
    T5 is left as it is; the unet part of the same file patches the MODEL."""
    from modelstore.families.store import load_text_encoder, FamilyClip

    root, sets = family_models
    store = _store(root)
    g = torch.Generator().manual_seed(9)
    sd = {}
    l = sets["flux"]["clip_l"].text_model.encoder.layers[1].self_attn.q_proj
    up, down, s = _pair(sd, "lora_te1_text_model_encoder_layers_1_self_attn_q_proj", l.out_features, l.in_features, g,
                        alpha=2)
    dte = s * up @ down
    _pair(sd, "lora_unet_double_blocks_0_img_mlp_2", 64, 256, g, alpha=4)
    _pair(sd, "lora_te3_encoder_block_0_layer_0_SelfAttention_q", 128, 128, g)  # a T5 part: not applied, warned
    _save_lora(root, "flux-te.safetensors", sd)
    encs = tuple(load_text_encoder(store, root / "text_encoders" / n)
                 for n in ("clip_l.safetensors", "t5xxl_fp16.safetensors"))
    clip = FamilyClip("flux", encs, (), store)
    model = _dm(store, root, "flux1-dev.safetensors")
    warned = []
    pm, pc = store.load_lora(model, clip, "flux-te.safetensors", 1.0, 0.5, warn=warned.append)
    assert len(warned) == 1 and "t5" in warned[0] and "flux-te.safetensors" in warned[0], warned
    assert pc != clip and pc.ref("t5") == clip.ref("t5") and pc.ref("clip_l") != clip.ref("clip_l")
    w0 = clip.ref("clip_l").get().model.text_model.encoder.layers[1].self_attn.q_proj.weight.detach().clone()
    w1 = pc.ref("clip_l").get().model.text_model.encoder.layers[1].self_attn.q_proj.weight
    assert torch.allclose(w1, w0 + 0.5 * dte, atol=1e-6)
    assert pm.get()._loom_lora_applied == 1
    # the all-in-one checkpoint: MODEL and CLIP parts
    m, c, _ = store.load_checkpoint("flux1-dev-aio.safetensors")
    m2, c2 = store.load_lora(m, c, "flux-te.safetensors", 1.0, -1.0)
    enc = c.get().encoders[0]
    assert enc.kind == "clip_l"
    q0 = enc.model.text_model.encoder.layers[1].self_attn.q_proj.weight.detach().clone()
    q1 = c2.get().encoders[0].model.text_model.encoder.layers[1].self_attn.q_proj.weight
    assert torch.allclose(q1, q0 - dte, atol=1e-6)
    w = "transformer_blocks.0.ff.net.2.weight"
    assert not torch.equal(_weights(m2.get())[w], _weights(m.get())[w])
    assert torch.equal(_weights(pm.get())[w], _weights(m2.get())[w])  # the same file, the same patch


# ---------------------------------------------------------------------------------------------- bad input
def test_lora_of_another_family_is_refused_naming_file_and_keys(family_models, fam_exec):
    from modelstore.lora import LoraError

    root, _ = family_models
    g = torch.Generator().manual_seed(1)
    sd = {}
    _pair(sd, "lora_unet_down_blocks_0_attentions_0_proj_in", 32, 32, g)  # an SD-UNet LoRA
    _pair(sd, "lora_unet_mid_block_attentions_0_proj_out", 32, 32, g)
    _save_lora(root, "sdxl-style.safetensors", sd)
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    with pytest.raises(LoraError) as e:
        store.load_lora(ref, None, "sdxl-style.safetensors", 1.0, 0.0)
    msg = str(e.value)
    assert "sdxl-style.safetensors" in msg and "down_blocks_0_attentions_0_proj_in" in msg and "flux" in msg
    wf = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
          "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["unet", 0], "lora_name": "sdxl-style.safetensors",
                                                                    "strength_model": 1.0}},
          "show": {"class_type": "PreviewAny", "inputs": {"source": ["lora", 0]}}}
    r = fam_exec.run(wf)
    assert r.status == "error" and "sdxl-style.safetensors" in str(r.error), r.error


def test_lora_shape_mismatch_and_partial_match(family_models, caplog):
    from modelstore.lora import LoraError

    root, _ = family_models
    g = torch.Generator().manual_seed(2)
    bad = {}
    _pair(bad, "lora_unet_double_blocks_0_img_attn_proj", 64, 48, g)  # the weight is 64x64
    _save_lora(root, "flux-badshape.safetensors", bad)
    store = _store(root)
    ref = _dm(store, root, "flux1-dev.safetensors")
    with pytest.raises(LoraError) as e:  # refused from the header, at the loader, before any weight is read
        store.load_lora(ref, None, "flux-badshape.safetensors", 1.0, 0.0)
    msg = str(e.value)
    assert "flux-badshape.safetensors" in msg and "double_blocks.0.img_attn.proj" in msg and "(64, 64)" in msg \
        and "64x48" in msg
    part = {}
    _pair(part, "lora_unet_double_blocks_0_img_attn_proj", 64, 64, g)
    _pair(part, "lora_unet_no_such_block_linear", 64, 64, g)
    _save_lora(root, "flux-partial.safetensors", part)
    warnings = []
    pm, _ = store.load_lora(ref, None, "flux-partial.safetensors", 1.0, 0.0, warn=warnings.append)
    assert len(warnings) == 1 and "flux-partial.safetensors" in warnings[0] and "no_such_block_linear" in warnings[0]
    assert pm.get()._loom_lora_unmatched == ["no_such_block_linear"] and pm.get()._loom_lora_applied == 1


# ---------------------------------------------------------------------------------------------- end to end
def _wf(lora: float | None, prefix: str):
    wf = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                          "weight_dtype": "default"}},
          "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
          "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red circle"}},
          "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
          "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
          "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
          "ks": {"class_type": "KSampler", "inputs": {"model": ["unet", 0], "seed": 3, "steps": 2, "cfg": 1.0,
                                                      "sampler_name": "euler", "scheduler": "simple", "positive": ["p", 0],
                                                      "negative": ["n", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
          "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
          "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}}
    if lora is not None:
        wf["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["unet", 0], "lora_name": "zi-e2e.safetensors",
                                                                      "strength_model": lora}}
        wf["ks"]["inputs"]["model"] = ["lora", 0]
    return wf


def _img(env, prefix):
    files = sorted(env.output_dir.glob(f"{prefix}_*.png"))
    assert files, prefix
    return np.asarray(Image.open(files[-1])).astype(np.int16)


def test_workflow_unet_lora_ksampler(family_models, fam_env):
    """UNETLoader -> LoraLoaderModelOnly -> KSampler: a different image with the LoRA, the base image at strength 0
    and again without the LoRA afterwards (the store's base model is not mutated)."""
    from engine.executor import Executor
    from nodes import default_registry

    root, _ = family_models
    g = torch.Generator().manual_seed(4)
    sd = {}
    for i in range(2):
        _pair(sd, f"diffusion_model.layers.{i}.attention.qkv", 192, 64, g, alpha=R)
        _pair(sd, f"diffusion_model.layers.{i}.attention.out", 64, 64, g, alpha=R)
    _save_lora(root, "zi-e2e.safetensors", {k: v * 4 for k, v in sd.items() if "alpha" not in k} |
               {k: v for k, v in sd.items() if "alpha" in k})
    runs = [(None, "zbase"), (1.0, "zlora"), (0.0, "zzero"), (None, "zafter")]
    for strength, prefix in runs:
        r = Executor(default_registry(), fam_env).run(_wf(strength, prefix))
        assert r.status == "success", r.error
    base, lora, zero, after = (_img(fam_env, p) for _, p in runs)
    assert np.abs(base - lora).max() > 8
    assert np.array_equal(base, zero) and np.array_equal(base, after)


def test_workflow_lora_loader_on_flux_split_loaders(family_models, fam_env):
    """UNETLoader + DualCLIPLoader -> LoraLoader (model and CLIP-L patched) -> CLIPTextEncode / KSampler runs,
    changes the image, and reports the T5 keys it did not apply as a warning event of the LoraLoader node."""
    from engine.executor import Executor
    from nodes import default_registry

    root, _ = family_models
    g = torch.Generator().manual_seed(12)
    sd = {}
    _pair(sd, "lora_te1_text_model_encoder_layers_1_mlp_fc1", 128, 64, g, alpha=R)
    _pair(sd, "lora_unet_double_blocks_0_img_attn_proj", 64, 64, g, alpha=R)
    _pair(sd, "lora_te3_encoder_block_0_layer_0_SelfAttention_q", 128, 128, g)
    _save_lora(root, "flux-wf.safetensors", {k: v * (3 if "lora_up" in k else 1) for k, v in sd.items()})

    def wf(with_lora, prefix):
        m, c = (["lora", 0], ["lora", 1]) if with_lora else (["unet", 0], ["clip", 0])
        w = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
             "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                 "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
             "lora": {"class_type": "LoraLoader", "inputs": {"model": ["unet", 0], "clip": ["clip", 0],
                                                             "lora_name": "flux-wf.safetensors", "strength_model": 1.0,
                                                             "strength_clip": 1.0}},
             "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": c, "text": "a red circle"}},
             "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
             "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
             "ks": {"class_type": "KSampler", "inputs": {"model": m, "seed": 3, "steps": 2, "cfg": 1.0,
                                                         "sampler_name": "euler", "scheduler": "simple",
                                                         "positive": ["p", 0], "negative": ["p", 0],
                                                         "latent_image": ["lat", 0], "denoise": 1.0}},
             "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
             "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}}
        if not with_lora:
            del w["lora"]
        return w

    events = []
    ex = Executor(default_registry(), fam_env)
    r = ex.run(wf(False, "fbase"))
    assert r.status == "success", r.error
    r = ex.run(wf(True, "flora"), sink=events.append)
    assert r.status == "success", r.error
    warns = [e.data for e in events if e.type == "warning"]
    assert len(warns) == 1 and warns[0]["node"] == "lora" and "t5" in warns[0]["message"], warns
    assert np.abs(_img(fam_env, "fbase") - _img(fam_env, "flora")).max() > 4


def test_sd3_checkpoint_lora_patches_clip_g_and_model(family_models):
    """CheckpointLoaderSimple on an all-in-one SD3 file + a kohya LoRA with lora_te2_ (CLIP-G) and lora_unet_
    (fused context qkv of the last block) parts: both applied at their strengths, CLIP-L and T5 untouched."""
    root, sets = family_models
    store = _store(root)
    m, c, _ = store.load_checkpoint("sd3.5_medium_incl_clips.safetensors")
    g = torch.Generator().manual_seed(17)
    gl = sets["sd3"]["clip_g"].text_model.encoder.layers[3].self_attn.v_proj
    sd = {}
    up, down, s = _pair(sd, "lora_te2_text_model_encoder_layers_3_self_attn_v_proj", gl.out_features, gl.in_features, g,
                        alpha=1)
    dte = s * up @ down
    up, down, s = _pair(sd, "lora_unet_joint_blocks_1_context_block_attn_qkv", 3 * 128, 128, g, alpha=2)
    full = s * up @ down
    _save_lora(root, "sd3-te2.safetensors", sd)
    base_m, bundle = _weights(m.get()), c.get()
    kinds = [e.kind for e in bundle.encoders]
    before = {e.kind: {k: v.clone() for k, v in e.model.state_dict().items()} for e in bundle.encoders}
    m2, c2 = store.load_lora(m, c, "sd3-te2.safetensors", 0.75, 2.0)
    _check(_weights(m2.get()), base_m, {f"transformer_blocks.1.attn.add_{c_}_proj.weight": full[i * 128:(i + 1) * 128]
                                        for i, c_ in enumerate("qkv")}, 0.75)
    after = {e.kind: e.model.state_dict() for e in c2.get().encoders}
    assert [e.kind for e in c2.get().encoders] == kinds and "clip_g" in kinds
    key = "text_model.encoder.layers.3.self_attn.v_proj.weight"
    assert torch.allclose(after["clip_g"][key], before["clip_g"][key] + 2.0 * dte, atol=1e-6)
    for kind in kinds:
        for k, v in after[kind].items():
            if not (kind == "clip_g" and k == key):
                assert torch.equal(v, before[kind][k]), (kind, k)


def test_lora_on_sd_unet_file(family_models):
    """UNETLoader on an SD1 UNet-only file (LDM keys, no prefix) takes a kohya LoRA like the checkpoint's UNet
    (diffusers- and LDM-named targets)."""
    from tests.models.ldm_export import unet_to_ldm
    from tests.tiny_sd import build_tiny_sd1

    root, _ = family_models
    unet = build_tiny_sd1(seed=3)[0]
    p = "model.diffusion_model."
    tf.save({k[len(p):]: v for k, v in unet_to_ldm(unet).items()}, root / "diffusion_models" / "sd1_unet.safetensors")
    store = _store(root)
    ref = _dm(store, root, "sd1_unet.safetensors")
    assert ref.key.component == "sd_unet"
    g = torch.Generator().manual_seed(8)
    q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    pi = unet.down_blocks[0].attentions[0].proj_in
    sd = {}
    up, down, s = _pair(sd, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", q.out_features,
                        q.in_features, g, alpha=2)
    dq = s * up @ down
    sd["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = _rnd(g, pi.out_channels, R, 1, 1)
    sd["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = _rnd(g, R, pi.in_channels, 1, 1)
    dp = (sd["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"].flatten(1) @
          sd["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"].flatten(1)).reshape(pi.weight.shape)
    _save_lora(root, "sd1-unet-lora.safetensors", sd)
    base = {k: v.clone() for k, v in ref.get().state_dict().items()}
    pm, _ = store.load_lora(ref, None, "sd1-unet-lora.safetensors", -0.5, 0.0)
    got = pm.get().state_dict()
    kq, kp = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", "down_blocks.0.attentions.0.proj_in.weight"
    _check(got, base, {kq: dq, kp: dp}, -0.5)
    assert all(torch.equal(v, base[k]) for k, v in ref.get().state_dict().items())
    # a FLUX.1 LoRA on the SD UNet: nothing matches -> an error naming the file and keys, as on the flow families
    from modelstore.lora import LoraError

    flux_only = {}
    _pair(flux_only, "lora_unet_double_blocks_0_img_attn_qkv", 192, 64, g)
    _save_lora(root, "flux-on-sd.safetensors", flux_only)
    bad, _ = store.load_lora(ref, None, "flux-on-sd.safetensors", 1.0, 0.0)
    with pytest.raises(LoraError, match="flux-on-sd.safetensors.*double_blocks_0_img_attn_qkv"):
        bad.get()
