"""Qwen-Image on tiny files in ComfyUI's layouts (tests/tiny_families.py): the DiT (diffusers key names), Qwen2.5-VL
(original checkpoint layout, tokenizer under models/tokenizers/qwen25vl) and the VAE (Wan 2.1 layout). Loading is
exact, the VAE matches diffusers' AutoencoderKLQwenImage, ComfyUI's Qwen-Image template graph runs through the engine
to an image, and bad input is a clear error."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modelstore.families import store as fs
from modelstore.families.common import UnknownModelFile
from modelstore.families.text_encoders import MissingTokenizer
from tests.families.test_family_loading import _Ctx, _same, _store
from tests.families.test_family_txt2img import _check_image

DIT, TE, VAE = "qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image_vae.safetensors"


def test_files_load_exactly(family_models):
    root, sets = family_models
    o = sets["qwen_image"]
    st = _store(root)
    dm = fs.load_diffusion_model(st, root / "diffusion_models" / DIT, DIT)
    assert dm.meta["family"] == "qwen_image" and dm.meta["latent_channels"] == 16
    assert dm.meta["model_sampling"] == ("flux", 1.15, 1.0) and len(dm.meta["latents_std"]) == 16
    _same(dm.get().module, o["transformer"])
    kind, te = fs.load_text_encoder(st, root / "text_encoders" / TE)
    assert kind == "qwen25vl"
    _same(te.get().model, o["text_encoder"].model.language_model)  # visual.* and lm_head are not loaded
    vae = st.load_vae(VAE)
    assert vae.meta["layout"] == "wan"
    _same(vae.get().vae, o["vae"])


def test_vae_matches_diffusers(family_models):
    from nodes.vae import decode, encode

    root, sets = family_models
    ref = sets["qwen_image"]["vae"]
    vae = _store(root).load_vae(VAE)
    px = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    z = encode(vae, px)
    assert z.shape == (1, 16, 4, 6)
    with torch.no_grad():
        want = ref.encode(px.movedim(-1, 1)[:, :, None] * 2 - 1).latent_dist.mode()[:, :, 0]
        img = ref.decode(want[:, :, None]).sample[:, :, 0]
    d_enc = (z - want).abs().max().item()
    d_dec = (decode(vae, z) - (img / 2 + 0.5).clamp(0, 1).movedim(1, -1)).abs().max().item()
    print(f"\nQwen-Image VAE vs AutoencoderKLQwenImage: encode max abs diff {d_enc:.3g}, decode {d_dec:.3g}")
    assert d_enc < 1e-5 and d_dec < 1e-5


def _template(cfg=2.5, shift=3.1, size=64, prefix="qwenimg", sampler="euler"):
    """ComfyUI's Qwen-Image text-to-image template, in API form, at test size."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": TE, "type": "qwen_image", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "ms": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["unet", 0], "shift": shift}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red circle"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["ms", 0], "seed": 7, "steps": 3, "cfg": cfg,
                                                    "sampler_name": sampler, "scheduler": "simple",
                                                    "positive": ["p", 0], "negative": ["n", 0],
                                                    "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}},
    }


def test_template_txt2img_runs_to_an_image(fam_exec, fam_env):
    r = fam_exec.run(_template())
    assert r.status == "success", r.error
    _check_image(fam_env, "qwenimg", 64)


def test_shift_and_cfg_change_the_image(fam_exec, fam_env):
    """ModelSamplingAuraFlow's shift and the CFG scale reach the sampler (odd latent size 40/8 = 5: padded patches)."""
    outs = []
    for i, (cfg, shift) in enumerate([(2.5, 3.1), (2.5, 1.0), (1.0, 3.1)]):
        r = fam_exec.run(_template(cfg=cfg, shift=shift, size=40, prefix=f"qwvar{i}"))
        assert r.status == "success", r.error
        outs.append(_check_image(fam_env, f"qwvar{i}", 40).astype(float))
    assert np.abs(outs[0] - outs[1]).max() > 0 and np.abs(outs[0] - outs[2]).max() > 0


def test_empty_flux2_latent_shape():
    from nodes import default_registry

    out = default_registry().get("EmptyFlux2LatentImage")().run(None, 512, 256, 2)[0]["samples"]
    assert out.shape == (2, 128, 16, 32) and not out.any()


@pytest.mark.parametrize("node,args,words", [
    ("CLIPLoader", dict(clip_name="qwen_3_4b.safetensors", type="qwen_image"),
     ["qwen_image", "qwen25vl", "qwen_3_4b.safetensors (qwen3)"]),
    ("CLIPLoader", dict(clip_name=TE, type="lumina2"), ["lumina2", "qwen3", f"{TE} (qwen25vl)"])])
def test_wrong_encoder_for_type(fam_env, node, args, words):
    from nodes import default_registry

    with pytest.raises(ValueError) as e:
        default_registry().get(node)().run(_Ctx(fam_env), **args)
    for w in words:
        assert w in str(e.value)


def test_missing_tokenizer_names_both_folders(tmp_path, family_models):
    root = family_models[0]
    (tmp_path / "text_encoders").mkdir()
    shutil.copy(root / "text_encoders" / TE, tmp_path / "text_encoders" / TE)
    with pytest.raises(MissingTokenizer) as e:
        fs.load_text_encoder(_store(tmp_path), tmp_path / "text_encoders" / TE)
    msg = str(e.value)
    assert "qwen_2.5_vl_7b_fp8_scaled_tokenizer" in msg and str(tmp_path / "tokenizers" / "qwen25vl") in msg
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in msg


def test_unknown_file_lists_qwen_image(family_models, tmp_path):
    from tests.tiny_families import save

    save({"transformer_blocks.0.strange.weight": torch.zeros(2, 2)}, tmp_path / "odd.safetensors")
    with pytest.raises(UnknownModelFile) as e:
        fs.load_diffusion_model(_store(family_models[0]), tmp_path / "odd.safetensors", "odd.safetensors")
    msg = str(e.value)
    assert "transformer_blocks.0.strange.weight" in msg and "qwen_image" in msg and "txt_norm.weight" in msg


def test_text_encoder_offloaded_under_budget(family_models):
    """Per-component residency: a budget of one component keeps the DiT or the text encoder, never both."""
    root, _ = family_models
    st = _store(root, budget_bytes=1)
    _, te = fs.load_text_encoder(st, root / "text_encoders" / TE)
    dm = fs.load_diffusion_model(st, root / "diffusion_models" / DIT, DIT)
    te.get()
    assert [k.component for k, _, _ in st.loaded()] == ["family_te"]
    dm.get()
    assert [k.component for k, _, _ in st.loaded()] == ["family_dm"]


def test_lora_patches_exact_weights(family_models):
    """LoRA on Qwen-Image in three formats (ComfyUI ``diffusion_model.<key>`` with alpha, kohya ``lora_unet_``, PEFT
    ``transformer.``): the file keys are diffusers' names, so each targets one diffusers weight."""
    from tests.families.test_family_lora import _check, _dm, _pair, _save_lora, _weights

    root, _ = family_models
    st = _store(root)
    ref = _dm(st, root, DIT)
    base = _weights(ref.get())
    g = torch.Generator().manual_seed(9)
    d = 64
    sd, exp = {}, {}
    up, down, s = _pair(sd, "diffusion_model.transformer_blocks.0.attn.to_q", d, d, g, alpha=2)
    exp["transformer_blocks.0.attn.to_q.weight"] = s * up @ down
    ff = base["transformer_blocks.1.img_mlp.net.0.proj.weight"].shape
    up, down, s = _pair(sd, "lora_unet_transformer_blocks_1_img_mlp_net_0_proj", ff[0], ff[1], g, alpha=8)
    exp["transformer_blocks.1.img_mlp.net.0.proj.weight"] = s * up @ down
    up, down, s = _pair(sd, "transformer.transformer_blocks.0.attn.add_k_proj", d, d, g, style="peft")
    exp["transformer_blocks.0.attn.add_k_proj.weight"] = up @ down
    _save_lora(root, "qwen-lora.safetensors", sd)
    pm, _ = st.load_lora(ref, None, "qwen-lora.safetensors", 0.75, 0.0)
    _check(_weights(pm.get()), base, exp, 0.75)


def _scaled_fp8(sd: dict, skip=("embed", "norm", "visual.", "lm_head", "img_in", "txt_in", "proj_out")) -> tuple:
    """ComfyUI's scaled-fp8 form of ``sd``: 2D Linear weights as float8_e4m3fn / scale with a ``scale_weight`` (and a
    ``scale_input``), the ``scaled_fp8`` marker; and the weights a loader must recover (fp8 value x scale)."""
    out, want = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and not any(s in k for s in skip):
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            base = k[:-len(".weight")]
            out[k], out[base + ".scale_weight"], out[base + ".scale_input"] = q, scale.reshape(()), torch.ones(())
            want[k] = q.float() * scale
        else:
            out[k] = v
    return out, want


def test_scaled_fp8_files_load_dequantised(family_models, tmp_path):
    """The template's ``qwen_2.5_vl_7b_fp8_scaled`` form (and a scaled DiT): weights = fp8 x scale_weight."""
    from tests.tiny_families import qwen25vl_file, qwen_image_file, save

    root, sets = family_models
    o = sets["qwen_image"]
    (tmp_path / "text_encoders").mkdir()
    shutil.copytree(root / "tokenizers", tmp_path / "tokenizers")
    te_sd, te_want = _scaled_fp8(qwen25vl_file(o["text_encoder"]))
    dm_sd, dm_want = _scaled_fp8(qwen_image_file(o["transformer"]))
    assert te_want and dm_want
    save(te_sd, tmp_path / "text_encoders" / "te_scaled.safetensors")
    save(dm_sd, tmp_path / "dm_scaled.safetensors")
    st = _store(tmp_path)
    _, te = fs.load_text_encoder(st, tmp_path / "text_encoders" / "te_scaled.safetensors")
    got = te.get().model.state_dict()
    for k, w in te_want.items():
        assert torch.equal(got[k[len("model."):]], w), k
    dm = fs.load_diffusion_model(st, tmp_path / "dm_scaled.safetensors", "dm_scaled.safetensors").get().module
    got = dm.state_dict()
    assert all(torch.equal(got[k], w) for k, w in dm_want.items())


def test_low_denoise_keeps_the_latent(family_models):
    """img2img with the per-channel normalisation: at denoise 0.001 KSampler returns nearly the VAE latent it was
    given (raw latents in and out). The change shrinks with the noise level (0.006 here, 0.03 at denoise 0.005); a
    mean or std missing in one direction would move the latent by the mean (|mean| averages 0.55) or by
    (std - 1) x latent, whatever the denoise."""
    from nodes.family_encode import encode
    from nodes.sampling import KSampler
    from nodes.vae import encode as vae_encode

    root = family_models[0]
    st = _store(root)
    model = fs.load_diffusion_model(st, root / "diffusion_models" / DIT, DIT)
    clip = fs.FamilyClip("qwen_image", (fs.load_text_encoder(st, root / "text_encoders" / TE),), store=st)
    lat = vae_encode(st.load_vae(VAE), torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3)))
    ctx = type("Ctx", (), {"env": None, "progress": lambda *a, **k: None, "check_cancelled": lambda *a: None})()
    out = KSampler().run(ctx, model, 5, 2, 2.0, "euler", "simple", encode(clip, "red"), encode(clip, ""),
                         {"samples": lat}, 0.001)[0]["samples"]
    assert out.shape == lat.shape
    d = (out - lat).abs().mean().item()
    assert d < 0.02, d
