"""Issue 9's defects, each kept fixed: data loss, 500s, resource exhaustion, protocol bytes, leaks.

Each test here failed on the code before the fix (the issue item is named in the test's docstring).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

from service.store import Store

from .conftest import IMAGE_WF, collect, done_for, run

REPO = Path(__file__).resolve().parents[2]


def _wait_history(c, pid, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = c.get(f"/history/{pid}").json()
        if pid in h:
            return h[pid]
        time.sleep(0.05)
    raise TimeoutError(pid)


# -- 1. one server per queue; finish() never drops a result ------------------------------------------
def test_second_server_on_the_same_base_refuses_to_start(live):
    """Item 1: a second `loom serve` on the same folders exits at once with a clear message."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOOM_NO_FRONTEND": "1"}
    p = subprocess.run([sys.executable, str(REPO / "server.py"), "--base", str(live.config.base_dir), "--port", "0"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "another Loom server" in p.stderr and str(os.getpid()) in p.stderr
    assert "Traceback" not in p.stderr
    with live.client() as c:  # the first server is untouched
        assert c.get("/prompt").status_code == 200


def test_finish_replaces_a_crashed_mark_instead_of_dropping_the_result(tmp_path):
    """Item 1: a result that arrives after another process marked the prompt crashed is kept."""
    a = Store(tmp_path / "q.sqlite3")
    a.add("p1", "{}", {}, ["9"])
    assert a.take_next().id == "p1"
    b = Store(tmp_path / "q.sqlite3")  # a second process recovering the same database
    assert b.recover() == ["p1"] and b.get("p1").outcome == "crashed"
    outputs = {"9": {"images": [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}]}}
    assert a.finish("p1", "success", {"outputs": outputs, "status": {"status_str": "success"}}) is True
    h = b.get("p1")
    assert h.outcome == "success" and h.result["outputs"] == outputs
    assert len(b.history()) == 1
    assert a.finish("gone", "success", {"outputs": outputs}) is False  # no row: reported, not silent
    a.close(), b.close()


# -- 3. non-finite floats are replaced structurally; strings untouched ------------------------------
def test_nan_in_a_prompt_never_rewrites_strings(live):
    """Item 3: "NaN_Infinity" in a string stays exactly that in the queue, history and responses."""
    wf = json.loads(json.dumps(IMAGE_WF))
    wf["3"]["inputs"]["filename_prefix"] = "NaN_Infinity"
    wf["3"]["inputs"]["junk"] = float("nan")  # an unknown input: ignored by validation, kept in the prompt
    body = json.dumps({"prompt": wf, "extra_data": {"x": float("inf"), "label": "-Infinity NaN"}})
    assert "NaN" in body and "Infinity" in body
    with live.client() as c:
        r = c.post("/prompt", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        h = _wait_history(c, r.json()["prompt_id"])
        nodes = h["prompt"][2]
        assert nodes["3"]["inputs"]["filename_prefix"] == "NaN_Infinity" and nodes["3"]["inputs"]["junk"] is None
        assert h["prompt"][3]["label"] == "-Infinity NaN" and h["prompt"][3]["x"] is None
        assert h["outputs"]["3"]["images"][0]["filename"].startswith("NaN_Infinity_")


def test_json_text_helpers_replace_only_floats():
    """Item 3: the one helper both the HTTP layer and the store use."""
    from service import http, store

    v = {"s": "NaN Infinity -Infinity", "f": [1.5, math.nan, {"g": -math.inf}], "t": (math.inf,)}
    for dumps in (http.dumps, store.dumps):
        assert json.loads(dumps(v)) == {"s": "NaN Infinity -Infinity", "f": [1.5, None, {"g": None}], "t": [None]}


# -- 11. previews only when asked -----------------------------------------------------------------------
def test_previews_only_when_the_prompt_asks(live):
    """Item 11: like ComfyUI, no live-preview frames unless extra_data.preview_method asks for them."""
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=pv")
        await ws.recv()
        got = {}
        async with httpx.AsyncClient(base_url=live.url) as c:
            for method in (None, "auto"):
                wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 4, "delay": 0.12, "preview": 1,
                                                                    "seed": 11 if method else 12}}}
                body = {"prompt": wf, "client_id": "pv"}
                if method:
                    body["extra_data"] = {"preview_method": method}
                pid = (await c.post("/prompt", json=body)).json()["prompt_id"]
                _, bins = await collect(ws, done_for(pid))
                got[method] = len(bins)
        await ws.close()
        assert got[None] == 0 and got["auto"] > 0, got
    run(go())


# -- 12a. ComfyUI's byte form on the websocket; execution_start first ---------------------------------------
def test_ws_text_frames_use_comfyuis_separators(live):
    """Item 12a: clients match prefixes such as '{"type": "status"', with Python's default separators."""
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=sep")
        raw = await ws.recv()
        assert raw.startswith('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ')
        async with httpx.AsyncClient(base_url=live.url) as c:
            pid = (await c.post("/prompt", json={"prompt": IMAGE_WF, "client_id": "sep"})).json()["prompt_id"]
            frames = []
            while True:
                raw = await asyncio.wait_for(ws.recv(), 20)
                frames.append(raw)
                m = json.loads(raw)
                if done_for(pid)(m):
                    break
        assert any(f.startswith('{"type": "progress_state", "data": {') for f in frames)
        assert all(f == json.dumps(json.loads(f)) for f in frames)  # exactly json.dumps's bytes
        await ws.close()
    run(go())
