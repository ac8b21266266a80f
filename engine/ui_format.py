"""The editor's UI ("workflow") format converted to the API format, server-side, with the node schemas.

What ComfyUI's frontend does in ``graphToPrompt``, in Python:

- links: schema 0.4 arrays ``[id, origin, origin_slot, target, target_slot, type]`` or version-1
  objects ``{id, origin_id, origin_slot, target_id, target_slot, type}``;
- ``widgets_values`` (a list, or a dict keyed by input name) mapped onto the class's declared widget
  inputs in order, skipping the UI-only slots: the ``control_after_generate`` value after an INT
  declared with it (fixed/increment/decrement/randomize, or a legacy boolean) and the upload
  button's value after an input declared with ``image_upload``;
- frontend-only nodes: Note and MarkdownNote dropped, Reroute followed to its source, PrimitiveNode
  replaced by its value;
- mode 2 (muted / never) nodes dropped, and inputs linked to them removed; mode 4 (bypass) nodes
  removed with each link passed through to the bypassed node's input of the same type;
- subgraphs (``definitions.subgraphs``, nested, with promoted widgets) are flattened first by engine/subgraphs.py,
  inner nodes getting ComfyUI's ``"outer:inner"`` ids; legacy group nodes (``workflow>name``) give a structured
  ``unsupported_subgraph`` error.

Every problem is a ``WorkflowError``; nothing else escapes.
"""
from __future__ import annotations

from typing import Any

from .errors import WorkflowError
from .node import Registry
from .subgraphs import flatten

VIRTUAL_DROP = frozenset({"Note", "MarkdownNote"})
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_VALUES = frozenset({"image", "upload"})
MODE_MUTED, MODE_BYPASS = 2, 4


def _bad(message: str, details: str = "", **extra) -> WorkflowError:
    return WorkflowError("invalid_workflow", message, details, extra_info=extra or None)


def _links(ui: dict) -> dict[Any, tuple]:
    """link id -> (origin_id, origin_slot, target_id, target_slot, type)."""
    raw = ui.get("links") or []
    if not isinstance(raw, list):
        raise _bad("UI workflow 'links' must be a list")
    out: dict[Any, tuple] = {}
    for ln in raw:
        if isinstance(ln, list) and len(ln) >= 5:
            lid, o, os_, t, ts = ln[:5]
            typ = ln[5] if len(ln) > 5 else "*"
        elif isinstance(ln, dict) and "id" in ln:
            lid, o, os_, t, ts, typ = (ln.get("id"), ln.get("origin_id"), ln.get("origin_slot"),
                                       ln.get("target_id"), ln.get("target_slot"), ln.get("type", "*"))
        elif ln is None:
            continue
        else:
            raise _bad("Malformed link in UI workflow", f"{str(ln)[:80]}")
        if not _hashable(lid) or not _hashable(o) or not isinstance(os_, int) or isinstance(os_, bool):
            raise _bad("Malformed link in UI workflow", f"{str(ln)[:80]}")
        out[lid] = (o, os_, t, ts, typ)
    return out


def _hashable(v: Any) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _widget_values(cls, node: dict) -> dict[str, Any]:
    """Map a node's widgets_values onto the class's declared widget inputs."""
    wv = node.get("widgets_values")
    widgets = [i for i in cls.inputs if i.is_widget]
    if wv is None:
        return {}
    if isinstance(wv, dict):
        names = {i.name for i in widgets}
        return {k: v for k, v in wv.items() if k in names}
    if not isinstance(wv, list):
        raise _bad("widgets_values must be a list or an object", f"node {node.get('id')}")
    out: dict[str, Any] = {}
    pos = 0
    for inp in widgets:
        if pos >= len(wv):
            break
        out[inp.name] = wv[pos]
        pos += 1
        if pos < len(wv):
            nxt = wv[pos]
            control = inp.extra.get("control_after_generate") or (
                inp.type == "INT" and inp.name in ("seed", "noise_seed"))
            if control and (isinstance(nxt, bool) or (isinstance(nxt, str) and nxt in CONTROL_VALUES)):
                pos += 1
            elif inp.extra.get("image_upload") and isinstance(nxt, str) and nxt in UPLOAD_VALUES:
                pos += 1
    return out


def ui_to_api(ui: Any, registry: Registry) -> dict:
    """Convert a UI-format workflow to an API-format prompt dict."""
    try:
        return _convert(ui, registry)
    except WorkflowError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise _bad("Malformed UI workflow", f"{type(e).__name__}: {e}") from None


def _convert(ui: Any, registry: Registry) -> dict:
    if not isinstance(ui, dict) or not isinstance(ui.get("nodes"), list):
        raise _bad("Not a UI workflow", "expected an object with a 'nodes' list")
    ui = flatten(ui)
    subgraph_ids = set()
    defs = ui.get("definitions")
    if isinstance(defs, dict) and isinstance(defs.get("subgraphs"), list):
        subgraph_ids = {s.get("id") for s in defs["subgraphs"] if isinstance(s, dict)}
    links = _links(ui)
    nodes: dict[Any, dict] = {}
    for n in ui["nodes"]:
        if not isinstance(n, dict) or not _hashable(n.get("id")) or not isinstance(n.get("type"), str):
            raise _bad("Malformed node in UI workflow", "each node needs an integer 'id' and a string 'type'")
        if n["id"] in nodes:
            raise _bad("Duplicate node id in UI workflow", f"node {n['id']}")
        nodes[n["id"]] = n
        t = n["type"]
        if t in subgraph_ids or t.startswith("workflow>") or t.startswith("workflow/"):
            raise WorkflowError("unsupported_subgraph", "Legacy group nodes are not supported",
                                f"node {n['id']} is a group node ({t}); convert it to a subgraph or to regular "
                                "nodes in the editor, or export the workflow in API format",
                                extra_info={"node_id": n["id"]})

    def mode(n: dict) -> int:
        m = n.get("mode", 0)
        return m if isinstance(m, int) else 0

    def node_inputs(n: dict) -> list:
        ins = n.get("inputs") or []
        return ins if isinstance(ins, list) else []

    def resolve(link_id: Any) -> tuple | None:
        """Follow a link through reroutes and bypassed nodes: ("link", id, slot) | ("const", v) | None."""
        seen = set()
        while True:
            if not _hashable(link_id) or link_id not in links or link_id in seen:
                return None
            seen.add(link_id)
            origin, slot, _t, _ts, typ = links[link_id]
            src = nodes.get(origin)
            if src is None:
                return None
            stype = src["type"]
            if stype == PRIMITIVE:
                wv = src.get("widgets_values")
                if isinstance(wv, list) and wv:
                    return ("const", wv[0])
                if isinstance(wv, dict) and wv:
                    return ("const", next(iter(wv.values())))
                return None
            if stype == REROUTE:
                ins = node_inputs(src)
                link_id = ins[0].get("link") if ins and isinstance(ins[0], dict) else None
                continue
            if mode(src) == MODE_MUTED or stype in VIRTUAL_DROP:
                return None
            if mode(src) == MODE_BYPASS:
                link_id = _bypass_input(src, slot, typ, node_inputs(src))
                continue
            return ("link", str(origin), slot)

    api: dict[str, dict] = {}
    for nid, n in nodes.items():
        t = n["type"]
        if t in VIRTUAL_DROP or t in (REROUTE, PRIMITIVE) or mode(n) in (MODE_MUTED, MODE_BYPASS):
            continue
        cls = registry.get(t)
        inputs: dict[str, Any] = {}
        if cls is not None:
            inputs.update(_widget_values(cls, n))
        for inp in node_inputs(n):
            if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
                continue
            name = inp["name"]
            if isinstance(inp.get("widget"), dict) and isinstance(inp["widget"].get("name"), str):
                name = inp["widget"]["name"]
            if inp.get("link") is None:
                continue
            r = resolve(inp["link"])
            if r is None:  # source muted or gone: the input is removed (a widget keeps its own value)
                continue
            inputs[name] = [r[1], r[2]] if r[0] == "link" else r[1]
        title = n.get("title") if isinstance(n.get("title"), str) else (cls.display_name if cls else t)
        api[str(nid)] = {"class_type": t, "inputs": inputs, "_meta": {"title": title}}
    return api


def _bypass_input(src: dict, slot: int, typ: Any, ins: list) -> Any:
    """The link feeding a bypassed node's input that matches output ``slot`` of type ``typ``."""
    def ok(i):
        return isinstance(i, dict) and i.get("link") is not None and (
            i.get("type") == typ or "*" in (i.get("type"), typ))

    if 0 <= slot < len(ins) and ok(ins[slot]):
        return ins[slot]["link"]
    for i in ins:
        if ok(i):
            return i["link"]
    return None
