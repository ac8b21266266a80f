"""A pool of Ray actors that runs the front door's queue (``loom serve --ray auto|local|ADDRESS --workers N``).

The front door keeps HTTP, the websocket hub, the durable SQLite queue and history; the pool implements the
worker API of ``service.worker`` (submit, forget, interrupt, free, workers, start, stop). A dispatcher thread
asks ``service.scheduler.Scheduler`` which pending prompt goes to which idle actor, marks it running in the
store and starts a driver thread that consumes the actor's streamed batches and posts them to the hub through
the same ``LoopBridge`` as the in-process worker, so clients cannot tell the difference.

Faults: when an actor dies under a prompt (killed, OOM, node lost), the prompt goes back to its place in the
queue once and runs on another actor; a second loss fails it with an ``execution_error`` (``WorkerLost``).
The dead actor is replaced. Prompts never leave the durable store until finished. A clean stop of the front
door kills its actors and puts the prompts they were running back in the queue, so the next front door (a new
pool, or one joined to the same persistent cluster) runs every prompt once; after an abrupt stop, the prompts
found running are marked failed or, with ``--requeue-interrupted``, re-queued (``Store.recover``).

Network: ``connect("local")`` starts a single-node Ray instance bound to loopback only
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, node address 127.0.0.1, no dashboard).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from engine.errors import execution_error
from engine.events import now_ms

from . import fanout
from .ray_actor import FANOUT_KEY
from .scheduler import Needs, Scheduler, WorkerState, needs_of
from .store import Item, Store
from .worker import LoopBridge, failure_entry

log = logging.getLogger("loom.pool")
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def connect(address: str = "local", num_cpus: int | None = None) -> bool:
    """Connect this process to Ray: ``local`` starts a loopback-only single-node instance, ``auto`` joins the
    cluster running on this machine (``ray start --head``) or starts a local one, anything else is a cluster
    address (``HOST:6379`` or ``ray://HOST:10001``). Returns False when Ray was already connected."""
    if address == "local":
        # Single-node mode: Ray then binds every port to 127.0.0.1 (otherwise it binds the machine's address and
        # [::] even when given 127.0.0.1). Ray reads this when imported, and its child processes inherit it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise RuntimeError("the worker pool needs Ray: pip install 'loom[ray]'") from None
    if ray.is_initialized():
        return False
    if address == "local":
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
        # actors import Loom (and test registries) from this checkout; started processes inherit this
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if REPO_ROOT not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *paths])
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    else:
        kw = {}
        if address.rpartition(":")[0] in ("127.0.0.1", "localhost"):  # a loopback-only instance on this machine:
            kw["_node_ip_address"] = "127.0.0.1"  # join as its node, not as the machine's interface address
        ray.init(address=None if address == "auto" else address, log_to_driver=False, configure_logging=False, **kw)
    return True


class WorkerLost(Exception):
    """The worker running a prompt died (killed, out of memory, its machine lost)."""


class _Slot:
    __slots__ = ("state", "actor", "info", "restarts", "thread", "lost")

    def __init__(self, state: WorkerState):
        self.state = state
        self.actor = None
        self.info: dict = {}
        self.restarts = 0
        self.thread: threading.Thread | None = None
        self.lost: str | None = None  # why its last actor was lost (kept across the replacement)


class RayPool:
    """``workers`` actors over ``store``; events to ``hub`` on ``loop``. ``actor_config``: see
    ``service.ray_actor.LoomActor``. ``prepare``: validates a stored prompt (for ones queued before a restart)
    so the scheduler knows its models. ``policy``: 'affinity' or 'round_robin' (the baseline)."""

    def __init__(self, store: Store, hub, loop, *, workers: int, actor_config: dict, address: str = "local",
                 policy: str = "affinity", prepare=None, num_cpus: int | None = None, gpus_per_worker: float | None = None,
                 fan_out: bool = True):
        self.store = store
        self.hub = hub
        self.bridge = LoopBridge(loop, hub) if loop is not None else None
        self.n = int(workers)
        self.address = address
        self.num_cpus = num_cpus
        self.gpus = gpus_per_worker
        self.config = dict(actor_config)
        self.prepare = prepare
        self.scheduler = Scheduler(policy)
        self.fan_out = fan_out
        self.ship_outputs: bool | None = None  # True: workers send files back even on a shared disk (tests)
        self.slots = [_Slot(WorkerState(f"w{i + 1}", alive=False)) for i in range(self.n)]
        self._lock = threading.Lock()
        self._needs: dict[str, Any] = {}  # prompt_id -> Validated (until the dispatcher computes Needs)
        self._losses: dict[str, int] = {}
        self._wake = threading.Event()
        self._stop = False
        self._owns_ray = False
        self._actor_cls = None
        self._thread = threading.Thread(target=self._dispatch, name="loom-dispatch", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._owns_ray = connect(self.address, self.num_cpus)
        import ray

        from .ray_actor import LoomActor

        gpus = self.gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        opts = {"num_gpus": gpus, "num_cpus": 0 if gpus else 1, "max_concurrency": 4, "max_restarts": 0}
        self._actor_cls = ray.remote(**opts)(LoomActor)
        out = Path(self.config["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        marker = self.config.get("marker") or f".loom-pool-{uuid.uuid4().hex}"
        (out / marker).write_text("the Loom front door's output folder (pool workers look for this file)\n")
        self.config["marker"] = marker
        spawning = [threading.Thread(target=self._spawn, args=(slot,), daemon=True) for slot in self.slots]
        for t in spawning:  # actors start in parallel (each imports torch and the nodes)
            t.start()
        for t in spawning:
            t.join()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        import ray

        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        # The front door going down is not a user's interrupt: the prompts running on the workers go back to the
        # durable queue for the next front door (``_lost`` sees ``_stop``). Killing the actors ends them at once
        # and leaves no actor of this pool holding work or resources on a cluster that outlives it.
        for slot in self.slots:
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(timeout)
        for slot in self.slots:  # a driver that did not end in time: its prompt still goes back
            if slot.state.busy is not None:
                self.store.requeue(slot.state.busy)
        try:
            (Path(self.config["output_dir"]) / self.config["marker"]).unlink(missing_ok=True)
        except OSError:
            pass
        if self._owns_ray:
            ray.shutdown()

    def _spawn(self, slot: _Slot) -> None:
        """Start (or replace) the slot's actor; it takes prompts once it answers."""
        import ray

        slot.state.alive = False
        actor = self._actor_cls.options(name=None).remote(slot.state.id, self.config)
        slot.actor = actor
        try:
            info = ray.get(actor.info.remote(), timeout=600)
        except Exception as e:
            log.error("worker %s did not start: %s", slot.state.id, e)
            slot.info = {**slot.info, "last_error": f"did not start: {e}"}
            return
        if self._stop:  # the pool stopped while this actor started
            ray.kill(actor)
            return
        slot.info = info
        slot.state.models = set(info.get("resident_models") or ())
        slot.state.keys.clear()
        slot.state.expect = set()
        slot.state.busy = None
        slot.state.alive = True
        self._wake.set()

    # -- the worker API ------------------------------------------------------------------------------
    def submit(self, prompt_id: str, validated: Any = None) -> None:
        if validated is not None:
            with self._lock:
                self._needs[prompt_id] = validated
        self._wake.set()

    def forget(self, prompt_ids: Iterable[str] | None = None) -> None:
        with self._lock:
            if prompt_ids is None:
                self._needs.clear()
            else:
                for pid in prompt_ids:
                    self._needs.pop(pid, None)
                    self.scheduler.forget(pid)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        hit = False
        for slot in self.slots:
            busy = slot.state.busy
            if busy is not None and slot.actor is not None and (prompt_id is None or busy == prompt_id):
                slot.actor.interrupt.remote(busy)
                hit = True
        return hit

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        if unload_models or free_memory:
            for slot in self.slots:
                if slot.state.alive and slot.actor is not None:
                    ref = slot.actor.free.remote(bool(unload_models), bool(free_memory))
                    threading.Thread(target=self._refresh, args=(slot, ref), daemon=True).start()

    def _refresh(self, slot: _Slot, after=None) -> None:
        """Update what the scheduler knows of a worker once ``after`` (a call on it) is done."""
        import ray

        try:
            if after is not None:
                ray.get(after)
            info = ray.get(slot.actor.info.remote())
        except Exception:
            return
        slot.info = info
        slot.state.models = set(info.get("resident_models") or ())

    @property
    def running_ids(self) -> list[str]:
        return [s.state.busy for s in self.slots if s.state.busy is not None]

    def workers(self) -> list[dict]:
        out = []
        for slot in self.slots:
            i = slot.info
            out.append({"id": slot.state.id, "node": i.get("node"), "pid": i.get("pid"), "alive": slot.state.alive,
                        "devices": i.get("devices") or [], "resident_models": sorted(slot.state.models),
                        "busy_prompt": slot.state.busy, "prompts_done": slot.state.done,
                        "last_error": i.get("last_error") or slot.lost, "model_loads": i.get("model_loads", 0),
                        "restarts": slot.restarts, "shared_disk": i.get("shared_disk")})
        return out

    # -- dispatching ---------------------------------------------------------------------------------
    def _needs_of(self, pid: str) -> Needs:
        with self._lock:
            v = self._needs.get(pid)
        if isinstance(v, Needs):
            return v
        try:
            if v is None and self.prepare is not None:  # queued before a restart
                item = self.store.get(pid)
                v = self.prepare(item.prompt, item.outputs_to_execute or None) if item is not None else None
            n = needs_of(v) if v is not None else Needs()
        except Exception:  # it will fail on the worker with a clear error; schedule it anywhere
            n = Needs()
        with self._lock:
            self._needs[pid] = n
        return n

    def _dispatch(self) -> None:
        states = [s.state for s in self.slots]
        while not self._stop:
            try:
                if any(st.alive and st.busy is None for st in states):
                    head = self.store.pending_ids(max(self.scheduler.window, 2 * self.n))
                    pending = [(pid, self._needs_of(pid)) for pid in head]
                    assigned = self.scheduler.assign(pending, states)
                    if assigned and log.isEnabledFor(logging.DEBUG):
                        log.debug("dispatch %s", [(pid[:8], sorted(self._needs_of(pid).models), st.id,
                                                   sorted(st.models)) for pid, st in assigned])
                    for pid, st in assigned:
                        item = self.store.take(pid)
                        slot = next(s for s in self.slots if s.state is st)
                        if item is None:  # deleted meanwhile
                            st.busy, st.expect = None, set()
                            continue
                        if len(assigned) == 1 == len(pending) and self.fan_out and self._fan_out(slot, item):
                            continue
                        slot.thread = threading.Thread(target=self._drive, args=(slot, item), daemon=True,
                                                       name=f"loom-drive-{st.id}")
                        slot.thread.start()
            except Exception:
                log.exception("dispatching failed")
            self._wake.wait(0.5)
            self._wake.clear()

    # -- batch fan-out ------------------------------------------------------------------------------
    def _fan_out(self, slot: _Slot, item: Item) -> bool:
        """Split ``item``'s batch over ``slot`` and the idle workers when that gives the same images
        (``service.fanout``); False: run it whole."""
        idle = [s for s in self.slots if s is not slot and s.state.alive and s.state.busy is None]
        if not idle:
            return False
        prompt = item.prompt
        got = fanout.plan(prompt, list(item.outputs_to_execute or []), 1 + len(idle))
        if got is None:
            return False
        latent, parts = got
        slots = [slot, *idle[: len(parts) - 1]]
        for s in slots[1:]:
            s.state.busy, s.state.expect = item.id, set(slot.state.expect)
        slot.thread = threading.Thread(target=self._drive_fanout, args=(slots, item, latent, parts), daemon=True,
                                       name=f"loom-fanout-{item.id[:8]}")
        slot.thread.start()
        return True

    def _drive_fanout(self, slots: list[_Slot], item: Item, latent: str, parts: list[tuple[int, int]]) -> None:
        import ray
        from ray.exceptions import RayError

        pid = item.id
        whole = item.prompt
        self._post(("status", self.store.remaining()))
        self._post(("begin", pid, item.extra_data.get("client_id")))
        results: list = [None] * len(parts)
        lost: list = [None] * len(parts)
        started = [False] * len(parts)
        once = {"execution_start", "execution_cached"}  # from the first part only
        held = {"executed", "execution_success", "execution_error", "execution_interrupted"}  # sent once, merged

        def run_part(j: int) -> None:
            s, n = parts[j]
            part = replace(item, prompt_json=json.dumps(fanout.part_prompt(whole, latent, s, n)),
                           extra_data={**item.extra_data, FANOUT_KEY: whole})
            try:
                for ref in slots[j].actor.run.remote(part, self.ship_outputs):
                    for m in ray.get(ref):
                        started[j] = True
                        if m[0] == "result":
                            results[j] = m
                        elif m[0] == "event":
                            node = m[3].get("node", m[3].get("node_id"))
                            if m[2] in held or (m[2] in once and j) or node == fanout.PART_NODE:
                                continue
                            self._post(m)
                        else:
                            self._post(m)
            except RayError as e:
                lost[j] = e
                for k, other in enumerate(slots):  # the prompt goes back whole: stop the other parts
                    if k != j and other.actor is not None:
                        other.actor.interrupt.remote(pid)

        threads = [threading.Thread(target=run_part, args=(j,), daemon=True) for j in range(len(parts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for j, s in enumerate(slots):
            r = results[j]
            if r is not None:
                s.info = r[4]
                s.state.models = set(r[4].get("resident_models") or ())
                s.state.done += 1
            if r is not None and r[3]:
                self._write_files(r[2], r[3])
        bad = next((j for j in range(len(parts)) if lost[j] is not None), None)
        if bad is not None:
            for j, s in enumerate(slots):
                if j != bad:
                    s.state.busy, s.state.expect = None, set()
            self._lost(slots[bad], item, lost[bad], started[bad])
            return
        failed = next((r for r in results if r is None or r[1] != "success"), None)
        if failed is None:
            entry = fanout.merge(pid, [r[2] for r in results], parts, [s.state.id for s in slots])
            for nid, ui in entry["outputs"].items():
                self._post(("event", pid, "executed", {"node": nid, "display_node": nid, "output": ui,
                                                       "prompt_id": pid}))
            self._post(("event", pid, "execution_success", {"prompt_id": pid, "timestamp": now_ms()}))
            outcome = "success"
        else:
            outcome = failed[1] if failed is not None else "error"
            entry = failed[2] if failed is not None else \
                failure_entry(execution_error(pid, WorkerLost("a part had no result")))
            err = (entry.get("loom") or {}).get("error")
            if outcome == "interrupted":
                self._post(("event", pid, "execution_interrupted", {"prompt_id": pid, "node_id": None,
                                                                    "node_type": None, "executed": [],
                                                                    "timestamp": now_ms()}))
            elif err:
                self._post(("event", pid, "execution_error", err))
        for s in slots[1:]:
            s.state.busy, s.state.expect = None, set()
        self._finish(slots[0], pid, outcome, entry)

    def _post(self, item: tuple) -> None:
        if self.bridge is not None:
            self.bridge.post(item)

    def _drive(self, slot: _Slot, item: Item) -> None:
        """Run ``item`` on the slot's actor, forwarding its stream; handle a lost actor."""
        import ray
        from ray.exceptions import RayError

        pid = item.id
        st = slot.state
        self._post(("status", self.store.remaining()))
        self._post(("begin", pid, item.extra_data.get("client_id")))
        result = None
        started = False
        try:
            for ref in slot.actor.run.remote(item, self.ship_outputs):
                for m in ray.get(ref):
                    started = True
                    if m[0] == "result":
                        result = m
                    else:
                        self._post(m)
        except RayError as e:
            self._lost(slot, item, e, started)
            return
        except Exception as e:  # a bug on this side: fail the prompt, keep the worker
            log.exception("driving %s on %s failed", pid, st.id)
            result = ("result", "error", failure_entry(execution_error(pid, e)), [], slot.info)
        if result is None:
            lost = WorkerLost("the worker ended without a result")
            result = ("result", "error", failure_entry(execution_error(pid, lost)),
                      [], slot.info)
        _, outcome, entry, files, info = result
        if files:
            self._write_files(entry, files)
        slot.info = info
        st.models = set(info.get("resident_models") or ())
        st.remember(self._needs_of(pid).keys)
        st.done += 1
        self._finish(slot, pid, outcome, entry)

    def _finish(self, slot: _Slot | None, pid: str, outcome: str, entry: dict) -> None:
        with self._lock:
            self._needs.pop(pid, None)
        self._losses.pop(pid, None)
        self.store.finish(pid, outcome, entry)
        if slot is not None:
            slot.state.busy, slot.state.expect = None, set()
        self._post(("status", self.store.remaining()))
        self._post(("end", pid))
        self._wake.set()

    def _lost(self, slot: _Slot, item: Item, err: Exception, started: bool) -> None:
        pid = item.id
        st = slot.state
        st.alive = False
        if self._stop:  # ``stop`` killed it: back to the queue, uncounted, for the next front door
            self.store.requeue(pid)
            st.busy, st.expect = None, set()
            return
        slot.restarts += 1
        slot.lost = f"lost: {type(err).__name__}"
        log.warning("worker %s lost under prompt %s: %s", st.id, pid, err)
        n = self._losses[pid] = self._losses.get(pid, 0) + (1 if started else 0)
        if n < 2:
            self.store.requeue(pid)
            st.busy, st.expect = None, set()
            self._post(("status", self.store.remaining()))
        else:
            entry = failure_entry(execution_error(pid, WorkerLost(
                f"the worker running this prompt was lost twice ({type(err).__name__})")))
            entry["loom"]["worker"] = st.id
            self._post(("event", pid, "execution_error", entry["loom"]["error"]))
            self._finish(slot, pid, "error", entry)
        if not self._stop:
            threading.Thread(target=self._spawn, args=(slot,), daemon=True, name=f"loom-respawn-{st.id}").start()
        self._wake.set()

    def _write_files(self, entry: dict, files: list) -> None:
        """Files from a worker without the front door's disk: written under the same names, or the next free
        counter when that name is taken (the history entry is updated to match)."""
        from engine.folders import confine

        roots = {"output": self.config["output_dir"], "temp": self.config["temp_dir"]}
        renames: dict[tuple, str] = {}
        for kind, sub, name, data in files:
            if name.endswith(".manifest.json"):
                continue
            dest = confine(roots[kind], "/".join(x for x in (sub, name) if x))
            dest.parent.mkdir(parents=True, exist_ok=True)
            final = dest
            k = 1
            while final.exists():
                final = dest.with_name(f"{dest.stem}.{k}{dest.suffix}")
                k += 1
            final.write_bytes(data)
            if final != dest:
                renames[(kind, sub, name)] = final.name
        for kind, sub, name, data in files:
            if name.endswith(".manifest.json"):
                img = name[: -len(".manifest.json")]
                for ext_name, new in renames.items():
                    if ext_name[:2] == (kind, sub) and Path(ext_name[2]).stem == img:
                        name = Path(new).stem + ".manifest.json"
                dest = confine(roots[kind], "/".join(x for x in (sub, name) if x))
                dest.write_bytes(data)
        for ui in (entry.get("outputs") or {}).values():
            for key in ("images", "video", "audio", "files"):
                for f in (ui or {}).get(key) or ():
                    if isinstance(f, dict):
                        new = renames.get((f.get("type"), f.get("subfolder") or "", f.get("filename")))
                        if new:
                            f["filename"] = new
