"""Subgraphs in the editor's UI format are flattened into the API format with ComfyUI's "outer:inner" ids.

tests/engine/data/nested-subgraphs.json is written in the schema the editor (frontend 1.58.1) saves: root links as
arrays, ``definitions.subgraphs`` (flat list, a definition used inside another), subgraph links as objects with the
virtual input (-10) and output (-20) nodes, promoted widgets as instance inputs with ``widget`` and values in the
instance's ``widgets_values``."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine import WorkflowError
from engine.executor import Executor
from engine.ui_format import ui_to_api
from engine.validate import validate
from engine.workflow import Link, from_json_value, parse_api

from . import stubs

DATA = Path(__file__).parent / "data" / "nested-subgraphs.json"


@pytest.fixture
def ui():
    return json.loads(DATA.read_text())


@pytest.fixture
def reg():
    from engine import Registry
    return Registry(stubs.STUBS)


def test_nested_subgraphs_flatten_with_outer_inner_ids(ui, reg):
    api = ui_to_api(ui, reg)
    real = {k: v for k, v in api.items() if v["class_type"] != "PrimitiveNode"}
    assert set(real) == {"1", "10:1", "10:2:1", "20", "21"}
    assert api["10:1"]["class_type"] == "Add"
    assert api["10:1"]["inputs"] == {"a": ["1", 0], "k": 3}  # promoted widget value from the outer instance
    assert api["10:2:1"]["inputs"] == {"value": ["10:1", 0], "factor": 2.5, "mode": "round"}  # nested promotion
    assert api["20"]["inputs"] == {"value": ["10:1", 0], "label": "sum"}  # through the subgraph's output
    assert api["21"]["inputs"] == {"value": ["10:2:1", 0], "label": "scaled"}  # through two outputs


def test_flattened_subgraphs_validate_and_run(ui, reg, tmp_path):
    wf = from_json_value(ui, reg)
    v = validate(wf, reg)
    assert v.workflow.nodes["10:2:1"].inputs["value"] == Link("10:1", 0)
    from engine.context import Env
    r = Executor(reg, Env(input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path, models_dir=tmp_path)).run(wf)
    assert r.status == "success"
    # Add: 5 + 3 = 8, then the nested Scale: 8 * 2.5 = 20
    assert r.outputs["20"]["text"] == ["sum=8"] and r.outputs["21"]["text"] == ["scaled=20.0"]


def test_unpromoted_input_keeps_the_inner_widget_value(ui, reg):
    ui["nodes"][1]["widgets_values"] = []
    sub_a = ui["definitions"]["subgraphs"][0]
    sub_a["nodes"][1]["widgets_values"] = []
    api = ui_to_api(ui, reg)
    assert api["10:1"]["inputs"]["k"] == 1 and api["10:2:1"]["inputs"]["factor"] == 1.0


def test_promoted_value_saved_by_name_without_an_instance_widget_input(ui, reg):
    """Editor 1.58.1 saves a promoted widget's instance with no `inputs` entry for it, the value in
    `widgets_values` and `widgets_values_named` (seen in the browser test's editor-built file)."""
    inst = ui["nodes"][1]
    inst["inputs"] = [i for i in inst["inputs"] if not i.get("widget")]
    inst["widgets_values"], inst["widgets_values_named"] = [7], {"k": 7}
    assert ui_to_api(ui, reg)["10:1"]["inputs"]["k"] == 7


def test_promoted_value_by_position_when_the_instance_names_no_widgets(ui, reg):
    """Without names, the values go in order to the definition's inputs that feed an inner widget ("k", not
    "value", which feeds a plain input)."""
    inst = ui["nodes"][1]
    inst["inputs"] = [i for i in inst["inputs"] if not i.get("widget")]
    inst["widgets_values"] = [7]
    api = ui_to_api(ui, reg)
    assert api["10:1"]["inputs"] == {"a": ["1", 0], "k": 7}


def test_linked_outer_input_wins_over_the_widget(ui, reg):
    ui["nodes"][1]["inputs"][1]["link"] = 9
    ui["nodes"][0]["outputs"][0]["links"].append(9)
    ui["links"].append([9, 1, 0, 10, 1, "INT"])
    assert ui_to_api(ui, reg)["10:1"]["inputs"]["k"] == ["1", 0]


def test_two_instances_of_one_definition_get_their_own_ids(ui, reg):
    inst = copy.deepcopy(ui["nodes"][1])
    inst["id"], inst["widgets_values"] = 11, [-2]
    inst["outputs"][0]["links"], inst["outputs"][1]["links"] = [], []
    ui["nodes"].append(inst)
    ui["nodes"].append({"id": 22, "type": "Show", "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 8}],
                        "widgets_values": ["other"]})
    ui["links"].append([8, 11, 0, 22, 0, "INT"])
    api = ui_to_api(ui, reg)
    assert api["11:1"]["inputs"]["k"] == -2 and api["10:1"]["inputs"]["k"] == 3
    assert api["22"]["inputs"]["value"] == ["11:1", 0] and "11:2:1" in api


def test_muted_and_bypassed_instances(ui, reg):
    ui["nodes"][1]["mode"] = 2
    api = ui_to_api(ui, reg)
    assert not any(k.startswith("10:") for k in api) and "value" not in api["20"]["inputs"]
    ui["nodes"][1]["mode"] = 4  # bypass: the INT input passes to the INT output
    api = ui_to_api(ui, reg)
    assert api["20"]["inputs"]["value"] == ["1", 0] and "value" not in api["21"]["inputs"]


def test_a_subgraph_containing_itself_is_a_structured_error(ui, reg):
    sub_b = ui["definitions"]["subgraphs"][1]
    sub_b["nodes"].append({"id": 5, "type": sub_b["id"], "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(WorkflowError) as ei:
        ui_to_api(ui, reg)
    assert ei.value.error.type == "invalid_workflow" and "contains itself" in ei.value.error.message


def test_legacy_group_nodes_stay_a_structured_error(reg):
    ui = {"nodes": [{"id": 1, "type": "workflow>mygroup"}], "links": []}
    with pytest.raises(WorkflowError) as ei:
        ui_to_api(ui, reg)
    assert ei.value.error.type == "unsupported_subgraph" and ei.value.error.extra_info == {"node_id": 1}
