"""Scaling past one worker (not a test): run ``python bench/scale.py [--prompts N] [--quick]``.

Needs ``pip install loom[ray]``. Starts a loopback-only local Ray instance and measures:

1. throughput of the bundled model (default workflow: 4 variants, 20 steps, 64 px) on a pool of 1 and of
   2 CPU workers (one torch thread each), after each worker has loaded the model: prompts/min and the ratio;
2. dispatch overhead per prompt: a trivial workflow (EmptyImage -> PreviewImage) run one at a time, from
   the front door's queue to the worker and back (history written), pool vs in-process worker;
3. a model of 100 workers (the pool's real ``Scheduler`` against simulated workers whose nodes sleep: a
   checkpoint load takes ``--load-s``, a prompt ``--run-s``, each worker holds one checkpoint) fed a mix of 10
   checkpoints: prompts/s the scheduler can dispatch (its own CPU time), and the share of prompts served
   without a model load under affinity vs round-robin.

On a machine with GPUs (``--gpus``), part 1 runs one actor per GPU and prints it/s per GPU.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class TimedStore:
    """A ``service.store.Store`` that records when each prompt finished and wakes waiters."""

    def __new__(cls, path):
        from service.store import Store

        class _T(Store):
            def __init__(self, p):
                super().__init__(p)
                self.done_at: dict[str, float] = {}
                self.cv = threading.Condition()

            def finish(self, prompt_id, outcome, result):
                super().finish(prompt_id, outcome, result)
                with self.cv:
                    self.done_at[prompt_id] = time.perf_counter()
                    self.outcomes = getattr(self, "outcomes", {})
                    self.outcomes[prompt_id] = outcome
                    self.cv.notify_all()

            def wait(self, ids, timeout=1800.0):
                with self.cv:
                    ok = self.cv.wait_for(lambda: all(i in self.done_at for i in ids), timeout)
                if not ok:
                    raise TimeoutError(f"{sum(i in self.done_at for i in ids)}/{len(ids)} done")
                bad = {i: self.outcomes[i] for i in ids if self.outcomes[i] != "success"}
                if bad:
                    raise RuntimeError(f"prompts failed: {bad}")

        return _T(path)


def _loop():
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def _submit(store, worker, executor, wf: dict) -> str:
    import uuid

    pid = uuid.uuid4().hex
    v = executor.prepare(wf)
    store.add(pid, json.dumps(wf), {}, list(v.outputs))
    worker.submit(pid, v)
    return pid


def _pool(base: Path, n: int, gpus: bool):
    from engine.executor import Executor
    from nodes import default_registry
    from service.hub import Hub
    from service.ray_pool import RayPool

    store = TimedStore(base / f"q{n}.sqlite3")
    ex = Executor(default_registry())
    cfg = {"models_dir": str(ROOT / "models"), "input_dir": str(base / "input"), "output_dir": str(base / "output"),
           "temp_dir": str(base / "temp"), "torch_threads": None if gpus else 1}
    pool = RayPool(store, Hub(), _loop(), workers=n, actor_config=cfg, address="local", prepare=ex.prepare,
                   fan_out=False)
    pool.start()
    return store, pool, ex


def default_wf(seed: int, steps: int) -> dict:
    wf = json.loads((ROOT / "workflows" / "default.json").read_text())
    wf["5"]["inputs"].update(seed=seed, steps=steps)
    return wf


TRIVIAL = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def part1(base: Path, prompts: int, steps: int, gpus: bool) -> None:
    print(f"\n1. throughput, default workflow (4 x 64 px, {steps} steps), {prompts} prompts")
    rates = {}
    for n in (1, 2):
        store, pool, ex = _pool(base, n, gpus)
        try:
            warm = [_submit(store, pool, ex, default_wf(10_000 + k, 2)) for k in range(n)]  # each worker loads
            store.wait(warm)
            t0 = time.perf_counter()
            ids = [_submit(store, pool, ex, default_wf(k, steps)) for k in range(prompts)]
            store.wait(ids)
            dt = time.perf_counter() - t0
            placed = {w["id"]: w["prompts_done"] for w in pool.workers()}
        finally:
            pool.stop()
        rates[n] = prompts / dt
        its = prompts * steps / dt
        print(f"   {n} worker(s): {dt:6.1f} s, {rates[n] * 60:6.1f} prompts/min, {its:5.1f} it/s"
              f"{' (' + format(its / n, '.1f') + ' it/s per GPU)' if gpus else ''}; prompts per worker {placed}")
    print(f"   ratio 2 vs 1 workers: {rates[2] / rates[1]:.2f}x")


def part2(base: Path, count: int) -> None:
    from engine.context import Env
    from engine.executor import Executor
    from nodes import default_registry
    from service.hub import Hub
    from service.worker import Worker

    print(f"\n2. dispatch overhead, trivial workflow, {count} prompts one at a time (queue -> worker -> history)")
    res = {}
    store = TimedStore(base / "inproc.sqlite3")
    ex = Executor(default_registry(), Env(output_dir=base / "o", temp_dir=base / "t"))
    w = Worker(ex, store, Hub(), _loop())
    w.start()
    store2, pool, ex2 = _pool(base, 1, False)
    try:
        for name, (st, wk, e) in (("in-process", (store, w, ex)), ("Ray pool", (store2, pool, ex2))):
            lat = []
            for k in range(count + 5):
                wf = json.loads(json.dumps(TRIVIAL))
                wf["1"]["inputs"]["color"] = k  # never cached
                t = time.perf_counter()
                pid = _submit(st, wk, e, wf)
                st.wait([pid])
                if k >= 5:  # warm-up
                    lat.append((st.done_at[pid] - t) * 1000)
            lat.sort()
            res[name] = lat[len(lat) // 2]
            print(f"   {name:10s}: median {res[name]:6.2f} ms, p90 {lat[int(len(lat) * 0.9)]:6.2f} ms per prompt")
    finally:
        w.stop()
        pool.stop()
    print(f"   pool overhead: {res['Ray pool'] - res['in-process']:.2f} ms per prompt")


def simulate(policy: str, workers: int, prompts: int, ckpts: int, load_s: float, run_s: float, seed: int = 0):
    """Event simulation of the pool: returns (share of prompts without a load, makespan s, scheduler s)."""
    from service.scheduler import Needs, Scheduler, WorkerState

    rng = random.Random(seed)
    names = [f"ckpt{i}.safetensors" for i in range(ckpts)]
    weights = [1 / (i + 1) for i in range(ckpts)]  # a Zipf-like mix: some checkpoints far more popular
    queue = [(f"p{k}", Needs(frozenset({rng.choices(names, weights)[0]}))) for k in range(prompts)]
    ws = [WorkerState(f"w{i}") for i in range(workers)]
    sched = Scheduler(policy)
    events: list = []  # (time, worker index)
    now, hits, sched_s, k = 0.0, 0, 0.0, 0
    while k < len(queue) or events:
        t = time.perf_counter()
        assigned = sched.assign(queue[k:k + 4 * workers], ws)
        sched_s += time.perf_counter() - t
        started = set()
        for pid, w in assigned:
            started.add(pid)
            (m,) = w.expect
            loaded = m in w.models
            hits += loaded
            w.models = {m}
            heapq.heappush(events, (now + run_s + (0 if loaded else load_s), ws.index(w)))
        if started:  # the scheduler may take prompts from the window out of order
            window = queue[k:k + 4 * workers]
            rest = [q for q in window if q[0] not in started]
            queue[k:k + 4 * workers] = rest
        if not events:
            break
        now, i = heapq.heappop(events)
        ws[i].busy, ws[i].expect = None, set()
        ws[i].done += 1
    return hits / prompts, now, sched_s


def part3(workers: int, prompts: int, ckpts: int, load_s: float, run_s: float) -> None:
    print(f"\n3. model of {workers} workers, {prompts} prompts over {ckpts} checkpoints (Zipf mix), "
          f"load {load_s} s, run {run_s} s, one checkpoint resident per worker")
    for policy in ("round_robin", "affinity"):
        share, makespan, sched_s = simulate(policy, workers, prompts, ckpts, load_s, run_s)
        print(f"   {policy:11s}: {share * 100:5.1f}% of prompts without a model load, simulated makespan "
              f"{makespan:7.1f} s, scheduler {prompts / sched_s:8.0f} prompts/s dispatched "
              f"({sched_s * 1e6 / prompts:.0f} us per prompt)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8, help="prompts for part 1")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--trivial", type=int, default=40, help="prompts for part 2")
    p.add_argument("--sim-workers", type=int, default=100)
    p.add_argument("--sim-prompts", type=int, default=5000)
    p.add_argument("--load-s", type=float, default=8.0)
    p.add_argument("--run-s", type=float, default=4.0)
    p.add_argument("--gpus", action="store_true", help="one actor per GPU (part 1)")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", choices=["1", "2", "3"], help="run one part")
    a = p.parse_args(argv)
    if a.quick:
        a.prompts, a.steps, a.trivial, a.sim_prompts = 2, 4, 10, 500
    if a.only in (None, "3"):
        part3(a.sim_workers, a.sim_prompts, 10, a.load_s, a.run_s)
    if a.only == "3":
        return 0
    from service.ray_pool import connect

    t = time.perf_counter()
    connect("local")
    print(f"\nRay local instance (loopback only) started in {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        if a.only in (None, "2"):
            part2(base, a.trivial)
        if a.only in (None, "1"):
            part1(base, a.prompts, a.steps, a.gpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
