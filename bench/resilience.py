"""Resilience benchmark (not a test): ``python bench/resilience.py [--fuzz N] [--attack-seconds S]``.

Starts a real ``loom serve`` in a subprocess (loopback, a temporary base folder) and prints, per phase:
requests sent, answers by class (2xx, 4xx, 5xx), connections reset or dropped, the server's RSS before
and after, and the bytes its log grew by.

1. fuzz: N mutated POST /prompt bodies (tests/server/fuzz.py: lone surrogates, huge integers, NaN,
   deep nesting, wrong types, damaged bytes) over one keep-alive connection.
2. slow headers (slowloris): for S seconds, ``--slow-conns`` connections (default 300) each send a
   request line and then one header line every 5 s, reconnecting when the server closes them; meanwhile
   a legitimate client sends GET /prompt on a fresh connection every 0.5 s. Reported: attack
   connections opened and closed by the server, and the legitimate requests' answers and latency.
   Loopback only; bounded by --slow-conns and S.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(base: Path, port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOM_NO_FRONTEND": "1"}
    log = open(log_path, "wb")
    p = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--base", str(base), "--port", str(port),
                          "--log-level", "info", *extra], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    import httpx

    t0 = time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/prompt", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def warm_up(port: int) -> None:
    import httpx

    from tests.server.fuzz import BASES

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        pid = c.post("/prompt", json={"prompt": BASES[0]}).json()["prompt_id"]
        t0 = time.time()
        while pid not in c.get(f"/history/{pid}").json() and time.time() - t0 < 120:
            time.sleep(0.2)


def fuzz_phase(port: int, n: int) -> dict:
    import httpx

    from tests.server.fuzz import mutated_bodies

    out = {"requests": 0, "2xx": 0, "4xx": 0, "5xx": 0, "resets": 0}
    t0 = time.perf_counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for body in mutated_bodies(n, seed=9):
            out["requests"] += 1
            try:
                r = c.post("/prompt", content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError:
                out["resets"] += 1
                continue
            out[f"{r.status_code // 100}xx"] = out.get(f"{r.status_code // 100}xx", 0) + 1
        c.post("/queue", json={"clear": True})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


async def _slow_conn(port: int, stop: float, st: dict) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            st["connect_errors"] += 1
            await asyncio.sleep(1)
            continue
        st["opened"] += 1
        try:
            writer.write(b"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await writer.drain()
            while time.monotonic() < stop:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 5.0)
                    if not data or data.startswith(b"HTTP/1.1 503"):
                        st["closed_by_server"] += 1
                        break
                except asyncio.TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
        except (ConnectionError, OSError):
            st["closed_by_server"] += 1
        finally:
            writer.close()


async def _legit(port: int, stop: float, st: dict) -> None:
    import httpx

    while time.monotonic() < stop:
        t = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=10) as c:  # a fresh connection each time
                r = await c.get(f"http://127.0.0.1:{port}/prompt")
            st["requests"] += 1
            st[f"{r.status_code // 100}xx"] = st.get(f"{r.status_code // 100}xx", 0) + 1
            st["latency_ms"].append((time.perf_counter() - t) * 1000)
        except httpx.HTTPError:
            st["requests"] += 1
            st["resets"] += 1
        await asyncio.sleep(0.5)


def slowloris_phase(port: int, seconds: float, conns: int) -> dict:
    attack = {"opened": 0, "closed_by_server": 0, "connect_errors": 0}
    legit = {"requests": 0, "2xx": 0, "4xx": 0, "5xx": 0, "resets": 0, "latency_ms": []}

    async def go():
        stop = time.monotonic() + seconds
        await asyncio.gather(*[_slow_conn(port, stop, attack) for _ in range(conns)], _legit(port, stop, legit))
    asyncio.run(go())
    lat = legit.pop("latency_ms")
    legit["median_ms"] = round(statistics.median(lat), 1) if lat else None
    legit["max_ms"] = round(max(lat), 1) if lat else None
    return {"attack": attack, "legit": legit}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fuzz", type=int, default=2000)
    p.add_argument("--attack-seconds", type=float, default=60.0)
    p.add_argument("--slow-conns", type=int, default=300)
    p.add_argument("--head-timeout", type=float, default=None, help="server's --head-timeout (default: its own)")
    p.add_argument("--max-connections", type=int, default=None)
    a = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="loom-resilience-"))
    port = _free_port()
    log_path = base / "server.log"
    extra = ["--head-timeout", str(a.head_timeout)] if a.head_timeout is not None else []
    if a.max_connections:
        extra += ["--max-connections", str(a.max_connections)]
    srv = start_server(base, port, extra, log_path)
    try:
        print(f"server pid {srv.pid} on 127.0.0.1:{port}, head timeout {a.head_timeout or 'default'}")
        cold = rss(srv.pid)
        warm_up(port)  # one valid prompt first: importing torch and the nodes is not a leak
        r0, l0 = rss(srv.pid), log_path.stat().st_size
        print(f"RSS at start {cold / 2**20:.1f} MiB, after one valid prompt {r0 / 2**20:.1f} MiB")
        f = fuzz_phase(port, a.fuzz)
        r1, l1 = rss(srv.pid), log_path.stat().st_size
        print(f"fuzz:      requests {f['requests']}  2xx {f['2xx']}  4xx {f['4xx']}  5xx {f['5xx']}  resets "
              f"{f['resets']}  ({f['seconds']} s)  RSS {r0 / 2**20:.1f} -> {r1 / 2**20:.1f} MiB  log +{l1 - l0} B")
        s = slowloris_phase(port, a.attack_seconds, a.slow_conns)
        r2, l2 = rss(srv.pid), log_path.stat().st_size
        at, lg = s["attack"], s["legit"]
        print(f"slowloris: {a.slow_conns} slow connections for {a.attack_seconds:.0f} s: opened {at['opened']}, "
              f"closed by server {at['closed_by_server']}, connect errors {at['connect_errors']}")
        print(f"           legit requests {lg['requests']}  2xx {lg['2xx']}  4xx {lg['4xx']}  5xx {lg['5xx']}  "
              f"resets {lg['resets']}  latency median {lg['median_ms']} ms max {lg['max_ms']} ms")
        print(f"           RSS {r1 / 2**20:.1f} -> {r2 / 2**20:.1f} MiB  log +{l2 - l1} B")
        time.sleep(1)
        with __import__("httpx").Client(timeout=10) as c:
            ok = c.get(f"http://127.0.0.1:{port}/prompt").status_code
        print(f"after:     GET /prompt -> {ok}; server alive: {srv.poll() is None}")
    finally:
        srv.terminate()
        try:
            srv.wait(15)
        except subprocess.TimeoutExpired:
            srv.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
