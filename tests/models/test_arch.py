"""Architecture detection and config inference: SD2-style (linear proj, head dim 64, OpenCLIP), SDXL-style
(two text encoders, text_time embedding, per-level transformer depth), inpainting, v-prediction hints."""
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.folders import ModelFolders
from modelstore.models import ModelStore
from modelstore.plan import plan_checkpoint
from modelstore.tensorfile import CheckpointError, header_from_state_dict, read_header

from .ldm_export import clip_to_ldm, clip_to_openclip, unet_to_ldm, vae_to_ldm


def _vae():
    return AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()


def _clip(act, cls=CLIPTextModel, **kw):
    return cls(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=1, max_position_embeddings=77, hidden_act=act, **kw)).eval()


def _save(tmp_path, name, sd, metadata=None):
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "checkpoints" / name), metadata=metadata)
    return ModelStore(ModelFolders(tmp_path), device="cpu")


def test_sd2_style(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=[1, 2], use_linear_projection=True).eval()
    te, vae = _clip("gelu"), _vae()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_openclip(te, "cond_stage_model.model.", True)}
    store = _save(tmp_path, "sd2.safetensors", sd)
    (tmp_path / "checkpoints" / "sd2.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    model, clip, vref = store.load_checkpoint("sd2.safetensors")
    assert model.meta["arch"] == "sd2" and model.meta["prediction_type"] == "v_prediction"
    assert dict(model.meta["scheduler_config"])["prediction_type"] == "v_prediction"
    u, t = model.get(), clip.get()
    assert u.config.use_linear_projection and list(u.config.attention_head_dim) == [1, 2]
    assert t.encoders[0].config.hidden_act == "gelu" and t.encoders[0].config.num_hidden_layers == 2  # extra dropped
    assert t.tokenizers[0].pad_token == "!"
    x, ctx, ids = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64), torch.randint(0, 49408, (1, 77))
    with torch.no_grad():
        assert torch.equal(unet(x, 3, ctx).sample, u(x, 3, ctx).sample)
        assert torch.equal(te(ids)[0], t.encoders[0](ids)[0])
        assert torch.equal(vae.decode(x).sample, vref.get().decode(x).sample)


def test_sdxl_style(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
                                transformer_layers_per_block=[1, 2], attention_head_dim=[1, 2],
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=64 + 6 * 256).eval()
    te1, te2, vae = _clip("quick_gelu"), _clip("gelu", CLIPTextModelWithProjection, projection_dim=64), _vae()
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae),
          **clip_to_ldm(te1, "conditioner.embedders.0.transformer.text_model."),
          **clip_to_openclip(te2, "conditioner.embedders.1.model.", False)}
    store = _save(tmp_path, "xl.safetensors", sd)
    model, clip, vref = store.load_checkpoint("xl.safetensors")
    assert model.meta["arch"] == "sdxl" and model.meta["scaling_factor"] == 0.13025
    assert vref.get().config.scaling_factor == 0.13025
    u, t = model.get(), clip.get()
    assert list(u.config.transformer_layers_per_block) == [1, 2] and u.config.addition_embed_type == "text_time"
    assert [type(e).__name__ for e in t.encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    x, ctx, ids = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 128), torch.randint(0, 49408, (1, 77))
    cond = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        assert torch.equal(unet(x, 3, ctx, added_cond_kwargs=cond).sample, u(x, 3, ctx, added_cond_kwargs=cond).sample)
        assert torch.equal(te1(ids)[0], t.encoders[0](ids)[0])
        assert torch.equal(te2(ids).text_embeds, t.encoders[1](ids).text_embeds)


def _header(sd, metadata=None, path="/nonexistent/x.safetensors"):
    h = header_from_state_dict(path, sd)
    h.metadata = metadata or {}
    return h


def test_inpaint_and_hints(tiny_sd1):
    unet, vae, te = tiny_sd1
    sd = {**unet_to_ldm(unet), **clip_to_ldm(te)}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    plan = plan_checkpoint(_header(sd))
    assert plan.inpaint and plan.unet["in_channels"] == 9 and plan.vae is None
    assert plan.unet["layers_per_block"] == 2 and plan.unet["block_out_channels"] == [32, 64, 64]
    assert plan.prediction_type == "epsilon"
    for meta in ({"modelspec.prediction_type": "v"}, {"ss_v_parameterization": "True"}):
        assert plan_checkpoint(_header(sd, meta)).prediction_type == "v_prediction"


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError):
        plan_checkpoint(read_header(p))
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        read_header(p)
