"""The executor: validated workflow in, events and outputs out. Pure: no HTTP, no terminal.

``plan`` decides everything before a node runs: the order (``graph.execution_order``: depth-first
post-order from each requested output in turn, so the first output completes first), structural
cache keys along it, and what runs versus what is read from the cache. ``_run`` walks the plan and
emits events; ``_execute_node`` runs one node. Error envelopes come from ``errors``.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

from .cache import Entry, OutputCache, node_key
from .context import CancelToken, Env, NodeContext
from . import budget, graph
from .errors import InputMutated, Interrupted, execution_error, type_name
from .events import Event, EventSink, HISTORY_TYPES, discard, now_ms
from .node import Node, Registry, Result
from .validate import Validated, validate
from .values import Versions, isolate, nbytes
from .workflow import Link, Workflow, parse_api

NAN = float("nan")


@dataclass
class NodeRecord:
    class_type: str
    status: str  # "cached" | "executed" | "failed" | "skipped"
    reason: str = ""
    duration_ms: float = 0.0


@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict] = field(default_factory=dict)  # output node id -> ui dict
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    messages: list = field(default_factory=list)  # [[event_type, data]] for history
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def executed(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.status == "executed"]

    @property
    def cached(self) -> list[str]:
        return [n for n, r in self.nodes.items() if r.status == "cached"]


def _overrides(cls: type[Node], name: str) -> bool:
    return getattr(cls, name).__func__ is not getattr(Node, name).__func__


@dataclass
class Plan:
    """What a run will do, decided before anything runs.

    ``keys`` are the structural cache keys along ``order``; ``parts`` what each key was made of
    (for "why did it run" reasons); ``execute`` the nodes that run; ``cached`` every needed node whose
    output is in the cache (ComfyUI lists them all); ``reads`` how many executing nodes read each
    node's output (a value is freed when its count reaches 0); ``volatile`` the nodes never stored or
    served (a NaN fingerprint); ``warnings`` what planning noticed (a fingerprint that raised).
    """

    order: list[str]
    deps: dict[str, list[str]]
    keys: dict[str, bytes]
    parts: dict[str, tuple]
    volatile: set[str]
    execute: set[str]
    cached: set[str]
    reads: dict[str, int]
    warnings: list[str] = field(default_factory=list)


class Executor:
    """Runs workflows against a registry, sharing one output cache across runs."""

    def __init__(self, registry: Registry, env: Env | None = None, cache: OutputCache | None = None,
                 history_limit: int = 100_000, memory_budget: int | None = None):
        self.registry = registry
        self.memory_budget = memory_budget if memory_budget is not None else budget.default_budget()
        self.env = env or Env()
        self.cache = cache if cache is not None else OutputCache()
        self._last: OrderedDict[tuple[str, str], tuple] = OrderedDict()  # for "why did it run"
        self._last_limit = history_limit
        self._stored: OrderedDict[bytes, None] = OrderedDict()  # keys computed before (evicted or not)
        self._lock = threading.Lock()

    # -- validation ---------------------------------------------------------------------------
    def prepare(self, workflow: Workflow | dict, targets: list[str] | None = None) -> Validated:
        wf = workflow if isinstance(workflow, Workflow) else parse_api(workflow)
        return validate(wf, self.registry, self.env, targets)

    # -- execution ----------------------------------------------------------------------------
    def run(self, workflow: Workflow | dict | Validated, *, prompt_id: str | None = None,
            targets: list[str] | None = None, sink: EventSink = discard,
            cancel: CancelToken | None = None, extra_data: dict | None = None) -> RunResult:
        """Validate (unless given a ``Validated``) and run. Raises ``WorkflowError`` when the
        workflow cannot run at all; node failures are reported in the result, never raised."""
        v = workflow if isinstance(workflow, Validated) else self.prepare(workflow, targets)
        with self._lock:
            return self._run(v, prompt_id or str(uuid.uuid4()), sink, cancel or CancelToken(),
                             {**v.workflow.extra_data, **(extra_data or {})})

    def stream(self, workflow: Workflow | dict, **kw) -> Iterator[Event | RunResult]:
        """Run in a background thread, yielding events and finally the RunResult (for workers
        such as a Ray actor that forward events)."""
        import queue

        q: queue.Queue = queue.Queue()
        done = object()

        def work():
            try:
                q.put(self.run(workflow, sink=q.put, **kw))
            except BaseException as e:  # forwarded to the consumer
                q.put(e)
            q.put(done)

        threading.Thread(target=work, daemon=True, name="loom-stream").start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- planning -----------------------------------------------------------------------------
    def plan(self, v: Validated) -> Plan:
        """Order, cache keys and the cache plan for a validated workflow. Keys are computed along
        the order; a backward pass from the outputs that stops at cached nodes decides what runs, so
        a cached node's upstream is never touched."""
        nodes, classes = v.workflow.nodes, v.classes
        deps = graph.dependencies(nodes)
        order = graph.execution_order(deps, v.outputs)
        keys: dict[str, bytes] = {}
        parts: dict[str, tuple] = {}
        volatile: set[str] = set()
        warnings: list[str] = []
        overriding: set[type] = set()
        plain: set[type] = set()
        for nid in order:
            spec, cls = nodes[nid], classes[nid]
            consts, links = {}, {}
            for name, val in spec.inputs.items():
                if type(val) is Link:
                    links[name] = (keys[val.node], val.output)
                else:
                    consts[name] = val
            fp = None
            if cls.not_idempotent:
                fp = NAN
            elif cls in overriding or (cls not in plain and _overrides(cls, "fingerprint")):
                overriding.add(cls)
                try:
                    fp = cls.fingerprint(self.env, **consts)
                except Exception as e:  # like ComfyUI: treated as changed, but said out loud
                    fp = NAN
                    warnings.append(f"node {nid} ({cls.class_type}): fingerprint raised {type_name(e)}: {e}; "
                                    "the node runs and its output is not cached")
            else:
                plain.add(cls)
            if isinstance(fp, float) and fp != fp:
                volatile.add(nid)
            elif "UNIQUE_ID" in cls.hidden:
                fp = [nid, fp]  # like ComfyUI: a node that sees its own id is keyed by it
            keys[nid] = node_key(cls.class_type, cls.version, consts, links, fp)
            parts[nid] = (cls.version, consts, links, fp)

        cache = self.cache
        cached = {n for n in order if keys[n] in cache}
        execute = {n for n in graph.upstream(deps, v.outputs, stop=cached) if n not in cached}
        cache.count_misses(len(execute))
        reads: dict[str, int] = {}
        for nid in execute:
            for src in deps[nid]:
                reads[src] = reads.get(src, 0) + 1
        return Plan(order, deps, keys, parts, volatile, execute, cached, reads, warnings)

    # -- running ------------------------------------------------------------------------------
    def _run(self, v: Validated, prompt_id: str, sink: EventSink, cancel: CancelToken,
             extra_data: dict) -> RunResult:
        wf, classes = v.workflow, v.classes
        nodes = wf.nodes
        result = RunResult(prompt_id, "success", node_errors=v.node_errors, warnings=list(v.warnings))

        def emit(ev: Event) -> None:
            if ev.type in HISTORY_TYPES:
                result.messages.append([ev.type, ev.data])
            elif ev.type == "warning":  # a node's run-time warning also lands in the result (history, CLI summary)
                result.warnings.append(f"node {ev.data.get('node')} ({ev.data.get('class_type')}): "
                                       f"{ev.data.get('message')}")
            sink(ev)

        emit(Event("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()}))  # first, as ComfyUI
        plan = self.plan(v)
        order, cached_set, execute, reads = plan.order, plan.cached, plan.execute, plan.reads
        result.warnings.extend(plan.warnings)
        refused = budget.precheck(nodes, classes, [n for n in order if n in execute], self.memory_budget)

        # Only cached values actually read are fetched (which also refreshes their LRU position).
        output_set = set(v.outputs)
        values: dict[str, Entry] = {}
        for nid in order:
            if nid in cached_set and (nid in output_set or nid in reads):
                values[nid] = self.cache.get(plan.keys[nid])

        emit(Event("execution_cached", {"nodes": [n for n in order if n in cached_set], "prompt_id": prompt_id,
                                        "timestamp": now_ms()}))
        done: list[str] = []
        current = None
        try:
            if refused is not None:  # a node with constant sizes cannot fit: refuse before anything allocates
                current = refused[0]
                raise refused[1]
            for nid in order:
                cls = classes[nid]
                if nid in cached_set:
                    result.nodes[nid] = NodeRecord(cls.class_type, "cached", "cached")
                    if nid in output_set:
                        ui = values[nid].ui
                        result.outputs[nid] = ui or {}
                        emit(Event("executed", {"node": nid, "display_node": nid, "output": ui,
                                                "prompt_id": prompt_id}))
                    continue
                if nid not in execute:
                    result.nodes[nid] = NodeRecord(cls.class_type, "skipped", "not needed: downstream cached")
                    continue
                current = nid
                if cancel.cancelled:
                    raise Interrupted("interrupted before node " + nid)
                emit(Event("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id}))
                entry, dt = self._execute_node(wf, nid, cls, plan, values, prompt_id, cancel, emit, extra_data)
                ui = entry.ui
                reason = self._reason(nid, cls, plan.parts[nid], plan.keys[nid])
                result.nodes[nid] = NodeRecord(cls.class_type, "executed", reason, dt)
                done.append(nid)
                if ui is not None or nid in output_set:
                    result.outputs[nid] = ui or {}
                if ui:
                    emit(Event("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": prompt_id}))
                emit(Event("node_done", {"node": nid, "class_type": cls.class_type, "prompt_id": prompt_id,
                                         "duration_ms": round(dt, 3), "cached": False, "reason": reason}))
                for src in plan.deps[nid]:  # free intermediates nobody else will read
                    left = reads[src] - 1
                    reads[src] = left
                    if left == 0 and src not in output_set:
                        values.pop(src, None)
                current = None
        except Interrupted:
            result.status = "interrupted"
            cls_name = classes[current].class_type if current else None
            if current:
                result.nodes[current] = NodeRecord(cls_name, "failed", "interrupted")
            self._not_reached(result, order, classes, f"run interrupted at node {current}")
            emit(Event("execution_interrupted", {"prompt_id": prompt_id, "node_id": current, "node_type": cls_name,
                                                 "executed": list(done), "timestamp": now_ms()}))
            return result
        except Exception as e:  # a failing node fails its prompt, never the process
            if current is None:  # not a node's fault (an event sink raised): the caller's problem
                raise
            result.status = "error"
            spec, cls = nodes[current], classes[current]
            result.nodes[current] = NodeRecord(cls.class_type, "failed", f"{type(e).__name__}: {e}")
            inputs = {k: [_fmt(values[x.node].outputs[x.output] if type(x) is Link and x.node in values else x)]
                      for k, x in spec.inputs.items()}
            result.error = execution_error(prompt_id, e, current, cls.class_type, done, inputs, order)
            item = getattr(e, "error_item", None)  # a run-time check: validation's error shape too
            if item is not None:
                result.node_errors = {**result.node_errors, current: {
                    "errors": [item.to_dict()], "dependent_outputs": [], "class_type": cls.class_type}}
            self._not_reached(result, order, classes, f"run failed at node {current}")
            emit(Event("execution_error", result.error))
            return result
        emit(Event("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()}))
        return result

    def _execute_node(self, wf: Workflow, nid: str, cls: type[Node], plan: Plan, values: dict[str, Entry],
                      prompt_id: str, cancel: CancelToken, emit: EventSink, extra_data: dict) -> tuple[Entry, float]:
        """Run one node: assemble its arguments (isolated copies of containers), call it, refuse an
        input written in place (and drop that corrupt upstream value from the cache), store the
        outputs. Returns the entry and the node's duration in ms; raises what the node raised."""
        spec = wf.nodes[nid]
        kwargs: dict[str, Any] = {}
        linked: dict[str, Any] = {}
        for name, val in spec.inputs.items():
            if type(val) is Link:
                kwargs[name] = linked[name] = isolate(values[val.node].outputs[val.output])
            else:
                kwargs[name] = isolate(val)
        for h in cls.hidden:
            if h == "PROMPT":
                kwargs["prompt"] = wf.prompt
            elif h == "EXTRA_PNGINFO":
                kwargs["extra_pnginfo"] = extra_data.get("extra_pnginfo")
            elif h == "UNIQUE_ID":
                kwargs["unique_id"] = nid
        if linked:
            budget.check_linked(cls, linked)  # validation saw only constants
        budget.check_memory(cls, kwargs, self.memory_budget, nid)  # before the node allocates
        versions = Versions(linked) if linked else None
        ctx = NodeContext(self.env, prompt_id, nid, cls.class_type, cancel, emit)
        t0 = time.perf_counter()
        try:
            outputs, ui = _normalize(cls, cls().run(ctx, **kwargs))
        finally:  # also when the node raised after writing into an input
            bad = versions.mutated() if versions is not None else ()
            for name in bad:  # the shared upstream value is corrupt: never serve it again
                src = spec.inputs[name].node
                self.cache.discard(plan.keys[src])
                values.pop(src, None)
        dt = (time.perf_counter() - t0) * 1000.0
        if bad:
            raise InputMutated(f"{cls.class_type} modified its input(s) {', '.join(bad)} in place; "
                               "nodes must copy a value before changing it")
        entry = Entry(outputs, ui, nbytes(outputs) + (nbytes(ui) if ui else 0))
        if nid not in plan.volatile:
            self.cache.put(plan.keys[nid], outputs, ui, entry.nbytes)
        values[nid] = entry
        return entry, dt

    @staticmethod
    def _not_reached(result: RunResult, order: list[str], classes: dict, why: str) -> None:
        for n in order:
            if n not in result.nodes:
                result.nodes[n] = NodeRecord(classes[n].class_type, "skipped", "not run: " + why)

    def _reason(self, nid: str, cls: type[Node], part: tuple, key: bytes) -> str:
        version, consts, links, fp = part
        k = (nid, cls.class_type)
        prev = self._last.get(k)
        self._last[k] = part
        self._last.move_to_end(k)
        if len(self._last) > self._last_limit:
            self._last.popitem(last=False)
        if cls.not_idempotent:
            return "not idempotent: always runs"
        stored = self._stored
        if key in stored:
            stored.move_to_end(key)
            return "evicted from cache"
        stored[key] = None
        if len(stored) > self._last_limit:
            stored.popitem(last=False)
        if prev is None:
            return "new"
        pv, pc, pl, pfp = prev
        if pv != version:
            return f"node version changed ({pv} -> {version})"
        changed = [n for n in sorted(set(consts) | set(pc)) if n not in consts or n not in pc or consts[n] != pc[n]]
        ups = [n for n in sorted(set(links) | set(pl)) if links.get(n) != pl.get(n)]
        if changed or ups:
            bits = [f"input '{n}' changed" for n in changed] + [f"upstream '{n}' changed" for n in ups]
            return "; ".join(bits)
        if isinstance(fp, float) and fp != fp:
            return "fingerprint says always re-run"
        if fp != pfp:
            return "fingerprint changed (external content changed)"
        return "evicted from cache"

    def free(self) -> None:
        """Drop every cached output (ComfyUI's /free free_memory)."""
        self.cache.clear()


def _normalize(cls: type[Node], ret: Any) -> tuple[tuple, dict | None]:
    ui = None
    if isinstance(ret, Result):
        ui, ret = ret.ui, ret.outputs
    if ret is None:
        ret = ()
    elif not isinstance(ret, (tuple, list)):
        ret = (ret,)
    ret = tuple(ret)
    if len(ret) != len(cls.outputs):
        raise TypeError(f"{cls.class_type}.run returned {len(ret)} value(s); it declares {len(cls.outputs)} output(s)")
    return ret, ui


def _fmt(x: Any) -> Any:
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x if not isinstance(x, str) or len(x) < 500 else x[:500] + "..."
    return str(x)[:500]
