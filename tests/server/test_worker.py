"""The in-process worker's API: submit, forget, the command queue (a /free is never lost), previews off the
sampling thread, history written for every prompt."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from engine.context import Env
from engine.executor import Executor
from engine.node import Int, Node, Output, Registry, Result
from service.hub import Hub
from service.store import Store
from service.worker import Worker

THREADS: list[str] = []  # names of the threads that evaluated a preview callable
RUN_THREADS: list[str] = []


class PreviewSteps(Node):
    """``steps`` steps of 20 ms, each with a preview callable that records the thread evaluating it."""
    category = "testing"
    inputs = (Int("steps", 5, min=1, max=1000), Int("seed", 0, min=0, max=10**9))
    outputs = (Output("INT"),)
    output_node = True

    def run(self, ctx, steps, seed):
        RUN_THREADS.append(threading.current_thread().name)
        for i in range(steps):
            time.sleep(0.02)

            def pv(i=i):
                from PIL import Image
                THREADS.append(threading.current_thread().name)
                return Image.new("RGB", (8, 8), (i, 0, 0))
            ctx.progress(i + 1, steps, pv)
        return Result((steps,), {"text": [str(steps)]})


@pytest.fixture
def rig(tmp_path):
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    store = Store(tmp_path / "q.sqlite3")
    hub = Hub()
    ex = Executor(Registry([PreviewSteps]), Env(output_dir=tmp_path))
    w = Worker(ex, store, hub, loop, preview_interval_s=0.0)
    w.start()
    yield w, store, hub, ex
    w.stop()
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    store.close()


def _queue(w, store, pid, steps=3, seed=0, extra=None, submit=True):
    prompt = {"1": {"class_type": "PreviewSteps", "inputs": {"steps": steps, "seed": seed}}}
    v = w.executor.prepare(prompt)
    store.add(pid, json.dumps(prompt), dict(extra or {}), ["1"])
    if submit:
        w.submit(pid, v)
    return v


def _wait_done(store, ids, timeout=20.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        items = [store.get(i) for i in ids]
        if all(i is not None and i.state == "done" for i in items):
            return items
        time.sleep(0.02)
    raise AssertionError(f"not done: {[(i, store.get(i) and store.get(i).state) for i in ids]}")


def test_free_sent_while_a_prompt_runs_is_applied_before_the_next(rig):
    w, store, hub, ex = rig
    _queue(w, store, "a", steps=2)
    _wait_done(store, ["a"])
    assert len(ex.cache) == 1
    _queue(w, store, "b", steps=15, seed=1)
    while w.running_id != "b":
        time.sleep(0.005)
    w.free(free_memory=True)  # arrives mid-run: queued as a command, applied between prompts
    w.free(unload_models=True)
    _wait_done(store, ["b"])
    _queue(w, store, "c", steps=2)  # same as "a": cached unless the free was applied
    (c,) = _wait_done(store, ["c"])
    assert c.result["loom"]["nodes"]["1"]["status"] == "executed"
    assert c.result["loom"]["worker"] == "local"


def test_previews_are_evaluated_off_the_sampling_thread(rig):
    w, store, hub, ex = rig
    THREADS.clear()
    RUN_THREADS.clear()
    _queue(w, store, "p", steps=6, extra={"preview_method": "auto"})
    _wait_done(store, ["p"])
    time.sleep(0.2)
    assert RUN_THREADS and THREADS
    assert set(THREADS) == {"loom-preview"} and "loom-preview" not in RUN_THREADS


def test_no_previews_when_the_prompt_asks_none(rig):
    w, store, hub, ex = rig
    THREADS.clear()
    _queue(w, store, "n", steps=4, extra={"preview_method": "none"})
    _wait_done(store, ["n"])
    time.sleep(0.1)
    assert THREADS == []


def test_submit_without_validation_and_forget(rig):
    w, store, hub, ex = rig
    _queue(w, store, "x", steps=1, seed=7, submit=False)  # e.g. queued before a restart
    w.wake()
    w.forget(["never-queued"])  # forgetting an unknown id is harmless
    (x,) = _wait_done(store, ["x"])
    assert x.outcome == "success" and x.result["outputs"]["1"]["text"] == ["1"]
    info = w.workers()
    assert info[0]["id"] == "local" and info[0]["prompts_done"] >= 1 and info[0]["busy_prompt"] is None


def test_workers_endpoint_lists_the_in_process_worker(live):
    with live.client() as c:
        r = c.post("/prompt", json={"prompt": {"1": {"class_type": "ServerSteps", "inputs": {"steps": 2}}}})
        pid = r.json()["prompt_id"]
        for _ in range(500):
            if c.get(f"/history/{pid}").json():
                break
            time.sleep(0.02)
        (w,) = c.get("/api/loom/workers").json()["workers"]
        hist = c.get(f"/history/{pid}").json()[pid]
    assert w["id"] == "local" and w["prompts_done"] == 1 and w["devices"][0]["type"] in ("cpu", "cuda")
    assert hist["loom"]["worker"] == "local"


def test_serve_options_select_the_ray_pool():
    from server import config_from_args, parse_args

    c = config_from_args(parse_args(["--ray", "local", "--workers", "3"]))
    assert (c.ray, c.workers) == ("local", 3)
    c = config_from_args(parse_args([]))
    assert c.ray is None and c.workers == 1  # the in-process worker, as before
