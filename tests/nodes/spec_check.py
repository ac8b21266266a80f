"""Compare Loom's /object_info entry of a node with ComfyUI 0.3.75's (tests/nodes/data/object_info-0.3.75-*.json,
copied from the snapshot). V1 (``[[options], {...}]``) and V3 (``["COMBO", {"options": [...]}]``) combos, and
``None`` display names (the frontend shows the class name), are compared by meaning."""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"
OPTION_KEYS = ("default", "min", "max", "step", "multiline", "control_after_generate", "forceInput", "display")


def load_reference(name: str) -> dict:
    path = DATA / name
    if not path.is_file():
        raise AssertionError(f"reference data {path} is missing (copy it from the 0.3.75 object_info snapshot)")
    return json.loads(path.read_text())


def _norm_input(spec: list) -> dict:
    head = spec[0]
    opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(head, list):
        typ, options = "COMBO", list(head)
    elif head == "COMBO":
        typ, options = "COMBO", list(opts.get("options", []))
    else:
        typ, options = head, None
    out = {"type": typ, "options": options}
    for k in OPTION_KEYS:
        if k in opts:
            out[k] = opts[k]
    return out


def differences(mine: dict, ref: dict, *, file_combos: tuple = ()) -> list[str]:
    """Human-readable differences between two object_info entries (empty when they match). ``file_combos``
    names combo inputs whose option lists are folder contents (not compared)."""
    diffs = []
    name = ref["name"]
    for field in ("output", "output_name", "output_is_list", "category", "output_node"):
        if mine[field] != ref[field]:
            diffs.append(f"{field}: {mine[field]!r} != {ref[field]!r}")
    if mine["display_name"] != (ref["display_name"] or name):
        diffs.append(f"display_name: {mine['display_name']!r} != {ref['display_name']!r}")
    if mine["input_order"] != ref["input_order"]:
        diffs.append(f"input_order: {mine['input_order']!r} != {ref['input_order']!r}")
    if mine["input"].get("hidden") != ref["input"].get("hidden"):
        diffs.append(f"hidden: {mine['input'].get('hidden')!r} != {ref['input'].get('hidden')!r}")
    for section in ("required", "optional"):
        for iname, rspec in ref["input"].get(section, {}).items():
            spec = mine["input"].get(section, {}).get(iname)
            if spec is None:
                diffs.append(f"{section} input {iname} missing")
                continue
            a, b = _norm_input(spec), _norm_input(rspec)
            if iname in file_combos:
                a["options"] = b["options"] = None
            for k in ("type", "options"):
                if a[k] != b[k]:
                    diffs.append(f"{iname}.{k}: {a[k]!r} != {b[k]!r}")
            for k in OPTION_KEYS:
                if k not in b:
                    continue  # Loom may add a default where ComfyUI has none (strings default to "")
                if k == "default" and a["type"] == "COMBO" and "default" not in a:
                    a["default"] = (a["options"] or [None])[0]
                if a.get(k) != b[k]:
                    diffs.append(f"{iname}.{k}: {a.get(k)!r} != {b[k]!r}")
    return diffs
