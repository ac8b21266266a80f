"""A short fuzz over the inputs of the nodes added late (StyleModelApply, SelfAttentionGuidance,
SetUnionControlNetType, ControlNetInpaintingAliMamaApply, HypernetworkLoader, LoraLoaderModelOnly on a FLUX.1
model): hostile values, values just outside the declared ranges and random ones inside, through the executor on one
tiny model set. Every run ends as a success or a structured error (a validation item, or an execution_error that is
not a raw Python/torch exception), never a traceback; a valid workflow still runs after all of them."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import save_file

from tests import tiny_families as tf

HOSTILE = [None, True, -1, 0, 10**400, 2**64, float("nan"), float("inf"), float("-inf"), 1e308, "", "x", "\ud800",
           [], {}, ["999", 0], ["1", 99], {"__value__": [1]}]
RAW = ("RuntimeError", "KeyError", "IndexError", "TypeError", "AttributeError", "ZeroDivisionError", "OverflowError",
       "AssertionError", "UnboundLocalError", "NameError")


def _values(inp, rng) -> list:
    """Hostile values, the edges just outside the declared range, and two random values inside it."""
    out = list(HOSTILE)
    if inp.type == "FLOAT":
        lo, hi = inp.min, inp.max
        out += [lo - 1e-3, hi + 1e-3, lo, hi, *(rng.uniform(lo, hi) for _ in range(2))]
    elif inp.type == "COMBO":
        out += ["nope", "MULTIPLY", *inp.options]
    return out


class Refused:
    """A workflow refused at validation (Executor.run raises WorkflowError): its structured error."""
    status = "refused"

    def __init__(self, e):
        self.error, self.node_errors, self.nodes = e.to_dict()["error"], e.node_errors, {}


def _run(ex, wf):
    from engine.errors import WorkflowError

    try:
        return ex.run(wf)
    except WorkflowError as e:
        return Refused(e)


def _check(r, what):
    text = json.dumps({"error": r.error, "node_errors": r.node_errors}, default=str)
    if r.status == "refused":
        assert r.error["type"] and r.error["message"] and "Traceback" not in text, (what, text[-2000:])
        return r
    assert r.status in ("success", "error"), (what, r.status)
    assert "Traceback" not in text, (what, text[-2000:])
    if r.status == "error" and r.error and "exception_type" in r.error:
        assert not any(r.error["exception_type"].endswith(t) for t in RAW), (what, r.error)
    return r


@pytest.fixture(scope="module")
def fuzz_models(models_dir, tiny):
    from tests.nodes.test_style_model import CLIP, style_sd
    from tests.tiny_controlnet import build_tiny_union

    for d in ("clip_vision", "style_models", "hypernetworks", "controlnet", "diffusion_models", "loras"):
        (models_dir / d).mkdir(exist_ok=True)
    (models_dir / "clip_vision" / CLIP.name).write_bytes(CLIP.read_bytes())
    save_file(style_sd(), str(models_dir / "style_models" / "fuzz-style.safetensors"))
    g = torch.Generator().manual_seed(5)
    hn = {}
    for w in (32, 64):  # the tiny UNet's self-attention width 32 and context width 64
        for j in "01":
            hn[f"{w}.{j}.linear.0.weight"] = torch.randn(2 * w, w, generator=g) * 0.01
            hn[f"{w}.{j}.linear.1.weight"] = torch.randn(w, 2 * w, generator=g) * 0.01
    save_file(hn, str(models_dir / "hypernetworks" / "fuzz-hn.safetensors"))
    save_file({k: v.contiguous() for k, v in build_tiny_union(tiny[0]).state_dict().items()},
              str(models_dir / "controlnet" / "fuzz-union.safetensors"))
    tf.save(tf.flux_file(tf.tiny_flux()), models_dir / "diffusion_models" / "fuzz-flux.safetensors")
    qkv = "diffusion_model.double_blocks.0.img_attn.qkv"
    save_file({f"{qkv}.lora_up.weight": torch.randn(192, 4, generator=g) * 0.1,
               f"{qkv}.lora_down.weight": torch.randn(4, 64, generator=g) * 0.1},
              str(models_dir / "loras" / "fuzz-flux-lora.safetensors"))
    return models_dir


def _sample(model, positive, negative, sink):
    """KSampler (1 step, 64x64) on ``model`` whose latent feeds a PreviewAny, merged into one workflow."""
    return {"90": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "91": {"class_type": "KSampler", "inputs": {
                "model": model, "positive": positive, "negative": negative, "latent_image": ["90", 0], "seed": 1,
                "steps": 1, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
            sink: {"class_type": "PreviewAny", "inputs": {"source": ["91", 0]}}}


BASE_SD = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
           "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}}}


def _graphs():
    """(name, workflow, node id, {input: declared Input}) for each fuzzed node."""
    from nodes import default_registry

    reg = default_registry()
    sag = {**BASE_SD, "3": {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["1", 0], "scale": 0.5,
                                                                               "blur_sigma": 2.0}},
           **_sample(["3", 0], ["2", 0], ["2", 0], "9")}
    style = {**BASE_SD,
             "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "loom-shapes-clip.safetensors"}},
             "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 4000}},
             "5": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["3", 0], "image": ["4", 0],
                                                               "crop": "center"}},
             "6": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "fuzz-style.safetensors"}},
             "7": {"class_type": "StyleModelApply", "inputs": {"conditioning": ["2", 0], "style_model": ["6", 0],
                                                              "clip_vision_output": ["5", 0], "strength": 1.0,
                                                              "strength_type": "multiply"}},
             "9": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}}}
    union = {**BASE_SD,
             "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "fuzz-union.safetensors"}},
             "4": {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["3", 0], "type": "canny/lineart/anime_lineart/mlsd"}},
             "5": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 99}},
             "6": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                 "positive": ["2", 0], "negative": ["2", 0], "control_net": ["4", 0], "image": ["5", 0],
                 "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
             **_sample(["1", 0], ["6", 0], ["6", 1], "9")}
    hn = {**BASE_SD, "3": {"class_type": "HypernetworkLoader", "inputs": {
        "model": ["1", 0], "hypernetwork_name": "fuzz-hn.safetensors", "strength": 1.0}},
        **_sample(["3", 0], ["2", 0], ["2", 0], "9")}
    lora = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "fuzz-flux.safetensors", "weight_dtype": "default"}},
            "3": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "fuzz-flux-lora.safetensors",
                                                                  "strength_model": 1.0}},
            "9": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    pick = lambda ct, *names: {n: reg.get(ct).input(n) for n in names}  # noqa: E731
    return [("sag", sag, "3", pick("SelfAttentionGuidance", "scale", "blur_sigma")),
            ("style", style, "7", pick("StyleModelApply", "strength", "strength_type")),
            ("union", union, "4", pick("SetUnionControlNetType", "type")),
            ("hypernetwork", hn, "3", pick("HypernetworkLoader", "strength")),
            ("lora", lora, "3", pick("LoraLoaderModelOnly", "strength_model"))]


@pytest.mark.parametrize("which", ["sag", "style", "union", "hypernetwork", "lora"])
def test_fuzz_inputs(executor, fuzz_models, which):
    import copy

    rng = random.Random(which)
    name, wf, nid, inputs = next(g for g in _graphs() if g[0] == which)
    assert _check(_run(executor, wf), which).status == "success", executor.run(wf).error
    ran = refused = 0
    for inp_name, inp in inputs.items():
        for v in _values(inp, rng):
            bad = copy.deepcopy(wf)
            bad[nid]["inputs"][inp_name] = v
            r = _check(_run(executor, bad), (which, inp_name, v))
            ran += r.status == "success"
            refused += r.status != "success"
    assert ran > 0 and refused > 0
    assert executor.run(wf).status == "success"  # nothing left broken


def test_alimama_inpainting_without_a_mask_is_a_validation_error(executor, fuzz_models):
    wf = {**BASE_SD,
          "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "fuzz-union.safetensors"}},
          "4": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-vae.safetensors"}},
          "5": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
          "6": {"class_type": "ControlNetInpaintingAliMamaApply", "inputs": {
              "positive": ["2", 0], "negative": ["2", 0], "control_net": ["3", 0], "vae": ["4", 0], "image": ["5", 0],
              "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
          "9": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}}
    r = _check(_run(executor, wf), "alimama")
    assert r.status == "refused"  # at validation, before anything ran
    items = r.node_errors["6"]["errors"]
    assert items[0]["type"] == "required_input_missing" and items[0]["extra_info"]["input_name"] == "mask"
    for v in HOSTILE:  # a mask that is not a link
        wf["6"]["inputs"]["mask"] = v
        r = _check(_run(executor, wf), ("alimama mask", v))
        assert r.status in ("refused", "error")


def test_loom_validate_over_the_mutations(fuzz_models, tmp_path, capsys):
    """The same mutations as files through `loom validate --json` (in process): exit 0 or 2 and a JSON answer,
    never a traceback."""
    import copy

    import cli

    paths = []
    for name, wf, nid, inputs in _graphs():
        rng = random.Random(name)
        for inp_name, inp in inputs.items():
            for i, v in enumerate(_values(inp, rng)):
                bad = copy.deepcopy(wf)
                bad[nid]["inputs"][inp_name] = v
                p = tmp_path / f"{name}-{inp_name}-{i}.json"
                p.write_text(json.dumps(bad))
                paths.append(p)
    codes = {}
    for p in paths:
        code = cli.main(["validate", "--json", "--models", str(fuzz_models), str(p)])
        out, err = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in out + err, (p.name, code, (out + err)[-2000:])
        json.loads(out)
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(0) and codes.get(2)
