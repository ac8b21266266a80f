"""Every node of the families added for issue 13 (ControlNet, conditioning/latent/image/mask operations, model
merging, patches, saving) is declared exactly as ComfyUI 0.3.75 declares it (reference entries copied from the
object_info snapshot into tests/nodes/data/)."""
from __future__ import annotations

import pytest

from engine.schema import object_info
from nodes import default_registry
from tests.nodes.spec_check import differences, load_reference

REF = load_reference("object_info-0.3.75-nodes-a.json")
MINE = object_info(default_registry())
FILE_COMBOS = ("control_net_name", "latent", "embedding", "hypernetwork_name", "ckpt_name", "lora_name")


@pytest.mark.parametrize("name", sorted(REF))
def test_declaration_matches_comfyui(name):
    assert name in MINE, f"{name} is not registered"
    assert differences(MINE[name], REF[name], file_combos=FILE_COMBOS) == []


def test_the_reference_covers_the_new_modules():
    import importlib

    modules = ["nodes.conditioning_ops", "nodes.latent_ops", "nodes.image_ops", "nodes.mask_edit",
               "nodes.preprocessors", "nodes.controlnet", "nodes.model_merge", "nodes.model_patches",
               "nodes.save_models", "nodes.string_ops", "nodes.attention_multiply", "nodes.latent_operations",
               "nodes.animation", "nodes.compositing", "nodes.preview_any"]
    names = set()
    for m in modules:
        try:
            names |= {c.class_type for c in importlib.import_module(m).NODES}
        except ModuleNotFoundError as e:
            if e.name != m:
                raise
    assert names <= set(REF), sorted(names - set(REF))


def test_differences_sees_a_changed_default():
    name = "LatentMultiply"
    bad = {**MINE[name], "input": {"required": {**MINE[name]["input"]["required"],
                                                "multiplier": ["FLOAT", {"default": 2.0, "min": -10.0,
                                                                         "max": 10.0, "step": 0.01}]}}}
    assert differences(bad, REF[name]) == ["multiplier.default: 2.0 != 1.0"]
