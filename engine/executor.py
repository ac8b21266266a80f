"""The executor: validated workflow in, events and outputs out. Pure: no HTTP, no terminal.

Order is a depth-first post-order from each requested output in turn (deterministic, linear, and
the first output completes first). Keys are computed along that order; a backward pass from the
outputs decides what runs: a cached node's upstream is never touched. Every walk is iterative.
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

from .cache import Entry, OutputCache, node_key
from .context import CancelToken, Env, NodeContext
from .errors import InputMutated, Interrupted
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


def execution_order(wf: Workflow, outputs: list[str], deps: dict[str, list[str]] | None = None) -> list[str]:
    """Depth-first post-order over inputs, output by output (no recursion). ``deps`` maps each node
    to the source node ids of its links (computed here if not given)."""
    if deps is None:
        deps = {nid: [v.node for v in spec.inputs.values() if type(v) is Link] for nid, spec in wf.nodes.items()}
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


class Executor:
    """Runs workflows against a registry, sharing one output cache across runs."""

    def __init__(self, registry: Registry, env: Env | None = None, cache: OutputCache | None = None,
                 history_limit: int = 100_000):
        self.registry = registry
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

        deps = {nid: [x.node for x in spec.inputs.values() if type(x) is Link] for nid, spec in nodes.items()}
        order = execution_order(wf, v.outputs, deps)
        keys: dict[str, bytes] = {}
        parts: dict[str, tuple] = {}
        volatile: set[str] = set()  # NaN fingerprint: never stored, never served
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
                except Exception:
                    fp = NAN
            else:
                plain.add(cls)
            if isinstance(fp, float) and fp != fp:
                volatile.add(nid)
            elif "UNIQUE_ID" in cls.hidden:
                fp = [nid, fp]  # like ComfyUI: a node that sees its own id is keyed by it
            keys[nid] = node_key(cls.class_type, cls.version, consts, links, fp)
            parts[nid] = (cls.version, consts, links, fp)

        # Backward pass: what runs, what is read from cache.
        cache = self.cache
        execute: set[str] = set()
        stack = list(v.outputs)
        seen: set[str] = set()
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            if keys[nid] in cache:
                continue
            execute.add(nid)
            stack.extend(deps[nid])
        # Every needed node whose output is in the cache counts as cached (ComfyUI lists them all),
        # but only values actually read are fetched (which also refreshes their LRU position).
        cached_set = {n for n in order if n not in execute and keys[n] in cache}
        output_set = set(v.outputs)
        consumers_left: dict[str, int] = {}
        for nid in execute:
            for src in deps[nid]:
                consumers_left[src] = consumers_left.get(src, 0) + 1
        values: dict[str, Any] = {}
        for nid in order:
            if nid in cached_set and (nid in output_set or nid in consumers_left):
                values[nid] = cache.get(keys[nid])

        emit(Event("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()}))
        emit(Event("execution_cached", {"nodes": [n for n in order if n in cached_set], "prompt_id": prompt_id,
                                        "timestamp": now_ms()}))
        done: list[str] = []
        current = None
        try:
            for nid in order:
                spec, cls = nodes[nid], classes[nid]
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
                kwargs: dict[str, Any] = {}
                linked: dict[str, Any] = {}
                for name, val in spec.inputs.items():
                    if isinstance(val, Link):
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
                versions = Versions(linked) if linked else None
                ctx = NodeContext(self.env, prompt_id, nid, cls.class_type, cancel, emit)
                t0 = time.perf_counter()
                try:
                    outputs, ui = _normalize(cls, cls().run(ctx, **kwargs))
                finally:  # also when the node raised after writing into an input
                    bad = versions.mutated() if versions is not None else ()
                    for name in bad:  # the shared upstream value is corrupt: never serve it again
                        src = spec.inputs[name].node
                        cache.discard(keys[src])
                        values.pop(src, None)
                dt = (time.perf_counter() - t0) * 1000.0
                if bad:
                    raise InputMutated(f"{cls.class_type} modified its input(s) {', '.join(bad)} in place; "
                                       "nodes must copy a value before changing it")
                entry_size = nbytes(outputs) + (nbytes(ui) if ui else 0)
                if nid not in volatile:
                    cache.put(keys[nid], outputs, ui, entry_size)
                values[nid] = Entry(outputs, ui, entry_size)
                reason = self._reason(nid, cls, parts[nid], keys[nid])
                result.nodes[nid] = NodeRecord(cls.class_type, "executed", reason, dt)
                done.append(nid)
                if ui is not None or nid in output_set:
                    result.outputs[nid] = ui or {}
                if ui:
                    emit(Event("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": prompt_id}))
                emit(Event("node_done", {"node": nid, "class_type": cls.class_type, "prompt_id": prompt_id,
                                         "duration_ms": round(dt, 3), "cached": False, "reason": reason}))
                for val in spec.inputs.values():  # free intermediates nobody else will read
                    if isinstance(val, Link):
                        left = consumers_left[val.node] - 1
                        consumers_left[val.node] = left
                        if left == 0 and val.node not in output_set:
                            values.pop(val.node, None)
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
            data = {"prompt_id": prompt_id, "node_id": current, "node_type": cls.class_type, "executed": list(done),
                    "exception_message": f"{e}\n", "exception_type": _type_name(e),
                    "traceback": traceback.format_tb(e.__traceback__),
                    "current_inputs": {k: [_fmt(x) for x in (values[x.node].outputs[x.output] if isinstance(x, Link)
                                                             and x.node in values else x,)]
                                       for k, x in spec.inputs.items()},
                    "current_outputs": list(order), "timestamp": now_ms()}
            result.error = data
            self._not_reached(result, order, classes, f"run failed at node {current}")
            emit(Event("execution_error", data))
            return result
        emit(Event("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()}))
        return result

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


def _type_name(e: BaseException) -> str:
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _fmt(x: Any) -> Any:
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x if not isinstance(x, str) or len(x) < 500 else x[:500] + "..."
    return str(x)[:500]
