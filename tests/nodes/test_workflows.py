"""Every example workflow in workflows/ runs through the engine on the checkout's own files (CI).

Models come only from the repository's models/ folder (the bundled checkpoints, the grayscale example LoRA, the
example 4x upscaler, all made by ``python -m training``); nothing is generated or downloaded here. Inputs the
workflows load come from the checkout too (the image workflows make their own)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.context import Env
from engine.executor import Executor
from engine.folders import ModelFolders
from nodes import default_registry

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BUNDLED = MODELS / "checkpoints" / "loom-shapes-64.safetensors"
WORKFLOWS = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
LORA = "loom-shapes-grayscale-lora.safetensors"


def test_the_examples_are_all_here():
    assert len(WORKFLOWS) >= 11 and {"default", "lora", "upscale-with-model", "image-basics"} <= set(WORKFLOWS)


@pytest.fixture(scope="module")
def wf_env(tmp_path_factory):
    from modelstore.models import ModelStore

    io = tmp_path_factory.mktemp("wfio")
    return Env(input_dir=io / "input", output_dir=io / "output", temp_dir=io / "temp", models_dir=MODELS,
               folders=ModelFolders(MODELS),
               model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_node_has_a_title(name):
    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    untitled = [nid for nid, n in wf.items() if not (n.get("_meta") or {}).get("title")]
    assert not untitled, f"{name}: nodes without _meta.title: {untitled}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_from_the_checkout(wf_env, name):
    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    ex = Executor(default_registry(), wf_env)
    r = ex.run(wf)
    assert r.status == "success", (r.error or {}).get("exception_message")
    saved = [img for ui in r.outputs.values() for img in (ui or {}).get("images", [])]
    assert saved, r.outputs
    for img in saved:
        base = wf_env.output_dir if img.get("type", "output") == "output" else wf_env.temp_dir
        assert (base / img["subfolder"] / img["filename"]).is_file()


def test_lora_changes_the_image(wf_env):
    from nodes import conditioning as C
    from nodes.sampler_core import Noise, sample
    from nodes.samplers import Plan

    store = wf_env.model_store()
    m, c, _ = store.load_checkpoint(BUNDLED.name)
    m2, c2 = store.load_lora(m, c, LORA, 1.0, 1.0)
    assert m2.get()._loom_lora_applied == 56  # every attention projection of the UNet
    assert getattr(c2.get().encoders[0], "_loom_lora_applied", 0) == 0  # a UNet-only LoRA: nothing for the CLIP
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
