"""Loading workflow files: API JSON, POST /prompt bodies, the editor's UI format (converted with
the node schemas), PNGs carrying either; every bad input is a WorkflowError (fuzzed)."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Combo, Int, Node, Output, Registry, Result, Seed, Socket, String, WorkflowError
from engine.pnginfo import read_text_chunks
from engine.ui_format import ui_to_api
from engine.validate import validate
from engine.workflow import Link, from_json_value, load, parse_api

from . import stubs


class Sampler(Node):
    """A seeded node (control_after_generate slot after the seed)."""
    inputs = (Socket("value", "INT"), Seed(), Int("steps", 20, min=1, max=100), Combo("mode", ["a", "b"]))
    outputs = (Output("INT"),)

    def run(self, ctx, value, seed, steps, mode):
        return (value + seed + steps,)


class Upload(Node):
    """Like LoadImage: an image_upload combo."""
    inputs = (Combo("image", ["x.png", "y.png"], image_upload=True), String("note", "n"))
    outputs = (Output("INT"),)

    def run(self, ctx, image, note):
        return (len(image),)


REG = Registry(stubs.STUBS + [Sampler, Upload])

# --- a tiny PNG -----------------------------------------------------------------------------------


def chunk(t: bytes, b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)


def text_chunk(key: str, text: str) -> bytes:
    """tEXt when the text is Latin-1, else uncompressed iTXt (what SaveImage's PIL writer does)."""
    try:
        return chunk(b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def add_text_chunks(png: bytes, texts: dict[str, str]) -> bytes:
    """``png`` with text chunks inserted after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + b"".join(text_chunk(k, v) for k, v in texts.items()) + png[33:]


def tiny_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
            + chunk(b"IEND", b""))


API = {"1": {"class_type": "Number", "inputs": {"value": 3}, "_meta": {"title": "Three"}},
       "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": "v"}}}


# --- API format, bodies, files --------------------------------------------------------------------

def test_api_json_file(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(API))
    wf = load(p)
    assert wf.nodes["2"].inputs["value"] == Link("1", 0) and wf.nodes["1"].title == "Three"
    assert wf.prompt == API


def test_post_prompt_body_with_extra_data():
    wf = from_json_value({"prompt": API, "extra_data": {"extra_pnginfo": {"workflow": {"x": 1}}}})
    assert set(wf.nodes) == {"1", "2"} and wf.extra_data == {"extra_pnginfo": {"workflow": {"x": 1}}}


def test_png_with_prompt_and_workflow_chunks():
    png = add_text_chunks(tiny_png(), {"prompt": json.dumps(API), "workflow": json.dumps({"nodes": []})})
    wf = load(png)
    assert set(wf.nodes) == {"1", "2"} and wf.extra_data["extra_pnginfo"]["workflow"] == {"nodes": []}


def test_png_with_only_a_ui_workflow_is_converted():
    png = add_text_chunks(tiny_png(), {"workflow": json.dumps(UI)})
    wf = load(png, REG)
    assert wf.nodes["3"].class_type == "Sampler"


def test_png_without_workflow_and_broken_files(tmp_path):
    for data, etype in [(tiny_png(), "invalid_prompt"), (b"{nope", "invalid_json"), (b"\xff\xfe\x00", "invalid_json"),
                        (b"[" * 100_000, "invalid_json")]:
        with pytest.raises(WorkflowError) as ei:
            load(data)
        assert ei.value.error.type == etype
    with pytest.raises(WorkflowError) as ei:
        load(tmp_path / "missing.json")
    assert "Cannot read" in ei.value.error.message


def test_pnginfo_reads_all_text_chunk_kinds_and_survives_damage():
    body = tiny_png()
    z = b"zk\x00\x00" + zlib.compress("zipped".encode("latin-1"))
    itxt_z = b"iz\x00\x01\x00en\x00\x00" + zlib.compress("日本".encode())
    png = body[:33] + text_chunk("a", "plain") + text_chunk("u", "ünï日本") + chunk(b"zTXt", z) + \
        chunk(b"iTXt", itxt_z) + body[33:]
    assert read_text_chunks(png) == {"a": "plain", "u": "ünï日本", "zk": "zipped", "iz": "日本"}
    assert read_text_chunks(png[:60]) == {"a": "plain"}  # truncated: what came before the damage
    assert read_text_chunks(b"not a png") == {}


# --- UI format ------------------------------------------------------------------------------------

UI = {
    "version": 0.4, "last_node_id": 9, "last_link_id": 9,
    "nodes": [
        {"id": 1, "type": "Number", "mode": 0, "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
         "widgets_values": [5]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "INT", "links": [2]}]},
        {"id": 3, "type": "Sampler", "mode": 0, "title": "My sampler",
         "inputs": [{"name": "value", "type": "INT", "link": 2},
                    {"name": "steps", "type": "INT", "link": 3, "widget": {"name": "steps"}}],
         "outputs": [{"name": "INT", "type": "INT", "links": [4]}],
         "widgets_values": [42, "randomize", 7, "b"]},
        {"id": 4, "type": "PrimitiveNode", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [3], "widget": {"name": "steps"}}],
         "widgets_values": [9, "fixed"]},
        {"id": 5, "type": "Show", "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 4}],
         "outputs": [], "widgets_values": ["out"]},
        {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["remember"]},
        {"id": 7, "type": "MarkdownNote", "mode": 0, "widgets_values": ["# hi"]},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 4, 0, 3, 1, "INT"], [4, 3, 0, 5, 0, "INT"]],
    "groups": [], "config": {}, "extra": {},
}


def test_ui_to_api_maps_widgets_reroutes_primitives_and_notes():
    api = ui_to_api(UI, REG)
    assert set(api) == {"1", "3", "5"}
    assert api["1"] == {"class_type": "Number", "inputs": {"value": 5}, "_meta": {"title": "Number"}}
    assert api["3"]["inputs"] == {"value": ["1", 0], "seed": 42, "steps": 9, "mode": "b"}
    assert api["3"]["_meta"] == {"title": "My sampler"}
    assert api["5"]["inputs"] == {"value": ["3", 0], "label": "out"}
    r = validate(parse_api(api), REG)
    assert r.outputs == ["5"]


def test_legacy_boolean_control_slot_and_missing_control_slot():
    ui = json.loads(json.dumps(UI))
    ui["nodes"][2]["widgets_values"] = [42, True, 7, "b"]
    assert ui_to_api(ui, REG)["3"]["inputs"]["mode"] == "b"
    ui["nodes"][2]["widgets_values"] = [42, 7, "b"]  # a save without the slot
    assert ui_to_api(ui, REG)["3"]["inputs"]["mode"] == "b"


def test_upload_slot_and_dict_widgets_values():
    ui = {"nodes": [{"id": 1, "type": "Upload", "widgets_values": ["y.png", "image", "hello"]},
                    {"id": 2, "type": "Upload", "widgets_values": {"image": "x.png", "note": "d", "junk": 1}}],
          "links": []}
    api = ui_to_api(ui, REG)
    assert api["1"]["inputs"] == {"image": "y.png", "note": "hello"}
    assert api["2"]["inputs"] == {"image": "x.png", "note": "d"}


def test_version_1_links_as_objects():
    ui = json.loads(json.dumps(UI))
    ui["version"] = 1
    ui["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), ln))
                   for ln in UI["links"]]
    assert ui_to_api(ui, REG) == ui_to_api(UI, REG)


def test_muted_nodes_are_dropped_and_bypassed_nodes_pass_links_through():
    ui = json.loads(json.dumps(UI))
    ui["nodes"][2]["mode"] = 4  # bypass the Sampler: Show gets Number's output through it
    api = ui_to_api(ui, REG)
    assert "3" not in api and api["5"]["inputs"]["value"] == ["1", 0]
    ui["nodes"][2]["mode"] = 2  # mute it: Show loses its input
    api = ui_to_api(ui, REG)
    assert "3" not in api and "value" not in api["5"]["inputs"]
    with pytest.raises(WorkflowError) as ei:
        validate(parse_api(api), REG)
    assert ei.value.node_errors["5"]["errors"][0]["type"] == "required_input_missing"


def test_unknown_node_types_are_kept_for_validation_to_report():
    ui = {"nodes": [{"id": 1, "type": "Numbr", "widgets_values": [1]}], "links": []}
    api = ui_to_api(ui, REG)
    with pytest.raises(WorkflowError) as ei:
        validate(parse_api(api), REG)
    assert "Number" in ei.value.node_errors["1"]["errors"][0]["extra_info"]["suggestions"]


def test_ui_workflow_file_loads_and_keeps_the_graph_for_png_metadata(tmp_path):
    p = tmp_path / "ui.json"
    p.write_text(json.dumps(UI))
    wf = load(p, REG)
    assert wf.extra_data == {"extra_pnginfo": {"workflow": UI}}
    with pytest.raises(WorkflowError):
        load(p)  # no registry: cannot convert


# --- fuzz -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["Number", "Show", "Add", "Sampler", "Upload", "Reroute", "PrimitiveNode", "1", "2"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(
        st.sampled_from(["1", "2", "class_type", "inputs", "_meta", "value", "a", "nodes", "links", "id", "type",
                         "mode", "widgets_values", "prompt", "link", "name", "__value__", "version"]) | st.text(max_size=4),
        children, max_size=6),
    max_leaves=40)

node_like = st.fixed_dictionaries({
    "class_type": st.sampled_from(["Number", "Add", "Show", "Scale", "Sampler", "Nope"]),
    "inputs": st.dictionaries(st.sampled_from(["value", "a", "b", "k", "seed", "mode", "label", "factor"]),
                              st.one_of(json_values, st.tuples(st.sampled_from(["1", "2", "3", 1]),
                                                               st.integers(-2, 3) | st.text(max_size=3)).map(list)),
                              max_size=5)})
api_like = st.dictionaries(st.sampled_from(["1", "2", "3"]), node_like | json_values, max_size=4)

ui_node = st.fixed_dictionaries({
    "id": st.integers(0, 4) | st.text(max_size=2), "type": st.sampled_from(
        ["Number", "Show", "Sampler", "Reroute", "PrimitiveNode", "Note", "Upload", "X"]),
    "mode": st.sampled_from([0, 2, 4, "x"]),
    "inputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["value", "seed", "t", ""]),
                                              "type": st.sampled_from(["INT", "*", "X"]),
                                              "link": st.none() | st.integers(0, 5)}), max_size=3) | json_values,
    "widgets_values": json_values})
ui_like = st.fixed_dictionaries({"nodes": st.lists(ui_node | json_values, max_size=5),
                                 "links": st.lists(st.lists(st.integers(0, 5) | json_values, min_size=0, max_size=6)
                                                   | json_values, max_size=6) | json_values})

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _only_workflow_errors(fn, *args):
    try:
        wf = fn(*args)
    except WorkflowError:
        return
    try:
        validate(wf, REG)
    except WorkflowError:
        pass


@FUZZ
@given(json_values | api_like | ui_like)
def test_fuzz_from_json_value_and_validate_raise_only_workflow_errors(value):
    _only_workflow_errors(from_json_value, value, REG)


@FUZZ
@given(st.binary(max_size=200) | (json_values | api_like | ui_like).map(lambda v: json.dumps(v).encode()))
def test_fuzz_load_bytes_raises_only_workflow_errors(data):
    _only_workflow_errors(load, data, REG)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 60))
def test_fuzz_png_reader_never_raises(junk, cut):
    png = add_text_chunks(tiny_png(), {"prompt": json.dumps(API)})
    read_text_chunks(png[:cut] + junk)
    read_text_chunks(png[:8] + junk)
    try:
        load(png[:len(png) - cut] + junk, REG)
    except WorkflowError:
        pass


def test_with_overrides_returns_a_new_workflow_and_the_unused_overrides():
    wf = parse_api({"1": {"class_type": "Number", "inputs": {"value": 3}},
                    "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                    "3": {"class_type": "Number"}})
    new, unused = wf.with_overrides([("1", "value", 7), ("2", "value", ["3", 0]), ("3", "value", 1),
                                     ("9", "value", 1), ("2", "label", "hi")])
    assert new.nodes["1"].inputs == {"value": 7} and wf.nodes["1"].inputs == {"value": 3}  # original untouched
    assert new.nodes["2"].inputs == {"value": Link("3", 0), "label": "hi"}  # a link-shaped value is a link
    assert new.nodes["3"].inputs == {"value": 1} and wf.prompt["3"] == {"class_type": "Number"}
    assert unused == [("9", "value", 1)]
    assert wf.with_overrides([]) == (wf, [])
