"""Subgraphs of the editor's UI format flattened into one graph, before the UI -> API conversion.

The editor (frontend >= 1.24) stores each subgraph once, in ``definitions.subgraphs`` (a definition may carry its own
``definitions.subgraphs``: nested ones). A definition has ``inputs`` / ``outputs`` (ordered, named, typed), its own
``nodes`` and ``links`` (link objects ``{id, origin_id, origin_slot, target_id, target_slot, type}``), where origin
``-10`` is the subgraph's input node (origin_slot = subgraph input index) and target ``-20`` its output node
(target_slot = subgraph output index). An instance is a node whose ``type`` is the definition's id; its ``inputs``
mirror the definition's inputs (matched by name), and an input promoted as a widget carries ``widget: {name}`` with
its value in the instance's ``widgets_values`` (in the order of the widget inputs).

Flattening gives every inner node the id ``"<instance id>:<inner id>"`` (nested: ``"10:4:2"``), ComfyUI's
convention, so ids are stable across saves and events name the real inner node. Links through subgraph inputs and
outputs are resolved to the real source; a promoted widget's value becomes a PrimitiveNode feeding the inner input
(ui_format resolves those to constants); an input left unconnected with no value keeps the inner node's own widget
value. A muted instance drops its contents; a bypassed one passes inputs to outputs of the same type.
"""
from __future__ import annotations

from typing import Any

from .errors import WorkflowError

SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID = -10, -20
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
MAX_DEPTH = 32
MODE_MUTED, MODE_BYPASS = 2, 4


def _bad(message: str, details: str = "", **extra) -> WorkflowError:
    return WorkflowError("invalid_workflow", message, details, extra_info=extra or None)


def definitions(ui: dict) -> dict[str, dict]:
    """Every subgraph definition by id, from the root's and (recursively) the definitions' own ``definitions``."""
    out: dict[str, dict] = {}
    stack = [ui]
    while stack:
        g = stack.pop()
        defs = g.get("definitions") if isinstance(g, dict) else None
        subs = defs.get("subgraphs") if isinstance(defs, dict) else None
        for sg in subs if isinstance(subs, list) else ():
            if isinstance(sg, dict) and isinstance(sg.get("id"), str) and sg["id"] not in out:
                out[sg["id"]] = sg
                stack.append(sg)
    return out


def _link_table(raw: Any) -> dict[Any, tuple]:
    """link id -> (origin, origin_slot, target, target_slot, type) for array or object links."""
    out: dict[Any, tuple] = {}
    for ln in raw if isinstance(raw, list) else ():
        if isinstance(ln, list) and len(ln) >= 5:
            out[ln[0]] = (ln[1], ln[2], ln[3], ln[4], ln[5] if len(ln) > 5 else "*")
        elif isinstance(ln, dict) and "id" in ln:
            out[ln["id"]] = (ln.get("origin_id"), ln.get("origin_slot"), ln.get("target_id"), ln.get("target_slot"),
                             ln.get("type", "*"))
    return out


def _widget_fed_inputs(sg: dict) -> list[str]:
    """Names of the definition's inputs that feed an inner node's widget input, in the definition's order."""
    nodes = {n.get("id"): n for n in sg.get("nodes") or [] if isinstance(n, dict)}
    out = []
    for si in sg.get("inputs") or []:
        if not isinstance(si, dict):
            continue
        for ln in sg.get("links") or []:
            if not isinstance(ln, dict) or ln.get("id") not in (si.get("linkIds") or []):
                continue
            ins = (nodes.get(ln.get("target_id")) or {}).get("inputs") or []
            slot = ln.get("target_slot")
            if isinstance(slot, int) and 0 <= slot < len(ins) and isinstance(ins[slot], dict) and ins[slot].get("widget"):
                out.append(si.get("name"))
                break
    return out


def _instance_widget_values(inst: dict, sg: dict | None = None) -> dict[str, Any]:
    """Promoted widget values of an instance, by input name. The editor (1.58.1) may save an instance with no
    `inputs` entries for its promoted widgets but with `widgets_values_named`; without either, the values are
    matched by position to the definition's inputs that feed an inner widget."""
    named = inst.get("widgets_values_named")
    if isinstance(named, dict) and named:
        return dict(named)
    wv = inst.get("widgets_values")
    names = [i["widget"]["name"] if isinstance(i.get("widget"), dict) and isinstance(i["widget"].get("name"), str)
             else i.get("name") for i in inst.get("inputs") or [] if isinstance(i, dict) and i.get("widget")]
    if not names and sg is not None:
        names = _widget_fed_inputs(sg)
    if isinstance(wv, dict):
        return {k: v for k, v in wv.items() if k in names}
    out: dict[str, Any] = {}
    pos = 0
    for name in names:
        if not isinstance(wv, list) or pos >= len(wv):
            break
        out[name] = wv[pos]
        pos += 1
        # a seed widget is followed by its control_after_generate value (UI-only)
        if pos < len(wv) and isinstance(out[name], int) and isinstance(wv[pos], str) and wv[pos] in CONTROL_VALUES:
            pos += 1
    return out


class _Flattener:
    def __init__(self, defs: dict[str, dict]):
        self.defs = defs
        self.nodes: list[dict] = []
        self.links: list[dict] = []
        self.n_links = 0

    def new_link(self, src: tuple, target: str, slot: int, typ: Any) -> str:
        self.n_links += 1
        lid = f"L{self.n_links}"
        self.links.append({"id": lid, "origin_id": src[1], "origin_slot": src[2], "target_id": target,
                           "target_slot": slot, "type": typ})
        return lid

    def const_node(self, nid: str, value: Any) -> tuple:
        self.nodes.append({"id": nid, "type": "PrimitiveNode", "mode": 0, "inputs": [], "widgets_values": [value]})
        return ("link", nid, 0)

    def expand(self, nodes: list, links: dict, prefix: str, in_sources: list, depth: int, path: tuple) -> dict:
        """Copy ``nodes`` (ids prefixed) into the flat graph; return {subgraph output slot: source} where a source
        is ("link", flat id, slot) or None. ``in_sources[i]`` is the source of this graph's input i."""
        if depth > MAX_DEPTH:
            raise _bad("Subgraphs nested too deeply", f"more than {MAX_DEPTH} levels at '{prefix}'")
        by_id = {n.get("id"): n for n in nodes if isinstance(n, dict)}
        inst_out: dict[Any, dict] = {}
        visiting: set = set()

        def source(lid: Any) -> tuple | None:
            if lid is None or lid not in links:
                return None
            o, os_, _t, _ts, _typ = links[lid]
            if o == SUBGRAPH_INPUT_ID:
                return in_sources[os_] if isinstance(os_, int) and 0 <= os_ < len(in_sources) else None
            n = by_id.get(o)
            if n is None:
                return None
            if n.get("type") in self.defs:
                return instance(n).get(os_)
            return ("link", prefix + str(o), os_)

        def instance(n: dict) -> dict:
            iid = n["id"]
            if iid in inst_out:
                return inst_out[iid]
            if iid in visiting:
                raise _bad("Subgraph instances form a cycle", f"node {prefix}{iid}")
            visiting.add(iid)
            sg = self.defs[n["type"]]
            if sg["id"] in path:
                raise _bad("A subgraph contains itself", f"subgraph {sg.get('name') or sg['id']}")
            sg_inputs = [i for i in sg.get("inputs") or [] if isinstance(i, dict)]
            sg_outputs = [o for o in sg.get("outputs") or [] if isinstance(o, dict)]
            inst_inputs = {i.get("name"): i for i in n.get("inputs") or [] if isinstance(i, dict)}
            widgets = _instance_widget_values(n, sg)
            srcs: list = []
            for k, si in enumerate(sg_inputs):
                ii = inst_inputs.get(si.get("name"), {})
                s = source(ii.get("link"))
                wname = ii["widget"].get("name") if isinstance(ii.get("widget"), dict) else si.get("name")
                if s is None and wname in widgets:
                    s = self.const_node(f"{prefix}{iid}:w{k}", widgets[wname])
                srcs.append(s)
            mode = n.get("mode", 0)
            if mode == MODE_MUTED:
                out = {}
            elif mode == MODE_BYPASS:
                out = {}
                for k, so in enumerate(sg_outputs):
                    match = [s for si, s in zip(sg_inputs, srcs) if s and si.get("type") in (so.get("type"), "*")]
                    out[k] = match[0] if match else None
            else:
                out = self.expand(sg.get("nodes") or [], _link_table(sg.get("links")), f"{prefix}{iid}:", srcs,
                                  depth + 1, path + (sg["id"],))
            visiting.discard(iid)
            inst_out[iid] = out
            return out

        for n in nodes:
            if not isinstance(n, dict):
                continue
            if n.get("type") in self.defs:
                instance(n)
                continue
            flat = dict(n)
            fid = prefix + str(n.get("id"))
            flat["id"] = fid
            ins = []
            for i in n.get("inputs") or []:
                if not isinstance(i, dict):
                    continue
                i = dict(i)
                s = source(i.get("link"))
                i["link"] = self.new_link(s, fid, len(ins), i.get("type", "*")) if s else None
                ins.append(i)
            flat["inputs"] = ins
            self.nodes.append(flat)

        result: dict = {}
        for lid, (o, os_, t, ts, _typ) in links.items():
            if t == SUBGRAPH_OUTPUT_ID and isinstance(ts, int):
                result[ts] = source(lid)
        return result


def flatten(ui: dict) -> dict:
    """A UI workflow with every subgraph instance replaced by its inner nodes (ids "outer:inner"); the input itself
    when it uses no subgraphs."""
    defs = definitions(ui)
    if not defs or not any(isinstance(n, dict) and n.get("type") in defs for n in ui.get("nodes") or []):
        return ui
    f = _Flattener(defs)
    f.expand(ui.get("nodes") or [], _link_table(ui.get("links")), "", [], 0, ())
    out = {k: v for k, v in ui.items() if k not in ("nodes", "links", "definitions")}
    out["nodes"], out["links"] = f.nodes, f.links
    return out
