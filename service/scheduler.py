"""Which pending prompt goes to which idle worker: model affinity, then output-cache affinity, then the least
loaded worker; never a worker left idle while prompts wait. Pure (no Ray, no I/O), so the benchmark can run
it against a model of 100 workers.

A prompt's needs are known after validation: the model files its loader nodes name (``ckpt_name``,
``lora_name``, ``vae_name``, ...) and the structural keys of its nodes (``engine.cache.node_key`` without
fingerprints). A worker's state is what it reported (its resident models) and the keys of the prompts it
ran (a bounded memory standing in for its output cache).

The affinity rule, for a window at the head of the queue: a pair (prompt, idle worker) scores (models the
worker holds, minus the prompt's models that a *busy* worker holds or is loading, keys it has); the best
pair goes first, ties to the older prompt, then to the worker with the fewest prompts done. A later prompt
(one of the oldest few needing a model the worker holds, or the oldest whose models no busy worker holds)
can overtake the head only with a better score than the head gets on that worker, and the head is overtaken
at most ``max_skips`` times, so nothing starves. ``round_robin`` is the baseline a home-made dispatcher
gives: queue order, workers in turn.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

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


def suffixes(paths) -> set[str]:
    """Every trailing part of each path ("checkpoints/sub/x.safetensors" -> it, "sub/x...", "x..."), so a model
    named in a prompt relative to its folder matches a resident path relative to the models folder in O(1)."""
    out: set[str] = set()
    for p in paths:
        out.update(_suffixes(str(p)))
    return out


@lru_cache(maxsize=65536)
def _suffixes(path: str) -> tuple[str, ...]:
    parts = path.split("/")
    return tuple("/".join(parts[i:]) for i in range(len(parts)))


def holds(resident, model: str) -> bool:
    """Whether a worker's resident model paths (relative to its models folder) include ``model``."""
    return model in suffixes(resident)


@dataclass(eq=False)  # identity: workers are compared as objects
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

    _names: tuple | None = field(default=None, repr=False, compare=False)

    def names(self) -> set[str]:
        """Suffixes of its resident and expected models (cached until ``models`` or ``expect`` change)."""
        c = self._names
        if c is None or c[0] is not self.models or c[1] is not self.expect or c[2] != (len(self.models),
                                                                                      len(self.expect)):
            c = self._names = (self.models, self.expect, (len(self.models), len(self.expect)),
                               suffixes(self.models | self.expect))
        return c[3]


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
        claimed: set[str] = set()  # model names held by busy workers (resident or about to be)
        for w in workers:
            if w.alive and w.busy is not None:
                claimed.update(w.names())
        names = {id(w): w.names() for w in idle}
        max_skips = self.max_skips if self.max_skips is not None else max(2, len(workers))
        window = list(pending[: max(self.window, 2 * len(workers))])

        def score(needs: Needs, w: WorkerState) -> tuple:
            have = names[id(w)]
            return (sum(1 for m in needs.models if m in have), -sum(1 for m in needs.models if m in claimed),
                    sum(1 for k in needs.keys if k in w.keys))

        out: list[tuple[str, WorkerState]] = []
        while idle and window:
            head_id, head_needs = window[0]
            may_skip = self._skips.get(head_id, 0) < max_skips
            by_model: dict[str, list[int]] = {}  # model -> window positions of the prompts needing it
            if may_skip:
                held = set().union(*(names[id(w)] for w in idle))
                for i in range(1, len(window)):
                    for m in window[i][1].models:
                        if m in held:
                            by_model.setdefault(m, []).append(i)
            # when a busy worker is about to hold the head's models, the oldest prompt whose models nobody holds
            # may go first instead (the head then waits for that worker, which loads nothing)
            unclaimed: list[int] = []
            if may_skip and any(m in claimed for m in head_needs.models):
                unclaimed = next(([i] for i in range(1, min(len(window), 17))
                                  if not any(m in claimed for m in window[i][1].models)), [])
            best = None  # ((score, -index, -done), index, worker)
            for w in idle:
                head_score = score(head_needs, w)
                cand = ((head_score, 0, -w.done), 0, w)
                held_by_w = [i for m in (names[id(w)] if may_skip else ()) for i in by_model.get(m, ())[:4]]
                for i in unclaimed + held_by_w:  # and the oldest few prompts for each model it holds
                    sc = score(window[i][1], w)
                    if sc > head_score and (sc, -i, -w.done) > cand[0]:
                        cand = ((sc, -i, -w.done), i, w)
                if best is None or cand[0] > best[0]:
                    best = cand
            _, i, w = best
            pid, needs = window.pop(i)
            if i > 0:
                self._skips[head_id] = self._skips.get(head_id, 0) + 1
            self._skips.pop(pid, None)
            idle.remove(w)
            w.busy, w.expect = pid, set(needs.models)
            claimed.update(needs.models)
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
