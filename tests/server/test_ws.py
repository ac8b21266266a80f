"""Websocket behaviour: many clients, reconnect state, legacy preview frames, msgpack, broadcast rules."""
from __future__ import annotations

import asyncio
import json
import struct

import httpx
import msgpack
import websockets

from .conftest import IMAGE_WF, collect, done_for, run


def test_fifty_concurrent_clients_each_get_their_own_run(live):
    async def go():
        socks = await asyncio.gather(*[websockets.connect(live.ws_url + f"?clientId=c{i}") for i in range(50)])
        for i, ws in enumerate(socks):
            first = json.loads(await ws.recv())
            assert first["data"]["sid"] == f"c{i}"
        async with httpx.AsyncClient(base_url=live.url) as c:
            rs = await asyncio.gather(*[c.post("/prompt", json={"prompt": {
                "1": {"class_type": "ServerSteps", "inputs": {"steps": 2, "delay": 0.0, "preview": 0, "seed": i}}},
                "client_id": f"c{i}"}) for i in range(50)])
            pids = [r.json()["prompt_id"] for r in rs]
            results = await asyncio.gather(*[collect(ws, done_for(pid), timeout=60) for ws, pid in zip(socks, pids)])
            for (msgs, _), pid in zip(results, pids):
                own = {m["data"].get("prompt_id") for m in msgs if m["type"] != "status"}
                assert own == {pid}, "a client saw another client's prompt"
                assert [m["data"]["value"] for m in msgs if m["type"] == "progress"] == [1, 2]
            assert (await c.get("/prompt")).json()["exec_info"]["queue_remaining"] == 0
        await asyncio.gather(*[ws.close() for ws in socks])
    run(go())


def test_reconnect_gets_running_state(live):
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=me")
        await ws.recv()
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 400, "delay": 0.01, "preview": 0, "seed": 5}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "client_id": "me"})).json()["prompt_id"]
            msgs, _ = await collect(ws, lambda m: m["type"] == "progress" and m["data"]["value"] >= 2)
            last_seq = msgs[-1]["seq"]
            await ws.close()
            await asyncio.sleep(0.1)
            ws = await websockets.connect(live.ws_url + "?clientId=me")
            first = json.loads(await ws.recv())
            assert first["type"] == "status" and first["data"]["sid"] == "me"
            nxt = json.loads(await ws.recv())
            assert nxt["type"] == "executing" and nxt["data"]["node"] == "1" and "prompt_id" not in nxt["data"]
            st = json.loads(await ws.recv())
            assert st["type"] == "progress_state" and st["data"]["nodes"]["1"]["state"] == "running"
            # replay fills the gap
            ev = (await c.get(f"/api/prompt/{pid}/events", params={"after": last_seq})).json()
            assert ev["events"] and ev["events"][0]["seq"] == last_seq + 1 and not ev["done"]
            await c.post("/interrupt")
            await collect(ws, done_for(pid))
        await ws.close()
    run(go())


def test_no_client_id_broadcasts_progress_and_legacy_previews(live):
    async def go():
        a = await websockets.connect(live.ws_url)
        b = await websockets.connect(live.ws_url)
        await a.recv(), await b.recv()
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 6, "delay": 0.1, "preview": 1, "seed": 9}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "extra_data": {"preview_method": "auto"}})
                   ).json()["prompt_id"]
            for ws in (a, b):
                msgs, bins = await collect(ws, done_for(pid))  # the end marker is broadcast too
                assert [m["data"]["value"] for m in msgs if m["type"] == "progress"] == [1, 2, 3, 4, 5, 6]
                assert not [m for m in msgs if m["type"] in ("execution_start", "executed")]
                assert [m["data"]["node"] for m in msgs if m["type"] == "executing"] == [None]
                assert bins and struct.unpack(">II", bins[0][:8]) == (1, 1) and bins[0][8:10] == b"\xff\xd8"
            assert (await c.get(f"/history/{pid}")).status_code == 200
        await a.close(), await b.close()
    run(go())


def test_msgpack_stream_with_loom_events(live):
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=mp&format=msgpack&events=loom")
        first = msgpack.unpackb(await ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == "mp"
        async with httpx.AsyncClient(base_url=live.url) as c:
            pid = (await c.post("/prompt", json={"prompt": IMAGE_WF, "client_id": "mp"})).json()["prompt_id"]
            got = []
            while True:
                m = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
                got.append(m)
                if m["type"] == "executing" and m["data"]["node"] is None:
                    break
            types = [m["type"] for m in got]
            assert "node_done" in types and "executed" in types
            nd = [m["data"] for m in got if m["type"] == "node_done"]
            assert all("duration_ms" in d and "reason" in d for d in nd)
            assert all(m["data"].get("prompt_id") == pid for m in got if m["type"] != "status")
        await ws.close()
    run(go())


def test_preview_method_none_sends_no_previews(live):
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=np")
        await ws.recv()
        async with httpx.AsyncClient(base_url=live.url) as c:
            wf = {"1": {"class_type": "ServerSteps", "inputs": {"steps": 4, "delay": 0.06, "preview": 1, "seed": 4}}}
            pid = (await c.post("/prompt", json={"prompt": wf, "client_id": "np",
                                                 "extra_data": {"preview_method": "none"}})).json()["prompt_id"]
            msgs, bins = await collect(ws, done_for(pid))
            assert not bins and [m["data"]["value"] for m in msgs if m["type"] == "progress"] == [1, 2, 3, 4]
        await ws.close()
    run(go())
