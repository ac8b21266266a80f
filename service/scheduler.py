"""Which pending prompt goes to which idle worker: model affinity, then output-cache affinity, then the least
loaded worker; never a worker left idle while prompts wait. Pure (no Ray, no I/O), so the benchmark can run
it against a model of 100 workers.

A prompt's needs are known after validation: the model files its loader nodes name (``ckpt_name``,
``lora_name``, ``vae_name``, ...) and the structural keys of its nodes (``engine.cache.node_key`` without
fingerprints). A worker's state is what it reported (its resident models) and the keys of the prompts it
ran (a bounded memory standing in for its output cache).

The affinity rule, for a window at the head of the queue: a pair (prompt, idle worker) scores (models the
worker holds, keys it has, minus the prompt's models that a *busy* worker holds); the best pair goes first,
ties to the older prompt, then to the worker with the fewest prompts done. A later prompt can overtake the
head only with a better score than the head gets on that worker, and the head is overtaken at most
``max_skips`` times, so nothing starves. ``round_robin`` is the baseline a home-made dispatcher gives:
queue order, workers in turn.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from engine.cache import node_key
from engine.graph import dependencies, execution_order
from engine.workflow import Link

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


@dataclass(frozen=True)
class Needs:
    """What one prompt needs: model file names (as written in the prompt) and node keys."""
    models: frozenset = frozenset()
    keys: frozenset = frozenset()


def needs_of(validated) -> Needs:
    """Needs of a ``Validated`` workflow (model names from ``*_name`` inputs naming model files)."""
    wf = validated.workflow
    models: set[str] = set()
    keys: dict[str, bytes] = {}
    for nid in execution_order(dependencies(wf.nodes), validated.outputs):  # upstream first
        spec = wf.nodes[nid]
        consts = {k: v for k, v in spec.inputs.items() if type(v) is not Link}
        for k, v in consts.items():
            if k.endswith("_name") and isinstance(v, str) and v.lower().endswith(MODEL_EXTENSIONS):
                models.add(v)
        links = {k: (keys.get(v.node, b""), v.output) for k, v in spec.inputs.items() if type(v) is Link}
        version = str(getattr(validated.classes.get(nid), "version", ""))
        keys[nid] = node_key(spec.class_type, version, consts, links)
    return Needs(frozenset(models), frozenset(keys.values()))


def holds(resident: set[str] | frozenset, model: str) -> bool:
    """Whether a worker's resident model paths (relative to its models folder) include ``model``."""
    return any(r == model or r.endswith("/" + model) for r in resident)


@dataclass
class WorkerState:
    id: str
    models: set = field(default_factory=set)      # resident model paths, as the worker reports them
    expect: set = field(default_factory=set)      # models of the prompt it is running (about to be resident)
    keys: OrderedDict = field(default_factory=OrderedDict)  # node keys of prompts it ran, bounded
    busy: str | None = None
    done: int = 0
    alive: bool = True

    def remember(self, keys, limit: int = 20_000) -> None:
        for k in keys:
            self.keys[k] = None
            self.keys.move_to_end(k)
        while len(self.keys) > limit:
            self.keys.popitem(last=False)

    def model_hits(self, needs: Needs) -> int:
        have = self.models | self.expect
        return sum(1 for m in needs.models if holds(have, m))


class Scheduler:
    def __init__(self, policy: str = "affinity", window: int = 32, max_skips: int | None = None):
        if policy not in ("affinity", "round_robin"):
            raise ValueError(f"unknown scheduling policy {policy!r} (affinity or round_robin)")
        self.policy = policy
        self.window = window
        self.max_skips = max_skips
        self._skips: dict[str, int] = {}
        self._turn = 0

    def assign(self, pending: list[tuple[str, Needs]], workers: list[WorkerState]) -> list[tuple[str, WorkerState]]:
        """Pairs (prompt id, worker) to start now. ``pending`` is the queue head in order."""
        idle = [w for w in workers if w.alive and w.busy is None]
        if not idle or not pending:
            return []
        if self.policy == "round_robin":
            return self._round_robin(pending, workers)
        busy = [w for w in workers if w.alive and w.busy is not None]
        max_skips = self.max_skips if self.max_skips is not None else max(2, len(workers))
        window = list(pending[: max(self.window, 2 * len(workers))])
        out: list[tuple[str, WorkerState]] = []
        while idle and window:
            head_id, head_needs = window[0]

            def score(needs: Needs, w: WorkerState) -> tuple:
                claimed = sum(1 for m in needs.models if any(holds(b.models | b.expect, m) for b in busy))
                return (w.model_hits(needs), len(needs.keys & w.keys.keys()), -claimed)

            best = None  # (score, -index, -done) , index, worker
            for w in idle:
                head_score = score(head_needs, w)
                cand = ((head_score, 0, -w.done), 0, w)
                if self._skips.get(head_id, 0) < max_skips:
                    for i in range(1, len(window)):
                        s = score(window[i][1], w)
                        if s > head_score and (s, -i, -w.done) > cand[0]:
                            cand = ((s, -i, -w.done), i, w)
                if best is None or cand[0] > best[0]:
                    best = cand
            _, i, w = best
            pid, needs = window.pop(i)
            if i > 0:
                self._skips[head_id] = self._skips.get(head_id, 0) + 1
            self._skips.pop(pid, None)
            idle.remove(w)
            w.busy, w.expect = pid, set(needs.models)
            busy.append(w)
            out.append((pid, w))
        return out

    def _round_robin(self, pending, workers) -> list[tuple[str, WorkerState]]:
        out = []
        n = len(workers)
        queue = list(pending)
        for _ in range(n):
            if not queue:
                break
            w = workers[self._turn % n]
            self._turn += 1
            if not w.alive or w.busy is not None:
                continue
            pid, needs = queue.pop(0)
            w.busy, w.expect = pid, set(needs.models)
            out.append((pid, w))
        return out

    def forget(self, prompt_id: str) -> None:
        self._skips.pop(prompt_id, None)
