"""Execution: order, events in ComfyUI's vocabulary, immutability of cached values, failures and
cancellation as structured results, no recursion."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from engine import CancelToken, Executor, Node, Output, Registry, WorkflowError
from engine.graph import dependencies, execution_order
from engine.node import Int, Socket
from engine.validate import validate
from engine.workflow import parse_api

from . import stubs


@pytest.fixture(autouse=True)
def _clear_calls():
    stubs.CALLS.clear()


def run(wf, ex=None, **kw):
    ex = ex or Executor(stubs.registry())
    events = []
    r = ex.run(wf, sink=events.append, **kw)
    return r, events


def basic():
    return {"1": {"class_type": "Number", "inputs": {"value": 2}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0], "k": 1}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": "s"}}}


# --- order ----------------------------------------------------------------------------------------

def test_order_is_depth_first_per_output_and_deterministic():
    wf = {"a": {"class_type": "Number", "inputs": {"value": 1}},
          "b": {"class_type": "Number", "inputs": {"value": 2}},
          "o1": {"class_type": "Show", "inputs": {"value": ["a", 0]}},
          "x": {"class_type": "Add", "inputs": {"a": ["b", 0], "b": ["a", 0]}},
          "o2": {"class_type": "Show", "inputs": {"value": ["x", 0]}}}
    v = validate(parse_api(wf), stubs.registry())
    assert execution_order(dependencies(v.workflow.nodes), v.outputs) == ["a", "o1", "b", "x", "o2"]
    r, ev = run(wf)
    assert [e.data["node"] for e in ev if e.type == "executing"] == ["a", "o1", "b", "x", "o2"]


def test_only_what_outputs_need_runs():
    wf = {**basic(), "9": {"class_type": "Number", "inputs": {"value": 5}}}
    r, _ = run(wf)
    assert sorted(r.nodes) == ["1", "2", "3"] and r.outputs == {"3": {"text": ["s=5"]}}


def test_partial_targets_run_a_subset_of_outputs():
    wf = {**basic(), "4": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    r, _ = run(wf, targets=["4"])
    assert sorted(r.nodes) == ["1", "4"] and list(r.outputs) == ["4"]


# --- events ---------------------------------------------------------------------------------------

def test_events_order_and_fields_match_comfyui():
    r, ev = run(basic(), prompt_id="p1")
    types = [e.type for e in ev if e.type != "node_done"]
    assert types == ["execution_start", "execution_cached", "executing", "executing", "executing", "executed",
                     "execution_success"]
    assert not hasattr(ev[0], "seq")  # one sequence counter: the hub's websocket seq
    start, cached = ev[0].data, ev[1].data
    assert set(start) == {"prompt_id", "timestamp"} and isinstance(start["timestamp"], int)
    assert set(cached) == {"nodes", "prompt_id", "timestamp"} and cached["nodes"] == []
    executing = next(e.data for e in ev if e.type == "executing")
    assert executing == {"node": "1", "display_node": "1", "prompt_id": "p1"}
    executed = next(e.data for e in ev if e.type == "executed")
    assert executed == {"node": "3", "display_node": "3", "output": {"text": ["s=5"]}, "prompt_id": "p1"}
    assert set(ev[-1].data) == {"prompt_id", "timestamp"}
    done = [e.data for e in ev if e.type == "node_done"]
    assert [d["node"] for d in done] == ["1", "2", "3"]
    assert all(d["duration_ms"] >= 0 and d["cached"] is False for d in done)
    assert [m[0] for m in r.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert ev[0].to_message() == {"type": "execution_start", "data": start}


def test_cached_rerun_lists_every_node_and_resends_output_ui():
    ex = Executor(stubs.registry())
    run(basic(), ex)
    r, ev = run(basic(), ex, prompt_id="p2")
    types = [e.type for e in ev]
    assert types == ["execution_start", "execution_cached", "executed", "execution_success"]
    assert ev[1].data["nodes"] == ["1", "2", "3"]
    assert ev[2].data == {"node": "3", "display_node": "3", "output": {"text": ["s=5"]}, "prompt_id": "p2"}
    assert r.cached == ["1", "2", "3"] and r.executed == [] and stubs.CALLS == ["Number", "Add", "Show"]


def test_progress_events():
    wf = {"1": {"class_type": "Steps", "inputs": {"steps": 3, "delay": 0}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    r, ev = run(wf, prompt_id="p")
    prog = [e.data for e in ev if e.type == "progress"]
    assert prog == [{"value": i, "max": 3, "prompt_id": "p", "node": "1"} for i in (1, 2, 3)]


def test_stream_yields_events_then_the_result():
    items = list(Executor(stubs.registry()).stream(basic()))
    assert items[0].type == "execution_start" and items[-1].status == "success"


def test_stream_forwards_workflow_errors():
    with pytest.raises(WorkflowError):
        list(Executor(stubs.registry()).stream({"1": {"class_type": "Nope", "inputs": {}}}))


# --- immutability ---------------------------------------------------------------------------------

def test_a_node_mutating_a_dict_input_cannot_corrupt_the_cache():
    ex = Executor(stubs.registry())
    base = {"1": {"class_type": "MakeDict", "inputs": {"n": 3}},
            "2": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}}}
    r, _ = run(base, ex)
    assert r.outputs["2"] == {"text": ["{'samples': [0, 1, 2]}"]}
    bad = {**base, "3": {"class_type": "MutateDict", "inputs": {"latent": ["1", 0]}},
           "4": {"class_type": "ShowAny", "inputs": {"value": ["3", 0]}}}
    r, _ = run(bad, ex)
    assert r.status == "success"  # it only changed its own copy
    assert r.outputs["4"] == {"text": ["{'samples': [0, 1, 2, 99], 'extra': True}"]}
    r, _ = run({**base, "2": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}, "_meta": {}},
                "5": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}}}, ex)
    assert r.nodes["1"].status == "cached"
    assert r.outputs["5"] == {"text": ["{'samples': [0, 1, 2]}"]}


def test_a_node_mutating_a_tensor_input_fails_and_the_corrupt_entry_is_evicted():
    ex = Executor(stubs.registry())
    make = {"1": {"class_type": "MakeTensor", "inputs": {"n": 2}}}
    r, _ = run({**make, "2": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}}}, ex)
    assert r.outputs["2"] == {"text": ["[1, 1]"]}
    r, ev = run({**make, "3": {"class_type": "MutateTensor", "inputs": {"t": ["1", 0]}},
                 "4": {"class_type": "ShowAny", "inputs": {"value": ["3", 0]}}}, ex)
    assert r.status == "error" and r.error["node_id"] == "3"
    assert r.error["exception_type"] == "engine.errors.InputMutated"
    assert "modified its input(s) t in place" in r.error["exception_message"]
    r, _ = run({**make, "5": {"class_type": "Size", "inputs": {"t": ["1", 0]}}}, ex)  # a new consumer
    assert r.nodes["1"].status == "executed" and r.nodes["1"].reason == "evicted from cache"
    assert r.outputs["5"] == {"text": ["2"]}
    r, _ = run({**make, "6": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}}}, ex)
    assert r.outputs["6"] == {"text": ["[1, 1]"]}  # fresh ones, not [2, 2]


def test_mutation_is_caught_even_if_the_node_then_raises():
    class MutateThenRaise(Node):
        inputs = (Socket("t", "TENSOR"),)
        outputs = (Output("TENSOR"),)

        def run(self, ctx, t):
            t.add_(5)
            raise RuntimeError("after the damage")

    ex = Executor(Registry(stubs.STUBS + [MutateThenRaise]))
    make = {"1": {"class_type": "MakeTensor", "inputs": {"n": 1}}}
    run({**make, "2": {"class_type": "ShowAny", "inputs": {"value": ["1", 0]}}}, ex)
    r, _ = run({**make, "3": {"class_type": "MutateThenRaise", "inputs": {"t": ["1", 0]}},
                "4": {"class_type": "ShowAny", "inputs": {"value": ["3", 0]}}}, ex)
    assert r.status == "error"
    r, _ = run({**make, "5": {"class_type": "Size", "inputs": {"t": ["1", 0]}},
                "6": {"class_type": "MutateTensor", "inputs": {"t": ["1", 0]}},
                "7": {"class_type": "ShowAny", "inputs": {"value": ["6", 0]}}}, ex)
    assert r.nodes["1"].status == "executed"  # the corrupt entry was evicted
    assert r.nodes["6"].status == "failed"


# --- failures -------------------------------------------------------------------------------------

def test_a_raising_node_gives_execution_error_with_comfyui_fields():
    ex = Executor(stubs.registry())
    wf = {"1": {"class_type": "Number", "inputs": {"value": 4}},
          "2": {"class_type": "Boom", "inputs": {"value": ["1", 0]}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    r, ev = run(wf, ex, prompt_id="e")
    assert r.status == "error"
    assert [e.type for e in ev if e.type not in ("node_done",)][-1] == "execution_error"
    data = ev[-1].data
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                         "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert data["node_id"] == "2" and data["node_type"] == "Boom" and data["executed"] == ["1"]
    assert data["exception_message"] == "boom\n" and data["exception_type"] == "ValueError"
    assert isinstance(data["traceback"], list) and "raise ValueError" in "".join(data["traceback"])
    assert data["current_inputs"] == {"value": [4]}
    assert r.nodes["2"].status == "failed" and r.nodes["3"].status != "executed"
    assert r.messages[-1][0] == "execution_error"
    # outputs computed before the failure stay cached; the process is fine and runs again
    r2, _ = run(basic(), ex)
    assert r2.status == "success" and r2.nodes["1"].status == "executed"  # value 2, not 4
    r3, _ = run({"1": wf["1"], "9": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, ex)
    assert r3.nodes["1"].status == "cached"


def test_wrong_number_of_outputs_is_a_node_error():
    class Bad(Node):
        outputs = (Output("INT"), Output("INT"))

        def run(self, ctx):
            return (1,)

    r, _ = run({"1": {"class_type": "Bad", "inputs": {}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 1]}}},
               Executor(Registry(stubs.STUBS + [Bad])))
    assert r.status == "error" and "declares 2 output(s)" in r.error["exception_message"]


def test_a_raising_event_sink_is_the_callers_problem():
    def sink(e):
        if e.type == "execution_success":
            raise BrokenPipeError("consumer went away")

    with pytest.raises(BrokenPipeError):
        Executor(stubs.registry()).run(basic(), sink=sink)


# --- cancellation ---------------------------------------------------------------------------------

def test_cancel_between_nodes():
    cancel = CancelToken()

    def sink(e):
        if e.type == "node_done" and e.data["node"] == "1":
            cancel.cancel()

    r = Executor(stubs.registry()).run(basic(), sink=sink, cancel=cancel)
    assert r.status == "interrupted"
    assert r.messages[-1][0] == "execution_interrupted"
    data = r.messages[-1][1]
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert data["node_id"] == "2" and data["node_type"] == "Add" and data["executed"] == ["1"]


def test_cancel_inside_a_long_node():
    cancel = CancelToken()
    wf = {"1": {"class_type": "Steps", "inputs": {"steps": 2000, "delay": 0.005}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    ex = Executor(stubs.registry())
    threading.Timer(0.1, cancel.cancel).start()
    t0 = time.perf_counter()
    r = ex.run(wf, cancel=cancel)
    assert time.perf_counter() - t0 < 5
    assert r.status == "interrupted" and r.messages[-1][1]["node_id"] == "1"
    assert r.nodes["1"].status == "failed" and r.nodes["1"].reason == "interrupted"
    assert len(ex.cache) == 0
    r = ex.run({"1": {"class_type": "Steps", "inputs": {"steps": 2, "delay": 0}}, "2": wf["2"]})
    assert r.status == "success"  # a fresh token: the executor is fine


# --- scale ----------------------------------------------------------------------------------------

def test_a_5000_node_chain_runs_and_reruns_without_recursion():
    n = 5000
    wf = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    for i in range(1, n):
        wf[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "k": 1}}
    wf["out"] = {"class_type": "Show", "inputs": {"value": [str(n - 1), 0], "label": "n"}}
    ex = Executor(stubs.registry())
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        r = ex.run(wf)
        assert r.status == "success" and r.outputs["out"] == {"text": [f"n={n - 1}"]}
        assert len(r.executed) == n + 1
        r = ex.run(wf)
        assert r.executed == [] and len(r.cached) == n + 1
        wf["2500"]["inputs"]["k"] = 2
        r = ex.run(wf)
        assert len(r.executed) == n - 2500 + 1 and r.outputs["out"] == {"text": [f"n={n}"]}
    finally:
        sys.setrecursionlimit(old)


def test_hidden_inputs_are_injected():
    class Hidden(Node):
        output_node = True
        hidden = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID")

        def run(self, ctx, prompt, extra_pnginfo, unique_id):
            from engine import Result
            return Result(ui={"text": [sorted(prompt), extra_pnginfo, unique_id]})

    wf = {"h": {"class_type": "Hidden", "inputs": {}}}
    r, _ = run(wf, Executor(Registry([Hidden])), extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    assert r.outputs["h"] == {"text": [["h"], {"workflow": {"w": 1}}, "h"]}
