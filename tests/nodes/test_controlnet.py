"""ControlNet on the tiny SD1 model: a ControlNet saved in the original single-file layout loads through the store,
its residuals enter the sampler's model call exactly as diffusers' ControlNet pipeline adds them, strength and the
percent range gate it, chains add up, and a difference ControlNet is made whole with the model's UNet."""
from __future__ import annotations

import pytest
import torch

from nodes import controlnet as CN
from nodes.conditioning import encode_text
from nodes.sampler_core import Noise, sample
from nodes.samplers import Plan
from tests.tiny_controlnet import build_tiny_controlnet, controlnet_to_ldm, save_controlnet


@pytest.fixture(scope="module")
def cn_env(models_dir, tmp_path_factory, tiny):
    from tests.nodes.conftest import make_env

    d = models_dir / "controlnet"
    d.mkdir(exist_ok=True)
    cn = build_tiny_controlnet(tiny[0])
    save_controlnet(d / "tiny-cn.safetensors", cn)
    save_controlnet(d / "tiny-cn-bare.safetensors", cn, prefix="")  # some files have no control_model. prefix
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(d / "tiny-cn-diffusers.safetensors"))
    # a difference ControlNet: the UNet-copy tensors stored minus the base UNet's
    base = tiny[0].state_dict()
    diff = {k: (v - base[k] if k in base and not k.startswith("controlnet_") else v).contiguous()
            for k, v in cn.state_dict().items()}
    save_file({**diff, "difference": torch.tensor([])}, str(d / "tiny-cn-diff.safetensors"))
    env = make_env(models_dir, tmp_path_factory.mktemp("cn"))
    return env, cn


def hint_image():
    img = torch.zeros(1, 64, 64, 3)
    img[:, 16:48, 16:48] = 1.0
    return img


def run(refs, pos, neg, steps=3):
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    return sample(None, refs[0], pos, neg, lat, Plan("euler", "normal", steps), 0, steps, cfg=4.0,
                  noise=Noise(5)).samples


def test_loader_reads_every_layout_and_matches_the_source_module(cn_env):
    env, cn = cn_env
    store = env.model_store()
    x, t, e, h = torch.randn(2, 4, 8, 8), torch.tensor(400), torch.randn(2, 77, 64), torch.rand(2, 3, 64, 64)
    want = cn(x, t, e, h, return_dict=False)
    for name in ("tiny-cn.safetensors", "tiny-cn-bare.safetensors", "tiny-cn-diffusers.safetensors"):
        ref = CN.ControlNetLoader().run(type("C", (), {"env": env})(), name)[0]
        assert ref.kind == "CONTROL_NET" and ref.meta["arch"] == "sd1"
        with store.using(ref) as (m,):
            got = m(x, t, e, h, return_dict=False)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got[0], want[0])), name
        assert torch.allclose(got[1], want[1], atol=1e-5)


def test_not_a_controlnet_is_refused_in_the_loader(cn_env, models_dir):
    env, _ = cn_env
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(models_dir / "controlnet" / "junk.safetensors"))
    with pytest.raises(Exception, match="not a ControlNet"):
        env.model_store().load("controlnet", "junk.safetensors")


def test_apply_adds_the_residuals_the_diffusers_way(cn_env, refs, tiny):
    env, cn = cn_env
    ref = env.model_store().load("controlnet", "tiny-cn.safetensors")
    pos, neg = encode_text(refs[1], "a square"), encode_text(refs[1], "")
    p2, n2 = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref, hint_image(), 0.8, 0.0, 1.0)
    assert p2[0][1]["control"] is n2[0][1]["control"]  # one shared link: cond and uncond stay one batched call
    assert "control" not in pos[0][1]  # inputs untouched
    # the residuals the Denoiser asks for equal diffusers' ControlNet output for the same call
    x, t = torch.randn(2, 4, 8, 8), torch.tensor(700.0)
    emb = torch.cat([neg[0][0], pos[0][0]])
    res = p2[0][1]["control"].residuals(x, t, emb, None, None, (8, 8), torch.float32)
    hint = hint_image().movedim(-1, 1).repeat(2, 1, 1, 1)
    d, m = cn(x, t, emb, hint, conditioning_scale=0.8, return_dict=False)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(res["down_block_additional_residuals"], d))
    assert torch.allclose(res["mid_block_additional_residual"], m, atol=1e-5)
    # sampling with the ControlNet differs from sampling without it
    plain, controlled = run(refs, pos, neg), run(refs, p2, n2)
    assert not torch.allclose(plain, controlled, atol=1e-3)
    # strength 0, and a range holding none of the 3 steps (timesteps 999, 499.5, 0), change nothing
    z = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref, hint_image(), 0.0, 0.0, 1.0)
    assert z == (pos, neg)
    late = CN.ControlNetApplyAdvanced().run(None, pos, neg, ref, hint_image(), 1.0, 0.2, 0.3)  # no step in it
    assert torch.allclose(run(refs, *late), plain, rtol=1e-4, atol=1e-3)


def test_chains_add_and_the_old_node_applies_to_one_conditioning(cn_env, refs):
    env, _ = cn_env
    ref = env.model_store().load("controlnet", "tiny-cn.safetensors")
    pos, neg = encode_text(refs[1], "a square"), encode_text(refs[1], "")
    once = CN.ControlNetApply().run(None, pos, ref, hint_image(), 0.5)[0]
    twice = CN.ControlNetApply().run(None, once, ref, hint_image(), 0.5)[0]
    single = CN.ControlNetApply().run(None, pos, ref, hint_image(), 1.0)[0]
    link = twice[0][1]["control"]
    assert link.previous is once[0][1]["control"]
    x, t, emb = torch.randn(1, 4, 8, 8), torch.tensor(500.0), pos[0][0]
    a = link.residuals(x, t, emb, None, None, (8, 8), torch.float32)
    b = single[0][1]["control"].residuals(x, t, emb, None, None, (8, 8), torch.float32)
    assert torch.allclose(a["mid_block_additional_residual"], b["mid_block_additional_residual"], atol=1e-5)
    assert "control" not in neg[0][1]


def test_union_type_and_diff_loader(cn_env, refs, tiny):
    env, cn = cn_env

    class Ctx:
        pass
    ctx = Ctx()
    ctx.env = env
    ref = CN.ControlNetLoader().run(ctx, "tiny-cn.safetensors")[0]
    typed = CN.SetUnionControlNetType().run(None, ref, "depth")[0]
    assert typed.option("union_type") == 1 and ref.option("union_type") is None
    assert CN.SetUnionControlNetType().run(None, ref, "auto")[0].option("union_type") is None
    # an ordinary ControlNet through the diff loader is the same ControlNet
    assert CN.DiffControlNetLoader().run(ctx, refs[0], "tiny-cn.safetensors")[0] == ref
    diff = CN.DiffControlNetLoader().run(ctx, refs[0], "tiny-cn-diff.safetensors")[0]
    assert diff.meta["difference"] is True
    pos = encode_text(refs[1], "a square")
    x, t, emb = torch.randn(1, 4, 8, 8), torch.tensor(500.0), pos[0][0]
    whole = CN.ControlApply(ref, hint_image(), 1.0).residuals(x, t, emb, None, None, (8, 8), torch.float32)
    merged = CN.ControlApply(diff, hint_image(), 1.0).residuals(x, t, emb, None, None, (8, 8), torch.float32)
    assert torch.allclose(whole["mid_block_additional_residual"], merged["mid_block_additional_residual"], atol=1e-4)


def test_controlnet_workflow_through_the_engine(cn_env):
    from engine.executor import Executor
    from nodes import default_registry

    env, _ = cn_env
    env.input_dir.mkdir(parents=True, exist_ok=True)
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a square"}},
          "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
          "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}},
          "5": {"class_type": "Canny", "inputs": {"image": ["4", 0], "low_threshold": 0.4, "high_threshold": 0.8}},
          "6": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny-cn.safetensors"}},
          "7": {"class_type": "ControlNetApplyAdvanced", "inputs": {
              "positive": ["2", 0], "negative": ["3", 0], "control_net": ["6", 0], "image": ["5", 0],
              "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["1", 2]}},
          "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 4.0,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["7", 0], "negative": ["7", 1],
                                                    "latent_image": ["8", 0], "denoise": 1.0}},
          "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
          "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "cn"}}}
    r = Executor(default_registry(), env).run(wf)
    assert r.status == "success", r.error
    assert len(r.outputs["11"]["images"]) == 1


def test_controlnet_union_types(cn_env, models_dir, refs):
    """A ControlNet Union file (diffusers' layout, as xinsir publishes it) loads as ControlNetUnionModel; a type set
    with SetUnionControlNetType gives diffusers' output for that task index (ComfyUI's names in the model card's
    order: depth = 1, canny/lineart = 3); 'auto' is the hint without the task fusion; a type the file lacks is a
    clear error."""
    import copy

    from safetensors.torch import save_file

    from tests.tiny_controlnet import build_tiny_union

    env, _ = cn_env
    unet = refs[0].get()
    union, six = build_tiny_union(unet), build_tiny_union(unet, n_types=6, seed=5)
    for name, m in (("tiny-union.safetensors", union), ("tiny-union6.safetensors", six)):
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(models_dir / "controlnet" / name))
    ctx = type("C", (), {"env": env})()
    ref = CN.ControlNetLoader().run(ctx, "tiny-union.safetensors")[0]
    assert ref.meta["union_types"] == 8
    pos = encode_text(refs[1], "a square")
    x, t, emb = torch.randn(1, 4, 8, 8), torch.tensor(600.0), pos[0][0]
    hint = hint_image().movedim(-1, 1)

    def res(r):
        out = CN.ControlApply(r, hint_image(), 0.8).residuals(x, t, emb, None, None, (8, 8), torch.float32)
        return out["down_block_additional_residuals"], out["mid_block_additional_residual"]

    def want(model, idx):
        ct = torch.zeros(1, model.config.num_control_type)
        if idx is not None:
            ct[:, idx] = 1.0
        with torch.no_grad():
            return model(x, t, emb, controlnet_cond=[hint], control_type=ct, control_type_idx=[idx or 0],
                         conditioning_scale=0.8, return_dict=False)

    got = {}
    for typ, idx in (("depth", 1), ("canny/lineart/anime_lineart/mlsd", 3)):
        got[typ] = res(CN.SetUnionControlNetType().run(None, ref, typ)[0])
        d, m = want(union, idx)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got[typ][0], d)), typ
        assert torch.allclose(got[typ][1], m, atol=1e-5)
    assert not torch.allclose(got["depth"][1], got["canny/lineart/anime_lineart/mlsd"][1], atol=1e-4)
    # auto: ComfyUI's union without a type = zero type vector, hint features added without the fusion offset
    plain = copy.deepcopy(union)
    with torch.no_grad():
        plain.spatial_ch_projs.weight.zero_()
        plain.spatial_ch_projs.bias.zero_()
    d, m = want(plain, None)
    auto = res(CN.SetUnionControlNetType().run(None, ref, "auto")[0])
    assert torch.allclose(auto[1], m, atol=1e-5) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(auto[0], d))
    assert not torch.allclose(auto[1], want(union, 0)[1], atol=1e-4)
    # the 6-type (non-promax) file has no tile type
    six_ref = CN.SetUnionControlNetType().run(None, CN.ControlNetLoader().run(ctx, "tiny-union6.safetensors")[0],
                                              "tile")[0]
    with pytest.raises(ValueError, match="6 control types.*tile"):
        res(six_ref)
