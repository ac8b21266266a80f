"""engine.graph: order, reachability, consumers and cycles, checked against brute force on small
graphs and for depth on a 100,000-node chain (no recursion)."""
from __future__ import annotations

import itertools
import random
import sys

from engine import graph
from engine.workflow import Link, NodeSpec


def spec(nid, *srcs):
    return NodeSpec(nid, "X", {f"in{i}": Link(s, 0) for i, s in enumerate(srcs)} | {"c": 1})


def random_dag(n, seed, p=0.3):
    rnd = random.Random(seed)
    return {str(i): [str(j) for j in range(i) if rnd.random() < p] for i in range(n)}


def test_dependencies_list_link_sources_in_input_order_and_can_be_restricted():
    nodes = {"a": spec("a"), "b": spec("b", "a", "a", "zz"), "c": spec("c", "b")}
    assert graph.dependencies(nodes) == {"a": [], "b": ["a", "a", "zz"], "c": ["b"]}
    assert graph.dependencies(nodes, {"b": None, "c": None}) == {"b": [], "c": ["b"]}


def test_order_puts_every_node_after_its_sources_and_only_needed_nodes():
    for seed in range(20):
        deps = random_dag(30, seed)
        outs = [str(i) for i in (29, 17, 5)]
        order = graph.execution_order(deps, outs)
        pos = {n: i for i, n in enumerate(order)}
        assert len(pos) == len(order)
        assert set(order) == set(graph.upstream(deps, outs))
        assert all(pos[s] < pos[n] for n in order for s in deps[n])


def test_upstream_stops_at_stop_nodes_and_skips_missing_ones():
    deps = {"a": [], "b": ["a"], "c": ["b", "missing"], "d": ["c"]}
    assert list(graph.upstream(deps, ["d"])) == ["d", "c", "b", "a"]
    assert set(graph.upstream(deps, ["d"], stop={"c"})) == {"d", "c"}


def test_consumers_and_downstream_match_brute_force():
    deps = random_dag(25, 3)
    cons = graph.consumers(deps)
    for n in deps:
        expect = {m for m in deps if n in graph.upstream(deps, [m])}
        assert graph.downstream(cons, n) == expect
        assert sorted(cons.get(n, [])) == sorted(m for m in deps for s in deps[m] if s == n)


def test_cycle_nodes_are_exactly_the_nodes_on_a_cycle():
    deps = {"a": ["c"], "b": ["a"], "c": ["b"],  # a 3-cycle
            "d": ["c"], "e": ["d"],               # downstream of it: not on it
            "s": ["s"],                            # a self loop
            "x": [], "y": ["x"]}
    assert graph.cycle_nodes(deps) == ["a", "b", "c", "s"]
    assert graph.cycle_nodes(random_dag(40, 1)) == []
    for seed in range(10):  # random graphs with back edges, against a brute-force reachability check
        rnd = random.Random(seed)
        deps = {str(i): [str(j) for j in range(12) if rnd.random() < 0.12] for i in range(12)}
        cons = graph.consumers(deps)
        expect = sorted(n for n in deps if any(n in graph.downstream(cons, c) for c in cons.get(n, ())))
        assert graph.cycle_nodes(deps) == expect


def test_strongly_connected_components_partition_the_nodes():
    deps = {"a": ["b"], "b": ["a"], "c": ["b"], "d": []}
    comps = [sorted(c) for c in graph.strongly_connected(deps)]
    assert sorted(comps) == [["a", "b"], ["c"], ["d"]]
    assert sorted(itertools.chain.from_iterable(comps)) == ["a", "b", "c", "d"]


def test_walks_do_not_recurse_on_a_100k_chain():
    n = 100_000
    deps = {str(i): [str(i - 1)] if i else [] for i in range(n)}
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        order = graph.execution_order(deps, [str(n - 1)])
        assert order[0] == "0" and order[-1] == str(n - 1) and len(order) == n
        assert len(graph.downstream(graph.consumers(deps), "0")) == n
        deps["0"] = [str(n - 1)]  # close the chain into one big cycle
        assert len(graph.cycle_nodes(deps)) == n
    finally:
        sys.setrecursionlimit(old)
