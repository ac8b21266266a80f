"""Issue 9, data and protocol: one server per queue, results never dropped, NaN and lone surrogates, huge
numbers, request bodies, previews, websocket bytes, and the 2,000-prompt fuzz. Each test failed on the code
before its fix (the issue item is named in the docstring)."""
from __future__ import annotations

import asyncio
import json
import math
import os
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


# -- 4, 5. text that is not text, numbers too big: structured 400s, the connection kept --------------------
def _raw_json(obj) -> bytes:
    """JSON bytes as a client would send them: lone surrogates spelled as \\ud800 escapes."""
    return json.dumps(obj, ensure_ascii=True).encode()


def test_lone_surrogates_anywhere_are_a_400_naming_where(live):
    """Item 4: a lone UTF-16 surrogate in any text is refused with a 400 that names its place; the keep-alive
    connection survives (the next request on it is answered)."""
    bad = "\ud800"
    wf = json.loads(json.dumps(IMAGE_WF))
    cases = []
    w = json.loads(json.dumps(wf)); w["3"]["inputs"]["filename_prefix"] = "a" + bad
    cases.append(("/prompt", {"prompt": w}, '$.prompt["3"].inputs.filename_prefix'))
    cases.append(("/prompt", {"prompt": wf, "client_id": bad}, "$.client_id"))
    cases.append(("/prompt", {"prompt": wf, "extra_data": {"x": [1, {"y": bad}]}}, "$.extra_data.x[1].y"))
    w = json.loads(json.dumps(wf)); w[bad] = w.pop("3")
    cases.append(("/prompt", {"prompt": w}, "$.prompt"))
    cases.append(("/settings", {"Comfy.X": bad}, "$"))
    cases.append(("/settings/Comfy.Y", {"v": bad}, "$.v"))
    cases.append(("/history", {"delete": [bad]}, "$.delete[0]"))
    with live.client() as c:
        for path, body, where in cases:
            r = c.post(path, content=_raw_json(body), headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, r.status_code, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_text" and err["details"].startswith(where), (path, err)
            assert c.get("/prompt").status_code == 200  # same connection, still answered
        assert c.get("/settings").json() == {}  # nothing was stored
        assert c.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        # a surrogate pair is a real character (an emoji) and is accepted
        w = json.loads(json.dumps(wf)); w["3"]["inputs"]["filename_prefix"] = "smile\U0001F600"
        r = c.post("/prompt", content=_raw_json({"prompt": w}), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


def test_huge_number_is_a_structured_400(live):
    """Item 5: a 400-digit "number" was an OverflowError (500)."""
    with live.client() as c:
        body = b'{"prompt": ' + json.dumps(IMAGE_WF).encode() + b', "number": ' + b"9" * 400 + b"}"
        r = c.post("/prompt", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        e = r.json()
        assert e["node_errors"] == {} and e["error"]["type"] == "invalid_prompt"
        assert e["error"]["extra_info"]["errors"][0]["loc"] == "number"
        # a 400-digit integer in a node input is a node error, not a crash
        w = json.loads(json.dumps(IMAGE_WF))
        body = json.dumps({"prompt": w}).replace('"width": 32', '"width": ' + "9" * 400).encode()
        r = c.post("/prompt", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"


def test_request_bodies_report_every_fault_with_its_place(live):
    """Issue 10 item 10: the bodies of /prompt, /queue, /history, /settings are pydantic models; a 400 lists
    each fault with its location."""
    with live.client() as c:
        r = c.post("/prompt", json={"prompt": IMAGE_WF, "number": "x", "client_id": ["a"], "front": "maybe",
                                    "partial_execution_targets": "3", "extra_data": 5})
        assert r.status_code == 400
        locs = {e["loc"] for e in r.json()["error"]["extra_info"]["errors"]}
        assert {"number", "client_id", "front", "partial_execution_targets", "extra_data"} <= locs
        for path in ("/queue", "/history"):
            r = c.post(path, json={"delete": [{"id": 1}], "clear": "perhaps"})
            assert r.status_code == 400
            err = r.json()["error"]
            assert err["type"] == "invalid_body" and {e["loc"].split(".")[0] for e in err["extra_info"]["errors"]} \
                == {"delete", "clear"}
        r = c.post("/settings", json=[1, 2])
        assert r.status_code == 400 and r.json()["error"]["extra_info"]["errors"][0]["type"] == "dict_type"
        # lax conversions ComfyUI's clients rely on still work
        r = c.post("/prompt", json={"prompt": IMAGE_WF, "number": "7", "front": 0, "partial_execution_targets": [3]})
        assert r.status_code == 200 and r.json()["number"] == 7


# -- the fuzz: 2,000+ mutated prompts, no 500, no dropped connection ----------------------------------------------
def test_fuzz_two_thousand_mutated_prompts(live):
    """Issue 9: lone surrogates, huge integers, NaN, deep nesting, wrong types, damaged bytes: every answer is a
    200 or a 4xx, on one keep-alive connection that is never dropped."""
    from .fuzz import mutated_bodies

    counts: dict[int, int] = {}
    dropped = []
    bad = []
    with live.client() as c:
        for i, body in enumerate(mutated_bodies(2000, seed=9)):
            try:
                r = c.post("/prompt", content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as e:
                dropped.append((i, repr(e)))
                continue
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            if r.status_code >= 500 or r.status_code not in (200, 400, 413):
                bad.append((i, r.status_code, body[:200], r.text[:300]))
            elif r.status_code == 400:
                e = r.json()
                assert isinstance(e.get("error"), (dict, str)), e
        assert c.post("/queue", json={"clear": True}).status_code == 200
        assert c.get("/prompt").status_code == 200
    assert not bad, bad[:5]
    assert not dropped, dropped[:5]
    assert sum(counts.values()) == 2000 and counts.get(400, 0) > 1000 and counts.get(200, 0) > 50, counts
