"""Every diffusion workflow in workflows/ runs through the engine (CI).

They name the bundled checkpoints ``loom-shapes-64.safetensors`` and its 9-channel ``-inpainting`` variant: the
repository's models/checkpoints/ copies are used when they exist, else tiny random SD1 checkpoints are written under
those names. The LoRA and the upscale model the
workflows name are generated here (random weights, right key layouts)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.context import Env
from engine.executor import Executor
from engine.folders import ModelFolders
from nodes import default_registry

from tests.tiny_sd import build_tiny_sd1, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "checkpoints" / "loom-shapes-64.safetensors"
BUNDLED_INPAINT = BUNDLED.with_name("loom-shapes-64-inpainting.safetensors")
WORKFLOWS = ["txt2img", "img2img", "inpaint", "inpaint-model", "hires-fix", "lora", "area-composition",
             "upscale-with-model", "latent-interpolation"]


def make_lora(unet, te, path, rank=4, seed=0):
    """A kohya-style LoRA touching every attention projection of ``unet`` and ``te``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, mod, pick in (("lora_unet_", unet, ("attn1.to_", "attn2.to_")), ("lora_te_", te, ("self_attn.",))):
        for name, m in mod.named_modules():
            if isinstance(m, torch.nn.Linear) and any(p in name for p in pick):
                key = prefix + name.replace(".", "_")
                sd[key + ".lora_down.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.1
                sd[key + ".lora_up.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.1
                sd[key + ".alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))
    return len(sd) // 3


@pytest.fixture(scope="module")
def wf_env(tmp_path_factory):
    from modelstore.models import ModelStore
    from safetensors.torch import save_file

    from modelstore.kinds.upscale import RRDBNet

    root = tmp_path_factory.mktemp("wfmodels")
    for d in ("checkpoints", "loras", "upscale_models", "vae"):
        (root / d).mkdir()
    extra = {}
    if BUNDLED.exists() and BUNDLED_INPAINT.exists():
        extra["checkpoints"] = [BUNDLED.parent]
    else:
        save_checkpoint(root / "checkpoints" / BUNDLED.name, *build_tiny_sd1())
        save_checkpoint(root / "checkpoints" / BUNDLED_INPAINT.name, *build_tiny_sd1(in_channels=9))
    torch.manual_seed(0)
    save_file(RRDBNet(nf=8, nb=1, gc=4, scale=4).state_dict(), str(root / "upscale_models" / "RealESRGAN_x4plus.safetensors"))
    io = tmp_path_factory.mktemp("wfio")
    env = Env(input_dir=io / "input", output_dir=io / "output", temp_dir=io / "temp", models_dir=root,
              folders=ModelFolders(root, extra),
              model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
    m, c, _ = env.model_store().load_checkpoint(BUNDLED.name)
    assert make_lora(m.get(), c.get().encoders[0], root / "loras" / "loom-example-lora.safetensors") > 0
    return env


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs(wf_env, name):
    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    ex = Executor(default_registry(), wf_env)
    events = []
    r = ex.run(wf, sink=events.append)
    assert r.status == "success", (r.error or {}).get("exception_message")
    saved = [img for ui in r.outputs.values() for img in (ui or {}).get("images", [])]
    assert saved, r.outputs
    for img in saved:
        assert (wf_env.output_dir / img["subfolder"] / img["filename"]).is_file()
    assert any(e.type == "progress" for e in events)


def test_lora_changes_the_image(wf_env):
    from nodes import conditioning as C
    from nodes.sampler_core import Noise, sample
    from nodes.samplers import Plan

    store = wf_env.model_store()
    m, c, _ = store.load_checkpoint(BUNDLED.name)
    m2, c2 = store.load_lora(m, c, "loom-example-lora.safetensors", 1.0, 1.0)
    assert m2.get()._loom_lora_applied > 0 and c2.get().encoders[0]._loom_lora_applied > 0
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    run = lambda mm, cc: sample(None, mm, C.encode_text(cc, "x"), C.encode_text(cc, ""), lat,
                                Plan("euler", "normal", 3), 0, 3, cfg=5.0, noise=Noise(0)).samples
    assert not torch.allclose(run(m, c), run(m2, c2))


def test_manifest_of_a_workflow(wf_env):
    from nodes.manifest import build_manifest, file_sha256

    wf = json.loads((ROOT / "workflows" / "lora.json").read_text())
    m = build_manifest(wf, wf_env)
    kinds = {e["kind"]: e for e in m["models"]}
    ck = wf_env.model_store().folders.resolve("checkpoints", BUNDLED.name)
    assert kinds["checkpoints"]["sha256"] == file_sha256(ck) and len(kinds["checkpoints"]["sha256"]) == 64
    assert "loras" in kinds and kinds["loras"]["size"] > 0
    assert m["seeds"] == [{"node": "5", "input": "seed", "seed": 1}]
    ks = m["sampling"]["5"]
    assert ks["steps"] == 10 and ks["sampler_name"] == "euler" and "model" not in ks
    assert m["nodes"]["5"]["version"] and m["environment"]["torch"] and m["environment"]["device"] == "cpu"
    json.dumps(m)
