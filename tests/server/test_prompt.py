"""Prompt lifecycle over real HTTP + websocket: progress, images, cache, validation, interrupt, isolation."""
from __future__ import annotations

import asyncio
import io
import json
import struct
import time

import httpx
import websockets

from . import stubs
from .conftest import IMAGE_WF, collect, done_for, run


async def _connect(live, cid=None, flags=True, query=""):
    url = live.ws_url + (f"?clientId={cid}" if cid else "") + query
    ws = await websockets.connect(url, max_size=None)
    first = json.loads(await ws.recv())
    assert first["type"] == "status" and "sid" in first["data"]
    if flags:
        await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "feature_flags" and reply["data"]["supports_preview_metadata"] is True
    return ws, first["data"]["sid"]


def test_full_prompt_progress_and_image(live):
    async def go():
        ws, sid = await _connect(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {**IMAGE_WF, "4": {"class_type": "ServerSteps", "inputs": {"steps": 5, "delay": 0.06, "preview": 1,
                                                                            "seed": 1}}}
            r = await c.post("/prompt", json={"prompt": wf, "client_id": sid,
                                              "extra_data": {"preview_method": "auto"}})
            assert r.status_code == 200, r.text
            body = r.json()
            pid = body["prompt_id"]
            assert body["node_errors"] == {} and isinstance(body["number"], int)
            msgs, bins = await collect(ws, done_for(pid))
            types = [m["type"] for m in msgs]
            assert types.index("execution_start") < types.index("execution_cached") < types.index("executing")
            assert "execution_success" in types and types[-1] == "executing"
            assert types.index("execution_success") < len(types) - 1
            execd = [m["data"] for m in msgs if m["type"] == "executed"]
            img = next(e for e in execd if e["node"] == "3")["output"]["images"][0]
            assert img["type"] == "output" and img["filename"].startswith("t_")
            prog = [m["data"] for m in msgs if m["type"] == "progress"]
            assert [p["value"] for p in prog] == [1, 2, 3, 4, 5] and all(p["max"] == 5 and p["node"] == "4" for p in prog)
            ps = [m["data"] for m in msgs if m["type"] == "progress_state"]
            assert ps and all(len(p["nodes"]) == 1 for p in ps)  # only the changed node: linear traffic
            assert any(p["nodes"].get("4", {}).get("state") == "running" for p in ps)
            # seq numbers are per prompt and strictly increasing (gaps: Loom-only node_done events)
            seqs = [m["seq"] for m in msgs if "seq" in m]
            assert seqs[0] == 0 and all(a < b for a, b in zip(seqs, seqs[1:]))
            # preview frames: type 4 with metadata (the client advertised support)
            assert bins, "no preview frame"
            t, n = struct.unpack(">II", bins[0][:8])
            assert t == 4
            meta = json.loads(bins[0][8:8 + n])
            assert meta["prompt_id"] == pid and meta["node_id"] == "4" and meta["image_type"] == "image/jpeg"
            assert bins[0][8 + n:8 + n + 2] == b"\xff\xd8"
            r = await c.get("/view", params={"filename": img["filename"], "type": "output", "subfolder": ""})
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
            from PIL import Image
            im = Image.open(io.BytesIO(r.content))
            assert im.size == (32, 24) and im.convert("RGB").getpixel((0, 0)) == (0xEE, 0xDD, 0xCC)
            r = await c.get("/api/view", params={"filename": img["filename"], "preview": "jpeg;50"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            h = (await c.get(f"/history/{pid}")).json()[pid]
            assert h["status"] == {"status_str": "success", "completed": True, "messages": h["status"]["messages"]}
            assert [m[0] for m in h["status"]["messages"]] == ["execution_start", "execution_cached",
                                                             "execution_success"]
            assert h["outputs"]["3"]["images"][0] == img and h["prompt"][1] == pid
            assert h["loom"]["nodes"]["4"]["duration_ms"] >= 0 and h["loom"]["nodes"]["1"]["reason"]
            # replay of missed events
            ev = (await c.get(f"/prompt/{pid}/events", params={"after": 3})).json()
            assert ev["done"] and ev["events"][0]["seq"] == 4
            assert [e["type"] for e in ev["events"] if e["type"] != "node_done"] == \
                [m["type"] for m in msgs if m.get("seq", -1) > 3]
        await ws.close()
    run(go())


def test_cached_rerun_lists_every_node_and_resends_executed(live):
    async def go():
        ws, sid = await _connect(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            outs = []
            for _ in range(2):
                pid = (await c.post("/prompt", json={"prompt": IMAGE_WF, "client_id": sid})).json()["prompt_id"]
                msgs, _ = await collect(ws, done_for(pid))
                outs.append(msgs)
            second = outs[1]
            cached = next(m for m in second if m["type"] == "execution_cached")["data"]["nodes"]
            assert sorted(cached) == ["1", "2", "3"]
            assert not [m for m in second if m["type"] == "executing" and m["data"]["node"] is not None]
            ex1 = next(m for m in outs[0] if m["type"] == "executed")["data"]["output"]
            ex2 = next(m for m in second if m["type"] == "executed")["data"]["output"]
            assert ex1 == ex2
            h = (await c.get(f"/history/{pid}")).json()[pid]
            assert {n["status"] for n in h["loom"]["nodes"].values()} == {"cached"}
        await ws.close()
    run(go())


def test_validation_errors_are_comfyui_400s(live):
    with live.client() as c:
        r = c.post("/prompt", json={"client_id": "x"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"
        r = c.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
        assert r.status_code == 400 and r.json()["error"]["type"] == "missing_node_type"
        r = c.post("/prompt", json={"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
        assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"
        bad = {**IMAGE_WF, "1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 8,
                                                                        "batch_size": 1, "color": 0}}}
        r = c.post("/api/prompt", json={"prompt": bad})
        assert r.status_code == 400
        b = r.json()
        assert b["error"]["type"] == "prompt_outputs_failed_validation"
        assert set(b["error"]) == {"type", "message", "details", "extra_info"}
        ne = b["node_errors"]["1"]
        assert ne["class_type"] == "EmptyImage" and ne["dependent_outputs"] == ["3"]
        assert ne["errors"][0]["extra_info"]["input_name"] == "width"
        # one good output, one bad: 200 with node_errors
        mixed = {**IMAGE_WF, "5": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}
        r = c.post("/prompt", json={"prompt": mixed})
        assert r.status_code == 200 and "5" in r.json()["node_errors"]


def test_interrupt_mid_run_stops_within_one_step(live):
    async def go():
        ws, sid = await _connect(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 1000, "delay": 0.02, "preview": 0, "seed": 7}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "client_id": sid})).json()["prompt_id"]
            await collect(ws, lambda m: m["type"] == "progress" and m["data"]["value"] >= 3)
            # interrupting another prompt id does nothing
            assert (await c.post("/interrupt", json={"prompt_id": "not-running"})).status_code == 200
            t0 = time.monotonic()
            assert (await c.post("/api/interrupt", json={"prompt_id": pid})).status_code == 200
            at_cancel = stubs.STEPS_DONE["n"]  # the token is set once the POST has returned
            msgs, _ = await collect(ws, done_for(pid))
            assert stubs.STEPS_DONE["n"] - at_cancel <= 1, "ran more than one step after the interrupt"
            dt = time.monotonic() - t0
            types = [m["type"] for m in msgs]
            assert "execution_interrupted" in types and "execution_success" not in types
            intr = next(m for m in msgs if m["type"] == "execution_interrupted")["data"]
            assert intr["node_id"] == "1" and intr["node_type"] == "ServerSteps" and intr["prompt_id"] == pid
            assert dt < 5.0
            h = (await c.get(f"/history/{pid}")).json()[pid]
            assert h["status"]["status_str"] == "error" and not h["status"]["completed"]
            jobs = (await c.get("/api/jobs", params={"status": "cancelled"})).json()
            assert [j["id"] for j in jobs["jobs"]] == [pid]
        await ws.close()
    run(go())


def test_two_clients_do_not_see_each_others_progress(live):
    async def go():
        a, sa = await _connect(live)
        b, sb = await _connect(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 5, "delay": 0.06, "preview": 1, "seed": 2}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "client_id": sa,
                                                 "extra_data": {"preview_method": "auto"}})).json()["prompt_id"]
            msgs_a, bins_a = await collect(a, done_for(pid))
            assert any(m["type"] == "progress" for m in msgs_a) and bins_a
            # b sees only status broadcasts
            got = []
            try:
                while True:
                    raw = await asyncio.wait_for(b.recv(), 0.3)
                    got.append(raw)
            except asyncio.TimeoutError:
                pass
            assert got and all(isinstance(x, str) and json.loads(x)["type"] == "status" for x in got)
        await a.close()
        await b.close()
    run(go())


def test_queue_history_and_jobs_shapes(live):
    with live.client() as c:
        slow = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 200, "delay": 0.01, "preview": 0, "seed": 3}}}
        p1 = c.post("/prompt", json={"prompt": slow}).json()["prompt_id"]
        p2 = c.post("/prompt", json={"prompt": IMAGE_WF, "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}}
                    ).json()["prompt_id"]
        p3 = c.post("/prompt", json={"prompt": IMAGE_WF, "front": True}).json()
        assert p3["number"] < 0
        q = c.get("/queue").json()
        deadline = time.time() + 5
        while not q["queue_running"] and time.time() < deadline:
            time.sleep(0.02)
            q = c.get("/queue").json()
        assert [i[1] for i in q["queue_running"]] == [p1]
        assert [i[1] for i in q["queue_pending"]] == [p3["prompt_id"], p2]
        assert len(q["queue_pending"][0]) == 5 and q["queue_pending"][1][3]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
        assert c.get("/prompt").json() == {"exec_info": {"queue_remaining": 3}}
        jobs = c.get("/api/jobs", params={"status": "in_progress,pending", "limit": 200, "offset": 0}).json()
        assert {j["status"] for j in jobs["jobs"]} == {"in_progress", "pending"} and jobs["pagination"]["total"] == 3
        assert c.post("/queue", json={"delete": [p3["prompt_id"]]}).status_code == 200
        assert c.post("/api/jobs/" + p1 + "/cancel").json()["cancelled"] is True
        deadline = time.time() + 10
        while c.get("/prompt").json()["exec_info"]["queue_remaining"] and time.time() < deadline:
            time.sleep(0.05)
        h = c.get("/history", params={"max_items": 1}).json()
        assert list(h) == [p2]
        j = c.get(f"/api/jobs/{p2}").json()
        assert j["status"] == "completed" and j["outputs_count"] == 1 and j["workflow_id"] == "wf-1"
        assert j["preview_output"]["nodeId"] == "3" and j["workflow"]["prompt"]["3"]["class_type"] == "SaveImage"
        done = c.get("/api/jobs", params={"status": "completed,failed,cancelled"}).json()["jobs"]
        assert {d["id"]: d["status"] for d in done} == {p1: "cancelled", p2: "completed"}
        assert c.post("/history", json={"delete": [p1]}).status_code == 200
        assert list(c.get("/history").json()) == [p2]
        assert c.post("/history", json={"clear": True}).status_code == 200
        assert c.get("/history").json() == {}


def test_execution_error_reaches_client_and_history(live):
    async def go():
        ws, sid = await _connect(live)
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerFail", "inputs": {"message": "kaput"}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "client_id": sid})).json()["prompt_id"]
            msgs, _ = await collect(ws, done_for(pid))
            err = next(m for m in msgs if m["type"] == "execution_error")["data"]
            assert err["exception_message"] == "kaput\n" and err["exception_type"] == "RuntimeError"
            assert err["node_id"] == "1" and err["traceback"]
            job = (await c.get(f"/jobs/{pid}")).json()
            assert job["status"] == "failed" and job["execution_error"]["node_id"] == "1"
        await ws.close()
    run(go())


def test_a_bug_inside_validation_is_a_labelled_500_not_an_invalid_prompt(make_server, caplog):
    """An exception escaping validation (here a combo whose option list raises) is Loom's fault: a 500
    with type internal_error and the exception, and its traceback in the server log; never a 400."""
    from engine.node import Combo, Node, Output, Registry

    def broken_options(env):
        raise KeyError("options table")

    class BrokenCombo(Node):
        """A node whose option list cannot be computed."""
        output_node = True
        inputs = (Combo("choice", broken_options),)
        outputs = (Output("STRING"),)

        def run(self, ctx, choice):
            return (choice,)

    live = make_server(registry=Registry([*stubs.registry(), BrokenCombo]))
    with caplog.at_level("ERROR", logger="loom.server"), live.client() as c:
        r = c.post("/prompt", json={"prompt": {"1": {"class_type": "BrokenCombo", "inputs": {"choice": "a"}}}})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "internal_error" and "bug in Loom" in err["message"]
        assert err["details"] == "KeyError: 'options table'" and err["extra_info"]["exception_type"] == "KeyError"
        assert c.get("/queue").json()["queue_pending"] == []  # nothing was queued
    logged = [rec for rec in caplog.records if "internal error" in rec.getMessage()]
    assert logged and logged[0].exc_info and "broken_options" in "".join(
        __import__("traceback").format_exception(*logged[0].exc_info))
