"""LoRA patching: expected weight delta, outputs match a hand-patched copy, base untouched, memory = patched only."""
import copy

import pytest
import torch
from safetensors.torch import save_file

from engine.folders import ModelFolders
from modelstore.lora import apply_lora, lora_delta
from modelstore.models import ModelStore

R = 4


def _lora(unet, te):
    """kohya keys (diffusers- and LDM-named), a 3x3 conv, and peft-style text encoder keys."""
    g = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1
    sd = {}
    q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = rnd(R, q.in_features)
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = rnd(q.out_features, R)
    sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"] = torch.tensor(2.0)
    c = unet.down_blocks[1].resnets[0].conv1
    sd["lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight"] = rnd(R, c.in_channels, 3, 3)
    sd["lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight"] = rnd(c.out_channels, R, 1, 1)
    p = unet.down_blocks[0].attentions[0].proj_in   # LDM name: input_blocks.1.1.proj_in
    sd["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = rnd(R, p.in_channels, 1, 1)
    sd["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = rnd(p.out_channels, R, 1, 1)
    k = te.encoder.layers[1].self_attn.k_proj
    sd["text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_A.weight"] = rnd(R, k.in_features)
    sd["text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_B.weight"] = rnd(k.out_features, R)
    sd["lora_unet_no_such_module.lora_down.weight"] = rnd(R, 8)
    sd["lora_unet_no_such_module.lora_up.weight"] = rnd(8, R)
    return sd


@pytest.fixture(scope="module")
def lora_setup(models_root, tiny_sd1):
    unet, _, te = tiny_sd1
    sd = _lora(unet, te)
    save_file(sd, str(models_root / "loras" / "tiny-lora.safetensors"))
    return sd


def _expected(module, sd, strength, mapping):
    ref = copy.deepcopy(module)
    mods = dict(ref.named_modules())
    for prefix, (name, alpha) in mapping.items():
        w = mods[name].weight
        up, down = sd[prefix + ("lora_up.weight" if prefix.startswith("lora_") else "lora_B.weight")], \
            sd[prefix + ("lora_down.weight" if prefix.startswith("lora_") else "lora_A.weight")]
        with torch.no_grad():
            w += strength * (alpha / R) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    return ref


def test_lora_through_store(models_root, tiny_sd1, lora_setup):
    sd = lora_setup
    store = ModelStore(ModelFolders(models_root), device="cpu")
    model, clip, _ = store.load_checkpoint("tiny-sd1.safetensors")
    base_u, base_t = model.get(), clip.get().encoders[0]
    before = {k: v.clone() for k, v in base_u.state_dict().items()}
    pm, pc = store.load_lora(model, clip, "tiny-lora.safetensors", 0.8, 0.5)
    assert pm != model and pc != clip and store.load_lora(model, clip, "tiny-lora.safetensors", 0, 0) == (model, clip)
    u, t = pm.get(), pc.get().encoders[0]
    assert u._loom_lora_applied == 3 and u._loom_lora_unmatched == ["no_such_module"]
    exp_u = _expected(base_u, sd, 0.8, {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.": (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 2.0),
        "lora_unet_down_blocks_1_resnets_0_conv1.": ("down_blocks.1.resnets.0.conv1", R),
        "lora_unet_input_blocks_1_1_proj_in.": ("down_blocks.0.attentions.0.proj_in", R)})
    exp_t = _expected(base_t, sd, 0.5, {"text_encoder.text_model.encoder.layers.1.self_attn.k_proj.": (
        "encoder.layers.1.self_attn.k_proj", R)})
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
    ids = torch.randint(0, 49408, (1, 77))
    with torch.no_grad():
        out, base_out = u(x, 10, ctx).sample, base_u(x, 10, ctx).sample
        assert torch.allclose(out, exp_u(x, 10, ctx).sample, atol=1e-6)
        assert not torch.allclose(out, base_out, atol=1e-4)
        assert torch.allclose(t(ids)[0], exp_t(ids)[0], atol=1e-6)
    for k, v in base_u.state_dict().items():          # base untouched
        assert torch.equal(v, before[k]), k
    shared = {p.data_ptr() for p in base_u.parameters()} & {p.data_ptr() for p in u.parameters()}
    assert len(shared) == len(list(base_u.parameters())) - 3   # only patched weights are new tensors
    patched = [dict(u.named_modules())[n].weight for n in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                                                           "down_blocks.1.resnets.0.conv1", "down_blocks.0.attentions.0.proj_in")]
    assert u._loom_own_bytes == sum(w.nbytes for w in patched)
    assert dict((k.component, b) for k, _, b in store.loaded() if k.patches)["unet"] == u._loom_own_bytes


def test_apply_lora_moving_copy_leaves_base(tiny_sd1, lora_setup):
    unet = tiny_sd1[0]
    p = apply_lora(unet, lora_setup, 1.0)
    p.to(torch.bfloat16)
    assert next(unet.parameters()).dtype == torch.float32


def test_lora_delta_shapes():
    up, down = torch.ones(6, 2), torch.ones(2, 5)
    assert lora_delta(up, down, 1.0, (6, 5)).unique().item() == 1.0
    assert lora_delta(torch.ones(6, 2, 1, 1), torch.ones(2, 3, 3, 3), None, (6, 3, 3, 3)).shape == (6, 3, 3, 3)
