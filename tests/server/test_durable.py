"""The durable queue: a killed server's pending prompts run after restart, its running prompt is marked
failed (never silently lost); history bounds prune rows but never output files unless asked."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import IMAGE_WF

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _spawn(base: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LOOM_TEST_NODES": "1", "LOOM_NO_FRONTEND": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "import sys, server; sys.exit(server.main(sys.argv[1:]))",
                             "--base", str(base), "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(url + "/prompt", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError("server did not come up")


def test_restart_with_pending_prompts(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tmp_path, port)
    try:
        _wait_up(url, proc)
        slow = {"1": {"class_type": "LoomTestSlow", "inputs": {"steps": 10000, "delay": 0.01}}}
        running = httpx.post(url + "/prompt", json={"prompt": slow}).json()["prompt_id"]
        pend = [httpx.post(url + "/prompt", json={"prompt": {**IMAGE_WF, "3": {
            "class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"r{i}"}}}}).json()["prompt_id"]
            for i in range(2)]
        t0 = time.time()
        while not httpx.get(url + "/queue").json()["queue_running"]:
            assert time.time() - t0 < 20
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(tmp_path, port)
    try:
        _wait_up(url, proc)
        t0 = time.time()
        # a liveness deadline, not a timing: the first prompt after the restart imports torch (node modules import
        # it lazily), which takes tens of seconds on a loaded CI machine
        while httpx.get(url + "/prompt").json()["exec_info"]["queue_remaining"]:
            assert time.time() - t0 < 120
            time.sleep(0.05)
        hist = httpx.get(url + "/history").json()
        assert set(hist) == {running, *pend}
        assert hist[running]["status"]["status_str"] == "error"
        assert hist[running]["status"]["messages"][0][0] == "execution_error"
        assert "stopped" in hist[running]["status"]["messages"][0][1]["exception_message"]
        for pid in pend:
            assert hist[pid]["status"]["completed"] is True
        assert sorted(p.name for p in (tmp_path / "output").glob("*.png")) == ["r0_00001_.png", "r1_00001_.png"]
        job = httpx.get(url + f"/api/jobs/{running}").json()
        assert job["status"] == "failed"
    finally:
        proc.terminate()
        proc.wait(10)


def test_history_bounds_prune_rows_not_outputs(make_server, tmp_path):
    srv = make_server(history_max_items=3)
    with srv.client() as c:
        ids = []
        for i in range(6):
            wf = {**IMAGE_WF, "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"h{i}"}}}
            ids.append(c.post("/prompt", json={"prompt": wf}).json()["prompt_id"])
        t0 = time.time()
        while c.get("/prompt").json()["exec_info"]["queue_remaining"]:
            assert time.time() - t0 < 30
            time.sleep(0.05)
        assert list(c.get("/history").json()) == ids[-3:]
        assert list(c.get("/history", params={"max_items": 2}).json()) == ids[-2:]
        assert list(c.get("/history", params={"max_items": 1, "offset": 1}).json()) == ids[-2:-1]
    assert len(list((tmp_path / "output").glob("h*_.png"))) == 6  # pruning keeps files
    # by age, and with prune_outputs the files of pruned entries go too
    st = srv.svc.store
    st.max_age_s = 0
    st.on_prune_outputs = __import__("server")._prune_outputs_fn(srv.config)
    time.sleep(0.01)
    assert st.prune() == 3
    assert len(list((tmp_path / "output").glob("h*_.png"))) == 3
    assert len(list((tmp_path / "output").glob("h*_.manifest.json"))) == 3  # manifests go with their images
