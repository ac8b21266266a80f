"""Loom's diffusers->LDM exporter, checked against diffusers' own LDM->diffusers conversion."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from training import export  # noqa: E402


def _tiny(in_channels=4, levels=2, lpb=1, attn_all=True):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    down = ["CrossAttnDownBlock2D"] * levels if attn_all else ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"]
    up = ["CrossAttnUpBlock2D"] * levels if attn_all else ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=lpb,
        block_out_channels=(32, 64, 64)[:levels], down_block_types=tuple(down), up_block_types=tuple(up),
        cross_attention_dim=64, attention_head_dim=8).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=lpb,
                        block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=64, bos_token_id=49406, eos_token_id=49407,
                                      pad_token_id=49407)).eval()
    # perturb the norms/biases so a swapped key cannot hide behind identical init values
    with torch.no_grad():
        for m in (unet, vae, te):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return unet, vae, te


@pytest.mark.parametrize("levels,lpb,attn_all", [(2, 1, True), (3, 2, False)])
def test_roundtrip_identical_weights_and_outputs(levels, lpb, attn_all):
    unet, vae, te = _tiny(levels=levels, lpb=lpb, attn_all=attn_all)
    sd = export.to_ldm_state_dict(unet, vae, te)
    assert all(k.startswith((export.UNET_PREFIX, export.VAE_PREFIX, export.CLIP_PREFIX)) for k in sd)
    # LDM names, not diffusers names
    assert f"{export.UNET_PREFIX}input_blocks.0.0.weight" in sd
    assert f"{export.UNET_PREFIX}middle_block.1.proj_in.weight" in sd
    assert f"{export.VAE_PREFIX}encoder.mid.attn_1.q.weight" in sd
    assert sd[f"{export.VAE_PREFIX}decoder.mid.attn_1.proj_out.weight"].ndim == 4
    assert f"{export.CLIP_PREFIX}embeddings.token_embedding.weight" in sd
    assert not any("down_blocks" in k or "to_q" in k and "first_stage" in k for k in sd)
    # the diffusers model type detector sees an SD1 checkpoint
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    assert infer_diffusers_model_type(sd) == "v1"

    u2, v2, t2 = export.from_ldm_state_dict(sd)
    for a, b in ((unet, u2), (vae, v2), (te, t2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert dict(u2.config)["block_out_channels"] == tuple(unet.config.block_out_channels) or \
        list(u2.config["block_out_channels"]) == list(unet.config.block_out_channels)

    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    ids = torch.randint(0, 49408, (2, 77))
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        c1, c2 = te(ids)[0], t2(ids)[0]
        assert torch.equal(c1, c2)
        ctx = c1
        assert torch.equal(unet(x, 500, encoder_hidden_states=ctx).sample, u2(x, 500, encoder_hidden_states=ctx).sample)
        z1 = vae.encode(img).latent_dist.mean
        assert torch.equal(z1, v2.encode(img).latent_dist.mean)
        assert torch.equal(vae.decode(z1).sample, v2.decode(z1).sample)


def test_inpaint_variant_and_fp16_file(tmp_path):
    unet, vae, te = _tiny(in_channels=9)
    path = tmp_path / "m.safetensors"
    export.save_checkpoint(unet, vae, te, path, dtype=torch.float16, metadata={"a": 1})
    u2, v2, t2 = export.load_checkpoint(path)
    assert u2.config.in_channels == 9
    w = unet.state_dict()["conv_in.weight"]
    assert torch.equal(u2.state_dict()["conv_in.weight"], w.half().float())
    assert not torch.equal(w.half().float(), w)  # fp16 really rounded something


def test_converter_rejects_unknown_tensors():
    unet, vae, te = _tiny()
    sd = dict(unet.state_dict())
    sd["mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError):
        export.unet_to_ldm(sd, unet.config)
