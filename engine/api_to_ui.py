"""An API-format workflow laid out as the editor's UI format (schema 0.4), with the node schemas.

The editor loads templates with its graph loader, which reads only the UI format; Loom's own workflows/ are API
format, so the template route converts them. The result converts back (engine/ui_format.py) to the same inputs:
socket inputs become input slots with links, widget inputs become ``widgets_values`` in declaration order (with the
UI-only ``control_after_generate`` slot after a seed and the upload slot after an ``image_upload`` combo), a widget
input fed by a link becomes an input slot with ``widget: {name}``. Nodes are placed in columns by depth.
"""
from __future__ import annotations

from typing import Any

from .node import MISSING, Registry

COLUMN, ROW = 340, 220


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def api_to_ui(api: dict, registry: Registry) -> dict:
    ids = list(api)
    num = {nid: int(nid) if nid.isdigit() else None for nid in ids}
    nxt = max([n for n in num.values() if n is not None] + [0]) + 1
    for nid in ids:
        if num[nid] is None:
            num[nid], nxt = nxt, nxt + 1
    # depth = longest chain of links from a source (iterative relaxation; API workflows are small DAGs)
    depth = {nid: 0 for nid in ids}
    for _ in range(len(ids)):
        changed = False
        for nid in ids:
            for v in (api[nid].get("inputs") or {}).values():
                if _is_link(v) and v[0] in depth and depth[v[0]] + 1 > depth[nid]:
                    depth[nid], changed = depth[v[0]] + 1, True
        if not changed:
            break
    links: list[list] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    rows: dict[int, int] = {}
    nodes = []
    for order, nid in enumerate(sorted(ids, key=lambda n: (depth[n], num[n]))):
        spec = api[nid]
        ct = spec.get("class_type")
        cls = registry.get(ct)
        given = spec.get("inputs") or {}
        inputs, widgets = [], []
        declared = list(cls.inputs) if cls else []
        for inp in declared:
            v = given.get(inp.name, MISSING)
            if inp.is_widget:
                if _is_link(v):
                    inputs.append({"name": inp.name, "type": inp.type if inp.type != "COMBO" else "COMBO",
                                   "widget": {"name": inp.name}, "link": _link(links, out_links, v, num, nid, len(inputs), api, registry)})
                    v = MISSING
                widgets.append(inp.default if v is MISSING else v)
                if inp.extra.get("control_after_generate") or (inp.type == "INT" and inp.name in ("seed", "noise_seed")):
                    widgets.append("fixed")
                elif inp.extra.get("image_upload"):
                    widgets.append("image")
            elif v is not MISSING or not inp.optional:
                link = _link(links, out_links, v, num, nid, len(inputs), api, registry) if _is_link(v) else None
                inputs.append({"name": inp.name, "type": inp.type, "link": link})
        col = depth[nid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        title = (spec.get("_meta") or {}).get("title")
        node = {"id": num[nid], "type": ct, "pos": [40 + col * COLUMN, 40 + row * ROW], "size": [300, 160],
                "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                "outputs": [{"name": o.label, "type": o.type, "links": [], "slot_index": i}
                            for i, o in enumerate(cls.outputs)] if cls else [],
                "properties": {"Node name for S&R": ct}, "widgets_values": widgets}
        if isinstance(title, str) and title:
            node["title"] = title
        nodes.append(node)
    by_id = {n["id"]: n for n in nodes}
    for (src, slot), lids in out_links.items():
        outs = by_id[num[src]]["outputs"]
        if 0 <= slot < len(outs):
            outs[slot]["links"] = lids
    return {"last_node_id": max([n["id"] for n in nodes] + [0]), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _link(links: list, out_links: dict, v: list, num: dict, target: str, slot: int, api: dict,
          registry: Registry) -> int | None:
    src, idx = v
    if src not in num:
        return None
    cls = registry.get(api[src].get("class_type"))
    typ = cls.outputs[idx].type if cls and 0 <= idx < len(cls.outputs) else "*"
    lid = len(links) + 1
    links.append([lid, num[src], idx, num[target], slot, typ])
    out_links.setdefault((src, idx), []).append(lid)
    return lid
