"""Test helper: tiny random models of the transformer families, written in each family's real single-file layout.

Layouts written (what ComfyUI's split files hold; what Loom's loaders and diffusers' single-file converters read):
- Z-Image DiT: original Z-Image keys, no prefix (``z_image_turbo_bf16.safetensors``): fused ``attention.qkv``,
  ``attention.out``, ``q_norm``/``k_norm``, ``x_embedder``, ``final_layer``.
- FLUX.1 DiT: Black Forest Labs' keys, no prefix (``flux1-dev.safetensors``): ``double_blocks``/``single_blocks``
  with fused qkv and ``linear1`` = q|k|v|mlp, ``final_layer.adaLN_modulation.1`` as (shift, scale).
- SD3 MMDiT: Stability's keys, no prefix: ``joint_blocks.N.{x_block,context_block}``, fused qkv, ``pos_embed``.
- 16-channel VAE: LDM keys, no prefix (``ae.safetensors``): ``encoder.down.N.block.M``, ``decoder.up...``.
- Qwen-Image DiT: diffusers' own key names, no prefix (``qwen_image_fp8_e4m3fn.safetensors``; diffusers' single-file
  mapping for QwenImageTransformer2DModel is the identity).
- Qwen-Image VAE: the original Wan 2.1 VAE keys (``qwen_image_vae.safetensors``): ``encoder.conv1``,
  ``encoder.downsamples.N.residual.*``, ``encoder.middle.*``, ``encoder.head.*``, ``conv1``/``conv2``,
  ``decoder.upsamples.N``.
- Text encoders: transformers layouts as ComfyUI ships them: CLIP ``text_model.*`` (+ ``text_projection.weight``),
  T5 ``shared.weight`` + ``encoder.block.*``, Qwen3 ``model.*``, Qwen2.5-VL in its original checkpoint layout
  (``model.*`` language model, ``visual.*`` vision tower, ``lm_head.weight``).
The exporters here are written independently of modelstore/families (which converts the other way), so a load
through the store compared with the original diffusers module tests both.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.models.ldm_export import vae_to_ldm

PROMPTS = ["a red circle on a blue background", "low quality, bad anatomy", "anime RPG game style, cute anime "
           "girl with gigantic fennec ears and a big fluffy fox tail playing guitar at night", ""]
QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def randomize(module, seed: int, std: float = 0.08):
    """Fill every parameter with seeded noise (diffusers zero-inits adaLN/final layers, which would make the
    models predict zeros and the tests meaningless). Norm weights are kept near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g) * std
            p.copy_(1.0 + r if ("norm" in name and p.ndim == 1 and name.endswith("weight")) else r)
    return module.eval()


def save(sd: dict, path: Path, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path), metadata=metadata)


# ------------------------------------------------------------------------------------------------ tokenizers
def _bpe(specials: list[str], template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(PROMPTS * 4, tr)
    if template:
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return tok


def write_qwen_tokenizer(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": QWEN_CHAT, "model_max_length": 131072}))


def write_t5_tokenizer(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    _bpe(["<pad>", "</s>", "<unk>"], template="$A </s>").save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 512}))


# ------------------------------------------------------------------------------------------------ text encoders
def tiny_qwen3(seed=1):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, max_position_embeddings=40960,
                      rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, tie_word_embeddings=False)
    return randomize(Qwen3Model(cfg), seed, 0.2)


def qwen3_file(m) -> dict:
    return {"model." + k: v for k, v in m.state_dict().items()}


def tiny_t5(seed=2, d_model=128):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=400, d_model=d_model, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                   use_cache=False)
    return randomize(T5EncoderModel(cfg), seed, 0.2)


def t5_file(m) -> dict:
    return {k: v for k, v in m.state_dict().items() if k != "encoder.embed_tokens.weight"}


def tiny_clip(seed=3, layers=2, act="quick_gelu", pad=49407):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=1, max_position_embeddings=77, projection_dim=64, hidden_act=act,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=pad)
    return randomize(CLIPTextModelWithProjection(cfg), seed, 0.1)


def clip_file(m) -> dict:
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in m.state_dict().items() if not k.endswith("position_ids")}


# ------------------------------------------------------------------------------------------------ VAE
def tiny_vae16(seed=4, scaling=0.3611, shift=0.1159):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1,
                         block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=scaling, shift_factor=shift).eval()


# ------------------------------------------------------------------------------------------------ Z-Image
def tiny_zimage(seed=5):
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    m = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                                 n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=32, axes_dims=[4, 6, 6],
                                 axes_lens=[1024, 512, 512])
    return randomize(m, seed)


def zimage_file(m) -> dict:
    out = {}
    sd = m.state_dict()
    for k, v in sd.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        if ".attention.to_q." in k:
            base = k.replace(".attention.to_q.weight", "")
            out[base + ".attention.qkv.weight"] = torch.cat([sd[base + f".attention.to_{c}.weight"] for c in "qkv"])
            continue
        n = (k.replace("all_final_layer.2-1.", "final_layer.").replace("all_x_embedder.2-1.", "x_embedder.")
             .replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_k.", ".attention.k_norm.")
             .replace(".attention.norm_q.", ".attention.q_norm."))
        out[n] = v
    return out


# ------------------------------------------------------------------------------------------------ FLUX
def tiny_flux(seed=6, guidance=True, ctx_dim=128, pooled_dim=64):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    m = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=32,
                               num_attention_heads=2, joint_attention_dim=ctx_dim, pooled_projection_dim=pooled_dim,
                               guidance_embeds=guidance, axes_dims_rope=(4, 14, 14))
    return randomize(m, seed)


def flux_file(m) -> dict:
    sd = m.state_dict()
    out = {}

    def put(new, old):
        out[new] = sd[old]

    def swap(t):  # diffusers (scale, shift) -> BFL (shift, scale)
        a, b = t.chunk(2)
        return torch.cat([b, a])

    for p in ("weight", "bias"):
        for i, name in ((1, "in_layer"), (2, "out_layer")):
            put(f"time_in.{name}.{p}", f"time_text_embed.timestep_embedder.linear_{i}.{p}")
            put(f"vector_in.{name}.{p}", f"time_text_embed.text_embedder.linear_{i}.{p}")
            if m.config.guidance_embeds:
                put(f"guidance_in.{name}.{p}", f"time_text_embed.guidance_embedder.linear_{i}.{p}")
        put(f"txt_in.{p}", f"context_embedder.{p}")
        put(f"img_in.{p}", f"x_embedder.{p}")
        put(f"final_layer.linear.{p}", f"proj_out.{p}")
        out[f"final_layer.adaLN_modulation.1.{p}"] = swap(sd[f"norm_out.linear.{p}"])
        for i in range(m.config.num_layers):
            d, o = f"double_blocks.{i}.", f"transformer_blocks.{i}."
            put(d + f"img_mod.lin.{p}", o + f"norm1.linear.{p}")
            put(d + f"txt_mod.lin.{p}", o + f"norm1_context.linear.{p}")
            out[d + f"img_attn.qkv.{p}"] = torch.cat([sd[o + f"attn.to_{c}.{p}"] for c in "qkv"])
            out[d + f"txt_attn.qkv.{p}"] = torch.cat([sd[o + f"attn.add_{c}_proj.{p}"] for c in "qkv"])
            put(d + f"img_attn.proj.{p}", o + f"attn.to_out.0.{p}")
            put(d + f"txt_attn.proj.{p}", o + f"attn.to_add_out.{p}")
            for a, b in (("img_mlp", "ff"), ("txt_mlp", "ff_context")):
                put(d + f"{a}.0.{p}", o + f"{b}.net.0.proj.{p}")
                put(d + f"{a}.2.{p}", o + f"{b}.net.2.{p}")
        for i in range(m.config.num_single_layers):
            d, o = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
            put(d + f"modulation.lin.{p}", o + f"norm.linear.{p}")
            out[d + f"linear1.{p}"] = torch.cat([sd[o + f"attn.to_{c}.{p}"] for c in "qkv"] + [sd[o + f"proj_mlp.{p}"]])
            put(d + f"linear2.{p}", o + f"proj_out.{p}")
    for i in range(m.config.num_layers):
        d, o = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        put(d + "img_attn.norm.query_norm.scale", o + "attn.norm_q.weight")
        put(d + "img_attn.norm.key_norm.scale", o + "attn.norm_k.weight")
        put(d + "txt_attn.norm.query_norm.scale", o + "attn.norm_added_q.weight")
        put(d + "txt_attn.norm.key_norm.scale", o + "attn.norm_added_k.weight")
    for i in range(m.config.num_single_layers):
        d, o = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        put(d + "norm.query_norm.scale", o + "attn.norm_q.weight")
        put(d + "norm.key_norm.scale", o + "attn.norm_k.weight")
    return out


# ------------------------------------------------------------------------------------------------ SD3
def tiny_sd3(seed=7, ctx_dim=128, pooled_dim=128):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    m = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                              num_attention_heads=2, joint_attention_dim=ctx_dim, caption_projection_dim=128,
                              pooled_projection_dim=pooled_dim, out_channels=16, pos_embed_max_size=32)
    return randomize(m, seed)


def sd3_file(m) -> dict:
    sd = m.state_dict()
    n = m.config.num_layers
    out = {"pos_embed": sd["pos_embed.pos_embed"], "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
           "x_embedder.proj.bias": sd["pos_embed.proj.bias"]}

    def swap(t):
        a, b = t.chunk(2)
        return torch.cat([b, a])

    for p in ("weight", "bias"):
        for i, j in ((1, 0), (2, 2)):
            out[f"t_embedder.mlp.{j}.{p}"] = sd[f"time_text_embed.timestep_embedder.linear_{i}.{p}"]
            out[f"y_embedder.mlp.{j}.{p}"] = sd[f"time_text_embed.text_embedder.linear_{i}.{p}"]
        out[f"context_embedder.{p}"] = sd[f"context_embedder.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out.{p}"]
        out[f"final_layer.adaLN_modulation.1.{p}"] = swap(sd[f"norm_out.linear.{p}"])
        for i in range(n):
            o, d = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
            last = i == n - 1
            out[d + f"x_block.adaLN_modulation.1.{p}"] = sd[o + f"norm1.linear.{p}"]
            out[d + f"context_block.adaLN_modulation.1.{p}"] = (swap(sd[o + f"norm1_context.linear.{p}"]) if last
                                                                 else sd[o + f"norm1_context.linear.{p}"])
            out[d + f"x_block.attn.qkv.{p}"] = torch.cat([sd[o + f"attn.to_{c}.{p}"] for c in "qkv"])
            out[d + f"context_block.attn.qkv.{p}"] = torch.cat([sd[o + f"attn.add_{c}_proj.{p}"] for c in "qkv"])
            out[d + f"x_block.attn.proj.{p}"] = sd[o + f"attn.to_out.0.{p}"]
            out[d + f"x_block.mlp.fc1.{p}"] = sd[o + f"ff.net.0.proj.{p}"]
            out[d + f"x_block.mlp.fc2.{p}"] = sd[o + f"ff.net.2.{p}"]
            if not last:
                out[d + f"context_block.attn.proj.{p}"] = sd[o + f"attn.to_add_out.{p}"]
                out[d + f"context_block.mlp.fc1.{p}"] = sd[o + f"ff_context.net.0.proj.{p}"]
                out[d + f"context_block.mlp.fc2.{p}"] = sd[o + f"ff_context.net.2.{p}"]
    return out


# ------------------------------------------------------------------------------------------------ Qwen-Image
def tiny_qwen25vl(seed=12):
    """A tiny Qwen2.5-VL (language model 32 wide, 2 layers, head_dim 16; a 1-block vision tower)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=128000,
                         bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]))
    return randomize(Qwen2_5_VLForConditionalGeneration(cfg), seed, 0.2)


def qwen25vl_file(m) -> dict:
    """The original Qwen2.5-VL checkpoint keys: ``model.*`` (language model), ``visual.*``, ``lm_head.weight``."""
    out = {}
    for k, v in m.state_dict().items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.visual."):
            out["visual." + k[len("model.visual."):]] = v
        else:
            out[k] = v
    return out


def tiny_qwen_image(seed=13):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32,
                                    num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 14, 14))
    return randomize(m, seed)


def qwen_image_file(m) -> dict:
    return dict(m.state_dict())


def tiny_qwen_vae(seed=14):
    """AutoencoderKLQwenImage with the released structure (4 levels, 2 residual blocks) at base width 8."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2).eval()


_WAN_RES = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
            "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
            "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def qwen_vae_file(m) -> dict:
    """diffusers AutoencoderKLQwenImage -> the original Wan 2.1 VAE keys (ComfyUI's qwen_image_vae.safetensors)."""
    nrb = m.config.num_res_blocks
    out = {}
    for k, v in m.state_dict().items():
        parts = k.split(".")
        if k.startswith("quant_conv."):
            n = "conv1." + parts[-1]
        elif k.startswith("post_quant_conv."):
            n = "conv2." + parts[-1]
        elif parts[1] in ("conv_in", "conv_out", "norm_out"):
            n = {"conv_in": f"{parts[0]}.conv1", "conv_out": f"{parts[0]}.head.2",
                 "norm_out": f"{parts[0]}.head.0"}[parts[1]] + "." + parts[-1]
        elif parts[1] == "mid_block":  # resnets.0, attentions.0, resnets.1 -> middle.0, .1, .2
            i = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[2:4])]
            rest = ".".join(parts[4:])
            n = f"{parts[0]}.middle.{i}." + (_WAN_RES.get(rest, rest))
        elif parts[1] == "down_blocks":
            rest = ".".join(parts[3:])
            n = f"encoder.downsamples.{parts[2]}." + _WAN_RES.get(rest, rest)
        elif parts[1] == "up_blocks":  # flat list: each up block's resnets, then its upsampler
            b = int(parts[2])
            if parts[3] == "resnets":
                n = f"decoder.upsamples.{b * (nrb + 2) + int(parts[4])}." + _WAN_RES[".".join(parts[5:])]
            else:  # upsamplers.0.<resample|time_conv>...
                n = f"decoder.upsamples.{b * (nrb + 2) + nrb + 1}." + ".".join(parts[5:])
        else:
            raise KeyError(k)
        out[n] = v
    return out


# ------------------------------------------------------------------------------------------------ folders
def write_zimage_set(models: Path) -> dict:
    """The editor's default-graph file names under ``models``: the DiT, Qwen3 (+ tokenizer beside it), the VAE.
    Returns the original diffusers-side modules for equivalence checks."""
    dit, te, vae = tiny_zimage(), tiny_qwen3(), tiny_vae16()
    save(zimage_file(dit), models / "diffusion_models" / "z_image_turbo_bf16.safetensors")
    save(qwen3_file(te), models / "text_encoders" / "qwen_3_4b.safetensors")
    write_qwen_tokenizer(models / "text_encoders" / "qwen_3_4b_tokenizer")
    save(vae_to_ldm(vae, prefix=""), models / "vae" / "ae.safetensors")
    return {"transformer": dit, "text_encoder": te, "vae": vae}


def write_flux_set(models: Path, guidance=True) -> dict:
    dit, l, t5, vae = tiny_flux(guidance=guidance), tiny_clip(), tiny_t5(), tiny_vae16()
    name = "flux1-dev.safetensors" if guidance else "flux1-schnell.safetensors"
    save(flux_file(dit), models / "diffusion_models" / name)
    save(clip_file(l), models / "text_encoders" / "clip_l.safetensors")
    save(t5_file(t5), models / "text_encoders" / "t5xxl_fp16.safetensors")
    write_t5_tokenizer(models / "tokenizers" / "t5")
    save(vae_to_ldm(vae, prefix=""), models / "vae" / "ae.safetensors")
    return {"transformer": dit, "clip_l": l, "t5": t5, "vae": vae}


def write_sd3_set(models: Path) -> dict:
    dit, l, g, t5 = tiny_sd3(), tiny_clip(), tiny_clip(seed=8, layers=24, act="gelu", pad=0), tiny_t5()
    vae = tiny_vae16(seed=9, scaling=1.5305, shift=0.0609)
    save(sd3_file(dit), models / "diffusion_models" / "sd3.5_medium.safetensors")
    save(clip_file(l), models / "text_encoders" / "clip_l.safetensors")
    save(clip_file(g), models / "text_encoders" / "clip_g.safetensors")
    save(t5_file(t5), models / "text_encoders" / "t5xxl_fp16.safetensors")
    write_t5_tokenizer(models / "tokenizers" / "t5")
    save(vae_to_ldm(vae, prefix=""), models / "vae" / "sd3_vae.safetensors")
    return {"transformer": dit, "clip_l": l, "clip_g": g, "t5": t5, "vae": vae}


def write_qwen_image_set(models: Path) -> dict:
    """ComfyUI's Qwen-Image template file names: the DiT, Qwen2.5-VL (tokenizer under models/tokenizers/qwen25vl),
    the VAE (Wan 2.1 layout). Returns the original diffusers/transformers modules."""
    dit, te, vae = tiny_qwen_image(), tiny_qwen25vl(), tiny_qwen_vae()
    save(qwen_image_file(dit), models / "diffusion_models" / "qwen_image_fp8_e4m3fn.safetensors")
    save(qwen25vl_file(te), models / "text_encoders" / "qwen_2.5_vl_7b_fp8_scaled.safetensors")
    write_qwen_tokenizer(models / "tokenizers" / "qwen25vl")
    save(qwen_vae_file(vae), models / "vae" / "qwen_image_vae.safetensors")
    return {"transformer": dit, "text_encoder": te, "vae": vae}


def write_checkpoints(models: Path, sets: dict) -> None:
    """All-in-one checkpoints in ComfyUI's layout from the split sets: ``model.diffusion_model.`` +
    ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.`` + ``vae.`` (FLUX.1) / ``first_stage_model.`` (SD3)."""
    def te(prefix, sd):
        return {f"text_encoders.{prefix}.transformer." + k: v for k, v in sd.items()}

    f = sets["flux"]
    save({**{"model.diffusion_model." + k: v for k, v in flux_file(f["transformer"]).items()},
          **te("clip_l", clip_file(f["clip_l"])), **te("t5xxl", t5_file(f["t5"])), **vae_to_ldm(f["vae"], prefix="vae.")},
         models / "checkpoints" / "flux1-dev-aio.safetensors")
    s = sets["sd3"]
    save({**{"model.diffusion_model." + k: v for k, v in sd3_file(s["transformer"]).items()},
          **te("clip_l", clip_file(s["clip_l"])), **te("clip_g", clip_file(s["clip_g"])), **te("t5xxl", t5_file(s["t5"])),
          **vae_to_ldm(s["vae"], prefix="first_stage_model.")},
         models / "checkpoints" / "sd3.5_medium_incl_clips.safetensors")
