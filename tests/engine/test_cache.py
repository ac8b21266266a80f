"""The output cache: structural keys (never node ids), byte budget with LRU eviction, and
"why did this node run" reasons."""
from __future__ import annotations

import math

import pytest

from engine import Executor, Registry
from engine.cache import OutputCache, node_key

from . import stubs


@pytest.fixture(autouse=True)
def _clear_calls():
    stubs.CALLS.clear()


def chain(value=3, k=1, factor=2.0, ids=("1", "2", "3", "4")):
    a, b, c, d = ids
    return {a: {"class_type": "Number", "inputs": {"value": value}},
            b: {"class_type": "Add", "inputs": {"a": [a, 0], "k": k}},
            c: {"class_type": "Scale", "inputs": {"value": [b, 0], "factor": factor, "mode": "floor"}},
            d: {"class_type": "Show", "inputs": {"value": [c, 0], "label": "v"}}}


# --- keys -----------------------------------------------------------------------------------------

def test_key_ignores_constant_order_and_node_ids():
    k1 = node_key("Add", "1", {"k": 1, "x": {"b": 1, "a": 2}}, {"a": (b"u" * 16, 0)})
    k2 = node_key("Add", "1", {"x": {"a": 2, "b": 1}, "k": 1}, {"a": (b"u" * 16, 0)})
    assert k1 == k2 and len(k1) == 16


@pytest.mark.parametrize("change", [
    dict(class_type="Sub"), dict(version="2"), dict(constants={"k": 2}), dict(constants={"k": 1.0 + 1e-9}),
    dict(links={"a": (b"v" * 16, 0)}), dict(links={"a": (b"u" * 16, 1)}), dict(fingerprint="abc")])
def test_key_changes_with_every_component(change):
    base = dict(class_type="Add", version="1", constants={"k": 1}, links={"a": (b"u" * 16, 0)})
    assert node_key(**base) != node_key(**{**base, **change})


def test_nan_fingerprint_never_repeats_and_big_ints_are_fine():
    assert node_key("A", "1", {}, {}, math.nan) != node_key("A", "1", {}, {}, math.nan)
    assert node_key("A", "1", {"seed": 2**64 - 1}, {}) == node_key("A", "1", {"seed": 2**64 - 1}, {})
    assert node_key("A", "1", {"seed": 2**70}, {}) != node_key("A", "1", {"seed": 2**70 + 1}, {})


def test_identical_subgraph_under_other_ids_hits_the_cache():
    ex = Executor(stubs.registry())
    first = ex.run(chain())
    assert first.status == "success" and sorted(first.executed) == ["1", "2", "3", "4"]
    again = ex.run(chain(ids=("a", "b", "c", "d")))
    assert again.executed == [] and sorted(again.cached) == ["a", "b", "c", "d"]
    assert again.outputs == {"d": {"text": ["v=8.0"]}}


def test_identical_subgraph_inside_a_bigger_workflow_hits_the_cache():
    ex = Executor(stubs.registry())
    ex.run(chain())
    bigger = {**chain(ids=("10", "11", "12", "13")),
              "14": {"class_type": "Add", "inputs": {"a": ["11", 0], "k": 5}},
              "15": {"class_type": "Show", "inputs": {"value": ["14", 0]}}}
    r = ex.run(bigger)
    assert sorted(r.executed) == ["14", "15"]
    assert r.nodes["13"].status == "cached"


def test_changing_one_constant_reruns_only_downstream_and_names_the_input():
    ex = Executor(stubs.registry())
    ex.run(chain())
    r = ex.run(chain(k=2))
    assert r.nodes["1"].status == "cached"
    assert sorted(r.executed) == ["2", "3", "4"]
    assert r.nodes["2"].reason == "input 'k' changed"
    assert r.nodes["3"].reason == "upstream 'value' changed"
    assert r.nodes["4"].reason == "upstream 'value' changed"
    r = ex.run(chain(k=2, factor=3.0))
    assert sorted(r.executed) == ["3", "4"] and r.nodes["3"].reason == "input 'factor' changed"


def test_first_run_reason_is_new_and_eviction_is_named():
    ex = Executor(stubs.registry())
    r = ex.run(chain())
    assert {n.reason for n in r.nodes.values()} == {"new"}
    ex.free()
    r = ex.run(chain())
    assert {n.reason for n in r.nodes.values()} == {"evicted from cache"}


def test_upstream_of_a_cached_node_is_not_touched():
    ex = Executor(stubs.registry())
    ex.run(chain())
    # Evict the Number node's entry only: Show is still cached, so nothing needs Number.
    ex.cache.discard(next(iter(ex.cache._entries)))
    r = ex.run(chain())
    assert r.executed == [] and r.nodes["1"].status == "skipped"


# --- budget and LRU -------------------------------------------------------------------------------

def test_lru_eviction_under_a_byte_budget():
    c = OutputCache(budget_bytes=100)
    assert c.put(b"a", (1,), None, 40) and c.put(b"b", (2,), None, 40)
    c.get(b"a")  # a is now most recently used
    c.put(b"c", (3,), None, 40)  # evicts b
    assert b"a" in c and b"c" in c and b"b" not in c
    assert c.bytes == 80 and c.peak_bytes == 80 and c.evictions == 1
    assert not c.put(b"huge", (0,), None, 101) and b"huge" not in c  # larger than the whole budget
    c.put(b"a", (9,), None, 10)  # replacing an entry re-counts its bytes
    assert c.bytes == 50
    s = c.stats()
    assert s["entries"] == 2 and s["budget"] == 100 and s["hits"] == 1


def test_tensor_bytes_count_against_the_budget():
    ex = Executor(stubs.registry(), cache=OutputCache(budget_bytes=10_000))
    wf = lambda n, show="Size": {"1": {"class_type": "MakeTensor", "inputs": {"n": n}},
                                 "2": {"class_type": show, "inputs": {"t": ["1", 0]} if show == "Size"
                                       else {"value": ["1", 0]}}}
    ex.run(wf(1000))  # 8,000 bytes of tensor
    assert 8000 <= ex.cache.bytes <= 10_000
    ex.run(wf(900))  # 7,200 more: the first tensor (least recently used) must go
    assert ex.cache.bytes <= 10_000 and ex.cache.evictions >= 1
    r = ex.run(wf(1000))  # the output node's small entry survived: nothing upstream is needed
    assert r.executed == [] and r.nodes["1"].status == "skipped"
    r = ex.run(wf(1000, show="ShowAny"))  # a new consumer needs the evicted tensor again
    assert r.nodes["1"].status == "executed" and r.nodes["1"].reason == "evicted from cache"
    r = ex.run(wf(20_000))  # larger than the budget: runs fine, just isn't cached
    assert r.status == "success" and ex.cache.bytes <= 10_000
    assert ex.cache.peak_bytes <= 10_000


# --- not idempotent and fingerprints --------------------------------------------------------------

def test_not_idempotent_nodes_always_run_and_so_does_everything_downstream():
    ex = Executor(stubs.registry())
    wf = {"1": {"class_type": "Dice", "inputs": {}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    a = ex.run(wf)
    b = ex.run(wf)
    assert sorted(b.executed) == ["1", "2", "3"]
    assert b.nodes["1"].reason == "not idempotent: always runs"
    assert a.outputs != b.outputs
    assert len(ex.cache) == 4  # Add and Show of each run are stored, Dice never


def test_fingerprint_reruns_only_when_the_file_changes(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("5")
    ex = Executor(stubs.registry())
    wf = {"1": {"class_type": "FileValue", "inputs": {"path": str(f)}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert ex.run(wf).outputs["2"] == {"text": ["x=5"]}
    assert ex.run(wf).executed == []
    f.write_text("6")
    r = ex.run(wf)
    assert r.outputs["2"] == {"text": ["x=6"]}
    assert r.nodes["1"].reason == "fingerprint changed (external content changed)"


def test_a_failing_fingerprint_means_always_rerun(tmp_path):
    ex = Executor(stubs.registry())
    wf = {"1": {"class_type": "FileValue", "inputs": {"path": str(tmp_path / "missing")}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    r = ex.run(wf)  # fingerprint raises -> NaN; run() then fails: a node error, not a crash
    assert r.status == "error" and r.error["node_id"] == "1"
    assert r.error["exception_type"] == "FileNotFoundError"
    assert "fingerprint raised FileNotFoundError" in r.warnings[-1]


def test_a_raising_fingerprint_is_reported_and_its_output_never_cached(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("5")

    class Flaky(stubs.FileValue):
        """FileValue whose fingerprint always raises."""

        @classmethod
        def fingerprint(cls, env, path):
            raise ValueError("no hash today")

    ex = Executor(Registry([Flaky, stubs.Show]))
    wf = {"1": {"class_type": "Flaky", "inputs": {"path": str(f)}},
          "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": "x"}}}
    first, second = ex.run(wf), ex.run(wf)
    assert first.status == second.status == "success"
    assert second.executed == ["1", "2"] and second.cached == []  # a NaN key never repeats downstream either
    assert ex.cache.misses == 4 and len(ex.cache) == 2  # Show stored (twice, other keys), Flaky never
    assert second.warnings == ["node 1 (Flaky): fingerprint raised ValueError: no hash today; the node runs "
                               "and its output is not cached"]


def test_cache_counts_misses_for_needed_outputs_and_hits_for_reads():
    ex = Executor(stubs.registry())
    wf = {"1": {"class_type": "Number", "inputs": {"value": 2}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "k": 1}},
          "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": "x"}}}
    ex.run(wf)
    assert (ex.cache.hits, ex.cache.misses) == (0, 3)
    ex.run(wf)  # the output is cached: only its entry is read, nothing upstream is looked at
    assert (ex.cache.hits, ex.cache.misses) == (1, 3)
    wf["3"]["inputs"]["label"] = "y"  # Show reruns and reads Add's cached value
    ex.run(wf)
    assert (ex.cache.hits, ex.cache.misses) == (2, 4)
    assert ex.cache.stats()["misses"] == 4
