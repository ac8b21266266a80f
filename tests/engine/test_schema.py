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
    assert demo["properties"]["inputs"]["required"] == ["model"]  # widgets fall back to defaults
    json.dumps(s)


def _schema_validator(registry, env=None):
    import jsonschema

    schema = workflow_json_schema(registry, env)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_workflow_json_schema_accepts_and_rejects_what_validation_does():
    v = _schema_validator(Registry([Demo, stubs.Number]))
    good = {"1": {"class_type": "Number", "inputs": {"value": 3}, "_meta": {"title": "n"}},
            "2": {"class_type": "Demo", "inputs": {"model": ["9", 0], "steps": 20, "cfg": 7.5, "text": "x",
                                                   "sampler": "heun", "seed": 2**64 - 1, "mask": ["1", 0]}}}
    assert list(v.iter_errors(good)) == []
    bad = [{"2": {**good["2"], "inputs": {**good["2"]["inputs"], "steps": 0}}},        # below min
           {"2": {**good["2"], "inputs": {**good["2"]["inputs"], "steps": 2.5}}},      # not an integer
           {"2": {**good["2"], "inputs": {**good["2"]["inputs"], "sampler": "dpm"}}},  # not an option
           {"2": {**good["2"], "inputs": {**good["2"]["inputs"], "model": [9, 0]}}},   # a link's id is a string
           {"2": {**good["2"], "inputs": {"steps": 20}}},                               # socket input missing
           {"1": {"class_type": "Nope", "inputs": {}}},                                 # unknown class
           {"1": {"class_type": "Number", "inputs": {}, "extra": 1}}]                   # unknown node field
    for wf in bad:
        assert list(v.iter_errors(wf)), wf


def test_every_bundled_workflow_is_valid_against_the_catalogue_schema():
    """The real workflows in workflows/ against the JSON Schema of the real catalogue (file combos
    listed from the repo's models/ and an empty input folder)."""
    from pathlib import Path

    import jsonschema

    from engine import Env
    from nodes import default_registry

    repo = Path(__file__).resolve().parents[2]
    files = sorted((repo / "workflows").glob("*.json"))
    assert len(files) >= 10
    reg, env = default_registry(), Env(models_dir=repo / "models", input_dir=repo / "workflows")
    v = _schema_validator(reg, env)
    for f in files:
        wf = json.loads(f.read_text())
        for e in v.iter_errors(wf):
            # The only allowed miss: a file combo naming a model that CI makes at run time (the lora and
            # upscale workflows' models are not bundled), and nothing else about that node.
            (nid,) = e.absolute_path
            cls = reg.get(wf[nid]["class_type"])
            missing = [i.name for i in cls.inputs if i.type == "COMBO" and callable(i.options)
                       and wf[nid]["inputs"].get(i.name) not in i.choices(env)]
            assert missing, (f.name, nid, e.message[:300])
            fixed = {**wf[nid], "inputs": {**wf[nid]["inputs"], **{m: i.choices(env)[0] if i.choices(env) else None
                                                                   for m in missing for i in [cls.input(m)]}}}
            if all(x is not None for x in fixed["inputs"].values()):
                assert v.is_valid({nid: fixed}), (f.name, nid)
    with_typo = json.loads((repo / "workflows" / "default.json").read_text())
    with_typo["1"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    try:
        v.validate(with_typo)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a checkpoint name that is not in models/ passed the schema")
