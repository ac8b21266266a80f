"""SelfAttentionGuidance, HypernetworkLoader, StyleModelLoader and StyleModelApply are declared exactly as
ComfyUI 0.3.75 declares them (reference entries copied from the object_info snapshot into tests/nodes/data/)."""
from __future__ import annotations

import pytest

from engine.schema import object_info
from nodes import default_registry
from tests.nodes.spec_check import differences, load_reference

REF = load_reference("object_info-0.3.75-patches.json")
MINE = object_info(default_registry())
FILE_COMBOS = ("hypernetwork_name", "style_model_name")


def test_the_reference_is_the_four_nodes():
    assert set(REF) == {"SelfAttentionGuidance", "HypernetworkLoader", "StyleModelLoader", "StyleModelApply"}


@pytest.mark.parametrize("name", sorted(REF))
def test_declaration_matches_comfyui(name):
    assert name in MINE, f"{name} is not registered"
    assert differences(MINE[name], REF[name], file_combos=FILE_COMBOS) == []
