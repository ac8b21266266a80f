"""Validation: every problem is found before anything runs, reported all at once in ComfyUI's
``node_errors`` shape, and only for nodes an output node depends on."""
from __future__ import annotations

import sys

import pytest

from engine import Node, Output, Registry, WorkflowError
from engine.node import Int, Socket
from engine.validate import types_compatible, validate
from engine.workflow import Link, parse_api

from . import stubs

REG = stubs.registry()


def check(prompt, targets=None):
    return validate(parse_api(prompt), REG, None, targets)


def fail(prompt, targets=None) -> WorkflowError:
    with pytest.raises(WorkflowError) as ei:
        check(prompt, targets)
    return ei.value


def errors_of(err: WorkflowError, nid: str) -> list[str]:
    return [e["type"] for e in err.node_errors[nid]["errors"]]


def simple(**show_inputs):
    return {"1": {"class_type": "Number", "inputs": {"value": 3}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0], **show_inputs}}}


# --- the happy path -------------------------------------------------------------------------------

def test_valid_workflow_coerces_constants_and_resolves_links():
    v = check({"1": {"class_type": "Number", "inputs": {"value": "7"}},
               "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": 2, "mode": "floor"}},
               "3": {"class_type": "Show", "inputs": {"value": ["2", "FLOAT"], "label": 5}}})
    nodes = v.workflow.nodes
    assert nodes["1"].inputs["value"] == 7 and isinstance(nodes["1"].inputs["value"], int)
    assert nodes["2"].inputs["factor"] == 2.0 and isinstance(nodes["2"].inputs["factor"], float)
    assert nodes["3"].inputs["label"] == "5"
    assert nodes["3"].inputs["value"] == Link("2", 0)  # output named by its label -> index
    assert v.outputs == ["3"] and v.node_errors == {}


def test_missing_widget_with_default_uses_default_and_warns():
    v = check(simple())
    assert v.workflow.nodes["2"].inputs["label"] == "x"
    assert any("label" in w for w in v.warnings)


def test_value_wrapper_and_float_link_index_are_accepted():
    v = check({"1": {"class_type": "Number", "inputs": {"value": {"__value__": 4}}},
               "2": {"class_type": "Show", "inputs": {"value": ["1", 0.0], "label": "a"}}})
    assert v.workflow.nodes["1"].inputs["value"] == 4
    assert v.workflow.nodes["2"].inputs["value"] == Link("1", 0)


@pytest.mark.parametrize("received,expected,ok", [
    ("INT", "INT", True), ("INT", "FLOAT", False), ("*", "LATENT", True), ("IMAGE", "*", True),
    ("INT", "INT,FLOAT", True), ("FLOAT,INT", "INT", True), ("MASK", "IMAGE,LATENT", False)])
def test_type_compatibility_follows_comfyui(received, expected, ok):
    assert types_compatible(received, expected) is ok


# --- every error type -----------------------------------------------------------------------------

def test_unknown_class_type_suggests_a_name():
    err = fail({"1": {"class_type": "Numbr", "inputs": {}}, "2": {"class_type": "Show", "inputs": {}}})
    assert err.error.type == "missing_node_type"
    assert err.error.extra_info == {"node_id": "1", "class_type": "Numbr", "node_title": "Numbr"}
    item = err.node_errors["1"]["errors"][0]
    assert item["type"] == "unknown_class_type"
    assert "Number" in item["extra_info"]["suggestions"] and "did you mean 'Number'" in item["details"]
    assert err.node_errors["1"]["class_type"] == "Numbr"


def test_unknown_node_still_reports_every_other_error():
    # ComfyUI stops at the unknown node; Loom answers the editor's type and still lists the other errors,
    # including those of nodes upstream of the unknown one and of outputs that do not depend on it.
    err = fail({"1": {"class_type": "Number", "inputs": {"value": "many"}},
                "2": {"class_type": "Mystery", "inputs": {"x": ["1", 0]}, "_meta": {"title": "My node"}},
                "3": {"class_type": "Show", "inputs": {"label": "a"}}})
    assert err.error.type == "missing_node_type"
    assert err.error.message == "Node 'My node' not found. The custom node may not be installed."
    assert err.error.extra_info["node_title"] == "My node"
    assert set(err.node_errors) == {"1", "2", "3"}
    assert err.node_errors["1"]["errors"][0]["type"] == "invalid_input_type"
    assert err.node_errors["2"]["errors"][0]["type"] == "unknown_class_type"
    assert err.node_errors["3"]["errors"][0]["type"] == "required_input_missing"
    assert err.node_errors["3"]["dependent_outputs"] == ["3"]


def test_required_input_missing():
    err = fail({"2": {"class_type": "Show", "inputs": {"label": "a"}}})
    assert err.error.type == "prompt_outputs_failed_validation"
    item = err.node_errors["2"]["errors"][0]
    assert item["type"] == "required_input_missing"
    assert item["extra_info"]["input_name"] == "value"
    assert err.node_errors["2"]["dependent_outputs"] == ["2"]


@pytest.mark.parametrize("value", ["seven", 1.5, True, [1, 2], {"a": 1}, None])
def test_invalid_int_values(value):
    err = fail({"1": {"class_type": "Number", "inputs": {"value": value}},
                "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
    item = err.node_errors["1"]["errors"][0]
    assert item["type"] == "invalid_input_type"
    assert item["extra_info"]["input_name"] == "value"


@pytest.mark.parametrize("value", ["x", float("inf"), float("nan"), None, [1]])
def test_invalid_float_values(value):
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": value, "mode": "floor"}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    assert errors_of(err, "2") == ["invalid_input_type"]


def test_integer_node_id_in_a_link_is_a_constant_not_a_link():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Show", "inputs": {"value": [1, 0]}}})
    item = err.node_errors["2"]["errors"][0]
    assert item["type"] == "invalid_input_type"
    assert "node id as a string" in item["details"]


def test_links_to_missing_nodes_and_outputs():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Add", "inputs": {"a": ["9", 0], "b": ["1", 3]}},
                "3": {"class_type": "Show", "inputs": {"value": ["1", "nope"]}},
                "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    assert errors_of(err, "2") == ["bad_linked_input", "bad_linked_input"]
    assert "'9'" in err.node_errors["2"]["errors"][0]["details"]
    assert "has 1 output" in err.node_errors["2"]["errors"][1]["details"]
    assert errors_of(err, "3") == ["bad_linked_input"]


def test_return_type_mismatch():
    err = fail({"1": {"class_type": "MakeTensor", "inputs": {"n": 2}},
                "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    item = err.node_errors["2"]["errors"][0]
    assert item["type"] == "return_type_mismatch"
    assert item["extra_info"]["received_type"] == "TENSOR" and item["extra_info"]["linked_node"] == ["1", 0]


def test_range_errors_carry_input_config():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": -5000}},
                "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "k": 11}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    lo, hi = err.node_errors["1"]["errors"][0], err.node_errors["2"]["errors"][0]
    assert lo["type"] == "value_smaller_than_min" and lo["extra_info"]["input_config"]["min"] == -1000
    assert hi["type"] == "value_bigger_than_max" and hi["extra_info"]["received_value"] == 11


def test_value_not_in_list_lists_short_options():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "mode": "ceil"}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    item = err.node_errors["2"]["errors"][0]
    assert item["type"] == "value_not_in_list"
    assert "floor, round" in item["details"] and item["extra_info"]["input_config"] == {"options": ["floor", "round"]}


def test_cycle_is_reported_on_the_nodes_of_the_cycle():
    err = fail({"1": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
                "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    assert errors_of(err, "1") == ["dependency_cycle"] and errors_of(err, "2") == ["dependency_cycle"]
    assert "3" not in err.node_errors  # it only inherits the failure


def test_self_loop_is_a_cycle():
    err = fail({"1": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
                "3": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
    assert errors_of(err, "1") == ["dependency_cycle"]


def test_no_output_node():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}}})
    assert err.error.type == "prompt_no_outputs"


def test_link_into_an_undeclared_input():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": 1}},
                "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "extra": ["1", 0]}}})
    assert errors_of(err, "2") == ["unknown_input"]


def test_undeclared_constant_is_ignored_with_a_warning():
    v = check(simple(label="a", colour="red"))
    assert "colour" not in v.workflow.nodes["2"].inputs
    assert any("colour" in w for w in v.warnings)


class Picky(Node):
    """Custom check: value must be even."""
    inputs = (Int("value", 0),)
    outputs = (Output("INT"),)

    @classmethod
    def check(cls, env, value):
        return None if value % 2 == 0 else {"value": "must be even"}

    def run(self, ctx, value):
        return (value,)


class BrokenCheck(Picky):
    @classmethod
    def check(cls, env, value):
        raise KeyError("oops")


def test_custom_validation_failed_and_a_crashing_check():
    reg = Registry(stubs.STUBS + [Picky, BrokenCheck])
    wf = parse_api({"1": {"class_type": "Picky", "inputs": {"value": 3}},
                    "2": {"class_type": "BrokenCheck", "inputs": {"value": 2}},
                    "3": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                    "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    with pytest.raises(WorkflowError) as ei:
        validate(wf, reg)
    item = ei.value.node_errors["1"]["errors"][0]
    assert item["type"] == "custom_validation_failed" and item["details"] == "value - must be even"
    assert ei.value.node_errors["2"]["errors"][0]["type"] == "custom_validation_failed"
    assert "KeyError" in ei.value.node_errors["2"]["errors"][0]["details"]


# --- all at once, and scope -----------------------------------------------------------------------

def test_all_errors_are_reported_at_once():
    err = fail({"1": {"class_type": "Number", "inputs": {"value": "x"}},
                "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "k": 99, "b": ["7", 0]}},
                "3": {"class_type": "Scale", "inputs": {"value": ["2", 0], "mode": "ceil", "factor": -1}},
                "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
                "5": {"class_type": "Show", "inputs": {}}})
    assert set(err.node_errors) == {"1", "2", "3", "5"}
    assert errors_of(err, "2") == ["bad_linked_input", "value_bigger_than_max"]
    assert sorted(errors_of(err, "3")) == ["value_not_in_list", "value_smaller_than_min"]
    for nid in ("1", "2", "3"):
        assert err.node_errors[nid]["dependent_outputs"] == ["4"]
    assert err.node_errors["5"]["dependent_outputs"] == ["5"]
    # the top-level details name every problem, one per line
    assert len(err.error.details.splitlines()) == 6
    d = err.to_dict()
    assert set(d) == {"error", "node_errors"}
    assert set(d["error"]) == {"type", "message", "details", "extra_info"}
    assert set(d["node_errors"]["1"]) == {"errors", "dependent_outputs", "class_type"}
    assert set(d["node_errors"]["1"]["errors"][0]) == {"type", "message", "details", "extra_info"}


def test_only_nodes_upstream_of_outputs_are_validated():
    v = check({**simple(label="a"),
               "8": {"class_type": "Add", "inputs": {"a": ["404", 0], "k": "junk"}},
               "9": {"class_type": "Number", "inputs": {}}})
    assert v.node_errors == {} and set(v.workflow.nodes) == {"1", "2"}


def test_one_bad_output_keeps_the_good_one():
    v = check({**simple(label="a"), "3": {"class_type": "Show", "inputs": {"value": ["1", 5]}}})
    assert v.outputs == ["2"]
    assert list(v.node_errors) == ["3"] and v.node_errors["3"]["dependent_outputs"] == ["3"]


def test_partial_targets_limit_validation_and_outputs():
    prompt = {**simple(label="a"), "3": {"class_type": "Show", "inputs": {"value": ["1", 5]}}}
    v = check(prompt, targets=["2"])
    assert v.outputs == ["2"] and v.node_errors == {}
    assert fail(prompt, targets=["3"]).error.type == "prompt_outputs_failed_validation"
    assert fail(prompt, targets=["1"]).error.type == "prompt_no_outputs"  # not an output node


# --- malformed files ------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,etype", [
    ([1, 2], "invalid_prompt"),
    ({"1": 5}, "invalid_node"),
    ({"1": {"inputs": {}}}, "missing_class_type"),
    ({"1": {"class_type": 3, "inputs": {}}}, "missing_class_type"),
    ({"1": {"class_type": "Number", "inputs": [1]}}, "invalid_inputs"),
    ({"1": {"class_type": "Number", "inputs": {}, "colour": 1}}, "unknown_field"),
])
def test_malformed_workflows_are_structured_errors(prompt, etype):
    with pytest.raises(WorkflowError) as ei:
        parse_api(prompt)
    assert ei.value.error.type == "invalid_prompt"
    if isinstance(prompt, dict):
        assert ei.value.node_errors["1"]["errors"][0]["type"] == etype


def test_every_malformed_node_is_reported():
    with pytest.raises(WorkflowError) as ei:
        parse_api({"1": 5, "2": {"inputs": {}}, "3": {"class_type": "Number", "inputs": {}}})
    assert set(ei.value.node_errors) == {"1", "2"}


def test_a_long_chain_validates_without_recursion():
    n = 5000
    prompt = {"0": {"class_type": "Number", "inputs": {"value": 1}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": [str(n - 1), 0]}}
    prompt["0"]["inputs"]["value"] = "bad"
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        err = fail(prompt)
        assert list(err.node_errors) == ["0"] and err.node_errors["0"]["dependent_outputs"] == ["out"]
        prompt["0"]["inputs"]["value"] = 1
        assert len(check(prompt).workflow.nodes) == n + 1
    finally:
        sys.setrecursionlimit(old)
