"""The family nodes' declarations match ComfyUI 0.3.75's object_info (entries copied from the snapshot into
object_info_families_0.3.75.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.schema import object_info
from nodes import default_registry

SPEC = json.loads((Path(__file__).parent / "object_info_families_0.3.75.json").read_text())


def _norm(v):
    t, opts = v[0], dict(v[1]) if len(v) > 1 else {}
    if t == "COMBO":
        t = opts.pop("options", [])
    for k in ("tooltip", "multiselect"):
        opts.pop(k, None)
    return t, opts


@pytest.mark.parametrize("name", sorted(SPEC))
def test_family_node_matches_comfyui(name, tmp_path):
    from engine.context import Env

    spec = SPEC[name]
    ours = object_info(default_registry(), Env(models_dir=tmp_path))[name]
    assert ours["input_order"] == spec["input_order"]
    assert ours["output"] == spec["output"] and ours["output_name"] == spec["output_name"]
    assert ours["category"] == spec["category"]
    if spec.get("display_name"):
        assert ours["display_name"] == spec["display_name"]
    for sec in ("required", "optional"):
        assert set(ours["input"].get(sec, {})) == set(spec["input"].get(sec, {})), sec
        for k, v in spec["input"].get(sec, {}).items():
            st, so = _norm(v)
            ot, oo = _norm(ours["input"][sec][k])
            if isinstance(st, list) and st:  # file lists ([] in the snapshot) depend on the folders
                assert ot == st, k
            elif not isinstance(st, list):
                assert ot == st, k
            for key in ("default", "min", "max", "step", "round", "multiline", "advanced"):
                if key in so:
                    assert oo.get(key) == so[key], (k, key)
