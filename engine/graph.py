"""Graph walks over a workflow's links: dependencies, order, reachability, consumers, cycles.

One module for every walk the executor and validation need. A graph is given as ``deps``: node id
-> the source node ids of its links, in input order (a source may repeat). Every walk is iterative
(explicit stacks), so a 100,000-node chain needs no recursion. These hand-written walks are kept
over networkx because they are faster at 10,000 nodes (measured in ``bench/engine.py``, part d:
building a networkx DiGraph alone costs more than the whole walk here).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .workflow import Link, NodeSpec

Deps = Mapping[str, list[str]]


def dependencies(nodes: Mapping[str, NodeSpec], within: Mapping[str, object] | None = None) -> dict[str, list[str]]:
    """Node id -> source ids of its links. With ``within``, only nodes (and sources) in it count;
    without it, every link counts, whether or not its source exists."""
    if within is None:
        return {nid: [v.node for v in spec.inputs.values() if type(v) is Link] for nid, spec in nodes.items()}
    return {nid: [v.node for v in nodes[nid].inputs.values() if type(v) is Link and v.node in within]
            for nid in within}


def execution_order(deps: Deps, outputs: Iterable[str]) -> list[str]:
    """Depth-first post-order over dependencies, output by output: deterministic, linear, and the
    first output's ancestry completes first. Every node appears after all its sources."""
    order: list[str] = []
    state: set[str] = set()
    for o in outputs:
        if o in state:
            continue
        state.add(o)
        stack = [(o, iter(deps[o]))]
        while stack:
            nid, it = stack[-1]
            for dep in it:
                if dep not in state:
                    state.add(dep)
                    stack.append((dep, iter(deps[dep])))
                    break
            else:
                stack.pop()
                order.append(nid)
    return order


def upstream(deps: Deps, starts: Iterable[str], stop: set | frozenset = frozenset()) -> dict[str, None]:
    """Every node reachable from ``starts`` through dependencies (the starts included), as an
    insertion-ordered dict; nodes missing from ``deps`` are left out, and nodes in ``stop`` are
    included but not walked through."""
    seen: dict[str, None] = {}
    stack = list(reversed(list(starts)))
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in deps:
            continue
        seen[nid] = None
        if nid in stop:
            continue
        for d in deps[nid]:
            if d not in seen:
                stack.append(d)
    return seen


def consumers(deps: Deps) -> dict[str, list[str]]:
    """Source id -> the nodes that read it (once per link)."""
    out: dict[str, list[str]] = {}
    for nid, srcs in deps.items():
        for s in srcs:
            out.setdefault(s, []).append(nid)
    return out


def downstream(cons: Mapping[str, list[str]], start: str) -> set[str]:
    """``start`` and every node that reads it, directly or not (``cons`` from ``consumers``)."""
    seen = {start}
    stack = [start]
    while stack:
        for c in cons.get(stack.pop(), ()):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def cycle_nodes(deps: Deps) -> list[str]:
    """The nodes that lie on a cycle, sorted. Kahn's algorithm finds what never becomes ready (the
    cycles and everything downstream of them); Tarjan's strongly connected components of that rest
    then keep only the nodes actually on a cycle."""
    indeg: dict[str, int] = {}
    cons: dict[str, list[str]] = {}
    for nid, srcs in deps.items():
        k = 0
        for s in srcs:
            if s in deps:
                k += 1
                c = cons.get(s)
                if c is None:
                    cons[s] = [nid]
                else:
                    c.append(nid)
        indeg[nid] = k
    ready = [n for n, d in indeg.items() if d == 0]
    while ready:
        n = ready.pop()
        for c in cons.get(n, ()):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    left = {n for n, d in indeg.items() if d > 0}
    if not left:
        return []
    sub = {n: [s for s in deps[n] if s in left] for n in left}
    on_cycle: set[str] = set()
    for comp in strongly_connected(sub):
        if len(comp) > 1 or comp[0] in sub[comp[0]]:
            on_cycle.update(comp)
    return sorted(on_cycle)


def strongly_connected(deps: Deps) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for root in deps:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(deps[root]))]
        while work:
            nid, it = work[-1]
            for d in it:
                if d not in deps:
                    continue
                if d not in index:
                    index[d] = low[d] = counter
                    counter += 1
                    stack.append(d)
                    on_stack.add(d)
                    work.append((d, iter(deps[d])))
                    break
                if d in on_stack:
                    low[nid] = min(low[nid], index[d])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[nid])
                if low[nid] == index[nid]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.append(x)
                        if x == nid:
                            break
                    comps.append(comp)
    return comps
