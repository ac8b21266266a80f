"""A UI-format workflow with nested subgraphs (the editor's schema) through `loom validate`, `loom run` and the
server's POST /prompt with the flattened "outer:inner" ids the editor sends."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine.ui_format import ui_to_api
from nodes import default_registry

from tests.test_cli import loom, summaries

COLOR = 0x336699


def link(i, o, os_, t, ts, typ="IMAGE"):
    return {"id": i, "origin_id": o, "origin_slot": os_, "target_id": t, "target_slot": ts, "type": typ}


def sub(sid, name, nodes, links):
    io = lambda n: [{"id": f"{sid}-{n}", "name": "image", "type": "IMAGE", "linkIds": []}]
    return {"id": sid, "version": 1, "revision": 0, "config": {}, "name": name,
            "state": {"lastGroupId": 0, "lastNodeId": 2, "lastLinkId": 3, "lastRerouteId": 0},
            "inputNode": {"id": -10, "bounding": [0, 0, 100, 60]}, "outputNode": {"id": -20, "bounding": [500, 0, 100, 60]},
            "inputs": io("in"), "outputs": io("out"), "widgets": [], "nodes": nodes, "groups": [], "links": links,
            "extra": {}}


def inst(nid, sid, in_link, out_links):
    return {"id": nid, "type": sid, "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": in_link}],
            "outputs": [{"name": "image", "type": "IMAGE", "links": out_links}], "properties": {}, "widgets_values": []}


def invert(nid, in_link, out_links):
    return {"id": nid, "type": "ImageInvert", "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": in_link}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": out_links}], "widgets_values": []}


# root: EmptyImage -> [A: Invert -> [B: Invert]] -> SaveImage; inverting twice gives the colour back
B = sub("bbbbbbbb-0000-4000-8000-000000000002", "Invert again", [invert(1, 1, [2])],
        [link(1, -10, 0, 1, 0), link(2, 1, 0, -20, 0)])
A = sub("aaaaaaaa-0000-4000-8000-000000000001", "Invert twice", [invert(1, 1, [2]), inst(2, B["id"], 2, [3])],
        [link(1, -10, 0, 1, 0), link(2, 1, 0, 2, 0), link(3, 2, 0, -20, 0)])
UI = {"last_node_id": 10, "last_link_id": 2, "version": 0.4, "groups": [], "config": {}, "extra": {},
      "nodes": [{"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
                 "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [8, 8, 1, COLOR]},
                inst(10, A["id"], 1, [2]),
                {"id": 3, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
                 "outputs": [], "widgets_values": ["sg"]}],
      "links": [[1, 1, 0, 10, 0, "IMAGE"], [2, 10, 0, 3, 0, "IMAGE"]],
      "definitions": {"subgraphs": [A, B]}}


def test_loom_validate_and_run_a_nested_subgraph_file(tmp_path):
    p = tmp_path / "sub.json"
    p.write_text(json.dumps(UI))
    r = loom("validate", str(p), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = loom("run", str(p), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (s,) = summaries(r.stdout)
    assert s["status"] == "success" and sorted(s["executed"]) == ["1", "10:1", "10:2:1", "3"]
    px = np.asarray(Image.open(tmp_path / s["outputs"][0]).convert("RGB"))[0, 0]
    assert np.abs(px.astype(int) - [0x33, 0x66, 0x99]).max() <= 1  # inverted twice (float rounding: 1 step)


def test_server_accepts_the_flattened_ids(tmp_path):
    from tests.server.conftest import LiveServer
    api = ui_to_api(UI, default_registry())
    assert {"10:1", "10:2:1"} <= set(api)
    with LiveServer(tmp_path, registry=default_registry()) as srv, srv.client() as c:
        r = c.post("/prompt", json={"prompt": api})
        assert r.status_code == 200 and r.json()["node_errors"] == {}, r.text
