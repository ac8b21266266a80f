"""/object_info and the workflow JSON Schema are generated from node declarations, in the shape
ComfyUI's frontend validates (it silently drops a node definition that fails its zod schema)."""
from __future__ import annotations

import json

from engine import Combo, Float, Int, Node, Output, Registry, Seed, Socket, String
from engine.schema import input_spec, node_info, object_info, workflow_json_schema

from . import stubs

REQUIRED_STR = ("name", "display_name", "description", "category", "python_module")


def assert_frontend_valid(info: dict) -> None:
    """The checks of the frontend's zod node-definition schema, plus the server's invariants."""
    for k in REQUIRED_STR:
        assert isinstance(info[k], str), k
    assert isinstance(info["output_node"], bool)
    assert len(info["output"]) == len(info["output_is_list"]) == len(info["output_name"])
    if "output_tooltips" in info:
        assert len(info["output_tooltips"]) == len(info["output"])
    for section, names in info["input_order"].items():
        assert list(info["input"][section]) == names
    for section in ("required", "optional"):
        for spec in info["input"].get(section, {}).values():
            assert isinstance(spec, list) and 1 <= len(spec) <= 2
            assert isinstance(spec[0], (str, list))
            if len(spec) == 2:
                assert isinstance(spec[1], dict)
    json.dumps(info)


class Demo(Node):
    """Line one.

    Line two."""
    display_name = "Demo Node"
    category = "test/demo"
    inputs = (Socket("model", "MODEL", tooltip="the model"), Seed(), Int("steps", 20, min=1, max=10000),
              Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01), String("text", multiline=True,
              dynamicPrompts=True), Combo("sampler", ["euler", "heun"]), Socket("mask", "MASK", optional=True))
    outputs = (Output("LATENT", tooltip="The denoised latent."), Output("INT", "count"))
    hidden = ("PROMPT", "UNIQUE_ID")


def test_node_info_shape():
    info = node_info(Demo)
    assert_frontend_valid(info)
    assert info["name"] == "Demo" and info["display_name"] == "Demo Node"
    assert info["description"] == "Line one.\n\nLine two." and info["category"] == "test/demo"
    assert info["python_module"] == "nodes" and info["output_node"] is False
    req = info["input"]["required"]
    assert req["model"] == ["MODEL", {"tooltip": "the model"}]
    assert req["seed"] == ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True,
                                   "tooltip": "The random seed used for creating the noise."}]
    assert req["cfg"] == ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}]
    assert req["text"] == ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}]
    assert req["sampler"] == [["euler", "heun"]]  # V1 combo: the option list first
    assert info["input"]["optional"] == {"mask": ["MASK"]}
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    assert info["input_order"] == {"required": ["model", "seed", "steps", "cfg", "text", "sampler"],
                                   "optional": ["mask"], "hidden": ["prompt", "unique_id"]}
    assert info["output"] == ["LATENT", "INT"] and info["output_name"] == ["LATENT", "count"]
    assert info["output_is_list"] == [False, False]
    assert info["output_tooltips"] == ["The denoised latent.", ""]
    assert "deprecated" not in info and "experimental" not in info
    # the seed max is a plain JSON integer larger than 2**53
    assert '"max": 18446744073709551615' in json.dumps(req["seed"])


def test_combo_options_may_depend_on_the_environment():
    inp = Combo("ckpt_name", lambda env: sorted(env["files"]))
    assert input_spec(inp, {"files": ["b", "a"]}) == [["a", "b"]]


def test_object_info_of_every_stub_is_frontend_valid():
    reg = stubs.registry()
    info = object_info(reg)
    assert info and list(info) == reg.names()
    for v in info.values():
        assert_frontend_valid(v)


def test_the_engine_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, engine, engine.ui_format, engine.pnginfo, engine.schema, tests.engine.stubs as s;"
            "from engine import Executor; Executor(s.registry()).run({'1': {'class_type': 'Number', 'inputs': {}},"
            "'2': {'class_type': 'Show', 'inputs': {'value': ['1', 0]}}}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_workflow_json_schema():
    s = workflow_json_schema(Registry([Demo]))
    assert s["$schema"].startswith("https://json-schema.org/")
    demo = s["additionalProperties"]["oneOf"][0]
    assert demo["properties"]["class_type"] == {"const": "Demo"}
    props = demo["properties"]["inputs"]["properties"]
    assert props["steps"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 10000, "default": 20}
    assert props["sampler"]["anyOf"][0] == {"enum": ["euler", "heun"]}
    assert props["model"]["prefixItems"][0] == {"type": "string"}
    assert demo["properties"]["inputs"]["required"] == ["model"]  # widgets fall back to defaults
    json.dumps(s)
