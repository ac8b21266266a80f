"""The Ray worker pool (``loom serve --ray local --workers 2``) on a loopback-only local Ray instance.

One Ray instance for the session and one pool server for this module (Ray and its actors take tens of
seconds to start on a 2-core machine); the tests that kill workers run last. Models: the bundled checkpoints,
with each worker's model budget set to one checkpoint, so a worker switching checkpoints reloads.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from .conftest import IMAGE_WF, LiveServer, collect, done_for

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
CKPTS = ["loom-shapes-64.safetensors", "loom-shapes-64-inpainting.safetensors"]
ONE_CHECKPOINT = 60 * 1024 * 1024  # a loaded bundled checkpoint is 49 MB (CLIP 27, UNet 17, VAE 5): two do not fit


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance, started once per session, bound to loopback only. Four logical CPUs (one per
    actor): the module's pool and a restarted front door's pool (two actors each) exist side by side."""
    import ray

    from service.ray_pool import connect

    assert (MODELS / "checkpoints" / CKPTS[0]).is_file() and (MODELS / "checkpoints" / CKPTS[1]).is_file()
    started = connect("local", num_cpus=4)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("pool")
    with LiveServer(base, start_timeout=300, models_dir=MODELS, ray="local", workers=2,
                    ray_registry="tests.server.stubs:registry", worker_model_budget_bytes=ONE_CHECKPOINT) as s:
        yield s


def steps(n=3, delay=0.01, seed=0, preview=0):
    return {"1": {"class_type": "ServerSteps", "inputs": {"steps": n, "delay": delay, "preview": preview,
                                                          "seed": seed}}}


def txt2img(ckpt: str, seed: int, batch: int = 1, steps_: int = 2, prefix: str = "p") -> dict:
    wf = json.loads((REPO / "workflows" / "default.json").read_text())
    wf["1"]["inputs"]["ckpt_name"] = ckpt
    wf["4"]["inputs"]["batch_size"] = batch
    wf["5"]["inputs"].update(seed=seed, steps=steps_)
    wf["7"]["inputs"]["filename_prefix"] = prefix
    return wf


def post(c: httpx.Client, wf: dict, **kw) -> str:
    r = c.post("/prompt", json={"prompt": wf, **kw})
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


def wait_history(c: httpx.Client, ids: list[str], timeout: float = 120.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        h = c.get("/history").json()
        if all(i in h for i in ids):
            return h
        time.sleep(0.1)
    raise AssertionError(f"{sum(i in h for i in ids)}/{len(ids)} finished; queue: {c.get('/queue').json()}")


def workers(c: httpx.Client) -> list[dict]:
    return c.get("/api/loom/workers").json()["workers"]


def wait_all_alive(c: httpx.Client, timeout: float = 180.0) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        ws = workers(c)
        if all(w["alive"] for w in ws):
            return ws
        time.sleep(0.2)
    raise AssertionError(f"workers not back: {workers(c)}")


# -- network -------------------------------------------------------------------------------------------
def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = set(), [root]
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def _listening() -> dict[int, str]:
    """inode -> local address of every listening TCP socket (from /proc/net/tcp and tcp6)."""
    out = {}
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            if fam == socket.AF_INET:
                ip = socket.inet_ntop(fam, raw[::-1])
            else:  # four little-endian 32-bit words
                ip = socket.inet_ntop(fam, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out[int(f[9])] = f"{ip}:{int(port, 16)}"
    return out


def test_every_ray_port_listens_on_loopback_only(pool):
    socks = _listening()
    mine = {}
    for pid in _descendants(os.getpid()):  # Ray's head, raylet, GCS and actors are children of this process
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in socks:
                mine[int(link[8:-1])] = (pid, socks[int(link[8:-1])])
    assert len(mine) >= 4, f"found too few Ray listeners to judge: {mine}"  # gcs, raylet (2), actors
    loopback = ("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")
    outside = {k: v for k, v in mine.items() if not v[1].startswith(loopback)}
    assert not outside, f"Ray listens outside loopback: {outside}"


# -- dispatching ----------------------------------------------------------------------------------------
def test_prompts_run_on_both_workers_and_are_listed(pool):
    with pool.client() as c:
        ids = [post(c, steps(n=4, delay=0.05, seed=i)) for i in range(6)]
        h = wait_history(c, ids)
        ws = workers(c)
        stats = c.get("/system_stats").json()
    assert {h[i]["status"]["status_str"] for i in ids} == {"success"}
    assert {h[i]["loom"]["worker"] for i in ids} == {"w1", "w2"}
    assert [w["id"] for w in ws] == ["w1", "w2"] and all(w["alive"] and w["pid"] != os.getpid() for w in ws)
    assert sum(w["prompts_done"] for w in ws) >= 6 and all(w["shared_disk"] for w in ws)
    assert {d["worker"] for d in stats["devices"]} == {"w1", "w2"}


def _ws_messages(server: LiveServer, wf: dict, pid: str) -> list[tuple]:
    async def go():
        ws = await websockets.connect(server.ws_url + "?clientId=cmp", max_size=None)
        await ws.recv()  # status
        async with httpx.AsyncClient(base_url=server.url) as c:
            r = await c.post("/prompt", json={"prompt": wf, "client_id": "cmp", "prompt_id": pid})
            assert r.status_code == 200, r.text
        msgs, _ = await collect(ws, done_for(pid), timeout=60)
        await ws.close()
        return msgs

    def clean(d):
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if k not in ("timestamp", "done_at")}
        if isinstance(d, list):
            return [clean(x) for x in d]
        return d

    msgs = asyncio.run(go())
    return [(m["type"], m.get("seq"), clean(m["data"])) for m in msgs if m["type"] != "status"]


def test_websocket_messages_equal_the_in_process_worker(pool, tmp_path):
    wf = steps(n=4, delay=0.02, seed=424242)
    remote = _ws_messages(pool, wf, "same-prompt")
    with LiveServer(tmp_path) as local:
        here = _ws_messages(local, wf, "same-prompt")
    assert [m[0] for m in remote] == [m[0] for m in here]
    assert remote == here
    assert [m[0] for m in here][:2] == ["execution_start", "execution_cached"] and here[-1][0] == "executing"


# -- model affinity --------------------------------------------------------------------------------------
def _loads(c) -> int:
    return sum(w["model_loads"] for w in workers(c))


def _run_mix(pool, c, policy: str, seed0: int) -> tuple[int, dict]:
    """Two checkpoints in pairs (A A B B A A B B): loads counted over the pool under ``policy``. Both workers are
    first held by a slow stub so the whole mix is queued when dispatching starts."""
    from service.scheduler import Scheduler

    pool.svc.worker.scheduler = Scheduler(policy)
    c.post("/free", json={"unload_models": True})
    while any(w["resident_models"] for w in workers(c)):
        time.sleep(0.05)
    blockers = [post(c, steps(n=6000, delay=0.01, seed=seed0 + k)) for k in range(2)]
    while len([w for w in workers(c) if w["busy_prompt"] in blockers]) < 2:
        time.sleep(0.02)
    before = _loads(c)
    mix = [CKPTS[(k // 2) % 2] for k in range(8)]
    ids = [post(c, txt2img(ck, seed=seed0 + k)) for k, ck in enumerate(mix)]
    for b in blockers:  # both workers free up with the whole mix queued
        c.post("/interrupt", json={"prompt_id": b})
    h = wait_history(c, blockers + ids, timeout=300)
    assert {h[i]["status"]["status_str"] for i in ids} == {"success"}
    assert all(h[b]["status"]["completed"] is False for b in blockers)  # interrupted, not finished
    return _loads(c) - before, {i: h[i]["loom"]["worker"] for i in ids}


def test_model_affinity_loads_fewer_models_than_round_robin(pool):
    with pool.client() as c:
        rr, _ = _run_mix(pool, c, "round_robin", 1000)
        aff, placed = _run_mix(pool, c, "affinity", 2000)
        pool.svc.worker.scheduler.policy = "affinity"
    print(f"model loads for A A B B A A B B on 2 workers: round-robin {rr}, affinity {aff}")
    # three components per checkpoint; affinity keeps each worker on one checkpoint: at most 2 x 3 loads (fewer
    # where a worker's output cache still holds the text encoding from the round-robin run)
    assert aff < rr, (aff, rr)
    assert aff <= 6, (aff, placed)
    by_worker: dict = {}
    for pid, w in placed.items():
        by_worker.setdefault(w, set()).add(pid)
    assert len(by_worker) == 2


# -- batch fan-out ---------------------------------------------------------------------------------------
def _images(pool, entry) -> list:
    return [np.asarray(Image.open(pool.config.output_dir / f["filename"])) for f in entry["outputs"]["7"]["images"]]


def test_batch_fan_out_gives_the_single_worker_images_bit_for_bit(pool):
    wf = txt2img(CKPTS[0], seed=77, batch=4, steps_=3, prefix="fan")
    with pool.client() as c:
        wait_all_alive(c)
        pid = post(c, wf)
        h = wait_history(c, [pid])[pid]
        pool.svc.worker.fan_out = False  # the same prompt on one worker
        try:
            pid1 = post(c, wf)
            single = wait_history(c, [pid1])[pid1]
        finally:
            pool.svc.worker.fan_out = True
    assert "fanout" not in single["loom"]
    assert h["status"]["status_str"] == "success", h["status"]
    assert [p["length"] for p in h["loom"]["fanout"]] == [2, 2] and {p["worker"] for p in h["loom"]["fanout"]} == \
        {"w1", "w2"}
    got, want = _images(pool, h), _images(pool, single)
    assert len(got) == len(want) == 4
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # the PNGs carry the whole prompt, not a part's
    meta = Image.open(pool.config.output_dir / h["outputs"]["7"]["images"][3]["filename"]).text
    assert json.loads(meta["prompt"]) == wf


# -- interrupt, previews, outputs from a worker without the front door's disk -------------------------------
def test_interrupt_reaches_the_worker_running_the_prompt(pool):
    with pool.client() as c:
        wait_all_alive(c)
        pid = post(c, steps(n=400, delay=0.02, seed=31337))
        while not any(w["busy_prompt"] == pid for w in workers(c)):
            time.sleep(0.01)
        c.post("/interrupt", json={"prompt_id": pid})
        h = wait_history(c, [pid], timeout=30)[pid]
    types = [m[0] for m in h["status"]["messages"]]
    assert "execution_interrupted" in types and h["status"]["completed"] is False


def test_previews_stream_from_the_worker(pool):
    async def go():
        ws = await websockets.connect(pool.ws_url + "?clientId=pv", max_size=None)
        await ws.recv()
        await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        async with httpx.AsyncClient(base_url=pool.url) as c:
            r = await c.post("/prompt", json={"prompt": steps(n=6, delay=0.05, seed=99, preview=1), "client_id": "pv",
                                              "extra_data": {"preview_method": "auto"}})
            pid = r.json()["prompt_id"]
        msgs, bins = await collect(ws, done_for(pid), timeout=60)
        await ws.close()
        return pid, bins

    pid, bins = asyncio.run(go())
    assert bins
    kind, n = struct.unpack(">II", bins[0][:8])
    meta = json.loads(bins[0][8:8 + n])
    assert kind == 4 and meta["prompt_id"] == pid and meta["node_id"] == "1"
    assert Image.open(io.BytesIO(bins[0][8 + n:])).format == "JPEG"


def test_outputs_reach_the_front_door_when_the_worker_has_no_shared_disk(pool):
    out = pool.config.output_dir
    (out / "shipped_00001_.png").write_bytes(b"already here")  # the worker's own folder does not have it
    wf = {**IMAGE_WF, "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "shipped"}}}
    pool.svc.worker.ship_outputs = True
    try:
        with pool.client() as c:
            pid = post(c, wf)
            h = wait_history(c, [pid])[pid]
            (img,) = h["outputs"]["3"]["images"]
            got = c.get("/view", params={"filename": img["filename"], "type": "output"})
    finally:
        pool.svc.worker.ship_outputs = None
    assert h["status"]["status_str"] == "success"
    assert img["filename"] != "shipped_00001_.png" and (out / img["filename"]).is_file()
    assert (out / "shipped_00001_.png").read_bytes() == b"already here"
    assert Image.open(io.BytesIO(got.content)).size == (32, 24)
    manifest = json.loads((out / img["filename"]).with_suffix(".manifest.json").read_text())
    assert manifest["files"] == ["shipped_00001_.png"]  # as the worker wrote it


# -- faults (last: they kill workers) --------------------------------------------------------------------
def _kill_busy_worker(c, pid: str, timeout: float = 60.0) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        for w in workers(c):
            if w["busy_prompt"] == pid:
                os.kill(w["pid"], signal.SIGKILL)
                return w["id"]
        time.sleep(0.01)
    raise AssertionError(f"{pid} never ran")


def test_killed_worker_mid_prompt_and_50_queued_prompts_none_lost(pool):
    with pool.client() as c:
        wait_all_alive(c)
        slow = post(c, steps(n=40, delay=0.05, seed=5150))
        rest: list[str] = []

        def queue_50():  # queued while the kill happens
            with pool.client() as c2:
                rest.extend(post(c2, steps(n=2, delay=0.01, seed=6000 + k)) for k in range(50))

        t = threading.Thread(target=queue_50)
        t.start()
        killed = _kill_busy_worker(c, slow)
        t.join()
        assert len(rest) == 50
        h = wait_history(c, [slow] + rest, timeout=240)
        ws = {w["id"]: w for w in workers(c)}
    assert all(h[i]["status"]["status_str"] == "success" for i in [slow] + rest)
    assert h[slow]["outputs"]["1"]["text"] == ["ran 40 steps"]
    assert ws[killed]["restarts"] == 1 and (ws[killed]["last_error"] or "").startswith("lost"), ws[killed]


def test_a_prompt_that_loses_two_workers_fails_with_a_clear_error(pool):
    with pool.client() as c:
        wait_all_alive(c)
        pid = post(c, {"1": {"class_type": "ServerKillWorker", "inputs": {"delay": 0.05, "seed": 1}}})
        h = wait_history(c, [pid], timeout=120)[pid]
    err = h["loom"]["error"]
    assert h["status"]["status_str"] == "error" and err["exception_type"] == "service.ray_pool.WorkerLost"
    assert "lost twice" in err["exception_message"]


# -- front door restart (last: it starts pools of its own on the session's Ray instance) ----------------------
def _gated(seed: int, steps_: int, delay: float) -> dict:
    """ServerSteps, then an image whose width is the step count, saved under a prefix of its own: the file is
    written only once the steps are done, so a prompt run to completion twice leaves two files."""
    return {"1": {"class_type": "ServerSteps", "inputs": {"steps": steps_, "delay": delay, "seed": seed}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": ["1", 0], "height": 8, "batch_size": 1,
                                                         "color": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"rs{seed}"}}}


def _gone(pid: int, timeout: float = 30.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_front_door_restart_keeps_the_queue_and_runs_every_prompt_once(ray_local, tmp_path):
    from service.store import Store

    cfg = dict(start_timeout=300, models_dir=MODELS, ray="local", workers=2, ray_registry="tests.server.stubs:registry")
    wfs = {}
    with LiveServer(tmp_path, **cfg) as first:
        with first.client() as c:
            wait_all_alive(c)
            # two slow prompts hold both workers; four wait behind them
            for k, (n, delay) in enumerate([(100, 0.03)] * 2 + [(12, 0.01)] * 4):
                wf = _gated(7000 + k, n, delay)
                wfs[post(c, wf)] = (wf, n)
            ids = list(wfs)
            t0 = time.time()
            while {w["busy_prompt"] for w in workers(c)} != set(ids[:2]):
                assert time.time() - t0 < 60, workers(c)
                time.sleep(0.02)
            old = workers(c)
    # a clean stop (the lifespan's shutdown) with two prompts running and four pending
    db = Store(first.config.db_path)
    try:
        rows = {i: db.get(i) for i in ids}
    finally:
        db.close()
    assert {i: r.state for i, r in rows.items()} == {i: "pending" for i in ids}, \
        {i: (r.state, r.outcome) for i, r in rows.items()}  # the running two went back to the queue, not to history
    assert all(_gone(w["pid"]) for w in old), old  # the old front door's actors do not outlive it
    with LiveServer(tmp_path, **cfg) as second:
        with second.client() as c:
            h = wait_history(c, ids, timeout=120)
            now = wait_all_alive(c)
    assert [w["id"] for w in now] == ["w1", "w2"] and not {w["pid"] for w in now} & {w["pid"] for w in old}
    for pid, (wf, n) in wfs.items():
        e = h[pid]
        assert e["status"]["status_str"] == "success", (pid, e["status"])
        assert e["outputs"]["1"]["text"] == [f"ran {n} steps"]
        (img,) = e["outputs"]["3"]["images"]
        assert img["filename"] == f"rs{wf['1']['inputs']['seed']}_00001_.png"
    out = tmp_path / "output"
    for wf, _ in wfs.values():  # every prompt ran to the end exactly once
        assert len(list(out.glob(f"rs{wf['1']['inputs']['seed']}_*.png"))) == 1


_FRONT_DOOR = """
import sys, time
from pathlib import Path
from tests.server.conftest import LiveServer
base, models, address = sys.argv[1:4]
s = LiveServer(Path(base), start_timeout=300, models_dir=Path(models), ray=address, workers=2,
               ray_registry="tests.server.stubs:registry").__enter__()
print(s.port, flush=True)
time.sleep(3600)
"""


def test_front_door_killed_abruptly_a_new_one_reruns_its_prompts_once(ray_local, tmp_path):
    """A front door in a process of its own joins the session's Ray instance by address and is killed (-9) with
    two prompts running and four pending; its actors die with it (they belong to its Ray driver), and a new
    front door on the same base (``--requeue-interrupted``) runs all six once."""
    import subprocess
    import sys

    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", _FRONT_DOOR, str(tmp_path), str(MODELS), address], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wfs = {}
    try:
        port = int(proc.stdout.readline())
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            wait_all_alive(c)
            for k, (n, delay) in enumerate([(100, 0.03)] * 2 + [(12, 0.01)] * 4):
                wf = _gated(8000 + k, n, delay)
                wfs[post(c, wf)] = (wf, n)
            ids = list(wfs)
            t0 = time.time()
            while {w["busy_prompt"] for w in workers(c)} != set(ids[:2]):
                assert time.time() - t0 < 60, workers(c)
                time.sleep(0.02)
            old = workers(c)
    finally:
        proc.kill()
        proc.wait(30)
    assert all(_gone(w["pid"]) for w in old), old  # no orphaned actor keeps running the old prompts
    cfg = dict(start_timeout=300, models_dir=MODELS, ray="local", workers=2, ray_registry="tests.server.stubs:registry",
               requeue_interrupted=True)
    with LiveServer(tmp_path, **cfg) as second:
        with second.client() as c:
            h = wait_history(c, ids, timeout=120)
            now = wait_all_alive(c)
    assert all(w["alive"] for w in now) and not {w["pid"] for w in now} & {w["pid"] for w in old}
    out = tmp_path / "output"
    for pid, (wf, n) in wfs.items():
        e = h[pid]
        seed = wf["1"]["inputs"]["seed"]
        assert e["status"]["status_str"] == "success", (pid, e["status"])
        assert e["outputs"]["1"]["text"] == [f"ran {n} steps"]
        assert [i["filename"] for i in e["outputs"]["3"]["images"]] == [f"rs{seed}_00001_.png"]
        assert len(list(out.glob(f"rs{seed}_*.png"))) == 1
