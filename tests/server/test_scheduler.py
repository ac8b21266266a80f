"""The pool's scheduler and batch fan-out planning, without Ray: affinity, never idle, no starvation."""
from __future__ import annotations

import json
from pathlib import Path

from engine.executor import Executor
from nodes import default_registry
from service import fanout
from service.scheduler import Needs, Scheduler, WorkerState, needs_of

REPO = Path(__file__).resolve().parents[2]


def need(*models):
    return Needs(frozenset(models))


def test_needs_name_the_checkpoint_and_key_every_node():
    wf = json.loads((REPO / "workflows" / "default.json").read_text())
    ex = Executor(default_registry())
    n = needs_of(ex.prepare(wf))
    assert n.models == {"loom-shapes-64.safetensors"} and len(n.keys) == len(wf)
    wf["5"]["inputs"]["seed"] = 1  # the sampler and what follows change; loader and encoders keep their keys
    m = needs_of(ex.prepare(wf))
    assert len(n.keys & m.keys) == 4


def test_affinity_sends_prompts_to_the_worker_holding_their_model():
    a, b = WorkerState("a", models={"checkpoints/A.safetensors"}), WorkerState("b", models={"checkpoints/B.safetensors"})
    got = Scheduler().assign([("p1", need("B.safetensors")), ("p2", need("A.safetensors"))], [a, b])
    assert {(pid, w.id) for pid, w in got} == {("p1", "b"), ("p2", "a")}


def test_a_later_prompt_overtakes_only_with_affinity_and_never_starves_the_head():
    s = Scheduler(max_skips=2)
    a = WorkerState("a", models={"B.safetensors"})
    busy = WorkerState("z", models={"A.safetensors"}, busy="x")
    queue = [("head", need("A.safetensors")), ("b1", need("B.safetensors")), ("b2", need("B.safetensors")),
             ("b3", need("B.safetensors"))]
    taken = []
    for _ in range(3):
        (pid, w), = s.assign(queue, [a, busy])
        taken.append(pid)
        queue = [q for q in queue if q[0] != pid]
        a.busy = None
    assert taken == ["b1", "b2", "head"]  # overtaken twice, then served


def test_empty_workers_split_a_paired_mix_by_checkpoint():
    """A A B B A A B B on two empty workers: the second worker takes B, not the A the first is loading."""
    ws = [WorkerState("w1"), WorkerState("w2")]
    queue = [(f"p{k}", need("AB"[(k // 2) % 2] + ".safetensors")) for k in range(8)]
    s = Scheduler()
    placed = {}
    for _ in range(4):
        for pid, w in s.assign(queue, ws):
            placed[pid] = w.id
            queue = [q for q in queue if q[0] != pid]
        for w in ws:  # both finish; what they ran is now resident
            w.models |= w.expect
            w.busy, w.expect = None, set()
    assert {placed[f"p{k}"] for k in (0, 1, 4, 5)} != {placed[f"p{k}"] for k in (2, 3, 6, 7)}
    assert len({placed[f"p{k}"] for k in (0, 1, 4, 5)}) == 1 and len({placed[f"p{k}"] for k in (2, 3, 6, 7)}) == 1


def test_no_worker_is_left_idle_while_prompts_wait():
    ws = [WorkerState(str(i), models={"A.safetensors"}) for i in range(3)]
    got = Scheduler().assign([(f"p{i}", need("B.safetensors")) for i in range(5)], ws)
    assert len(got) == 3 and {w.id for _, w in got} == {"0", "1", "2"}


def test_round_robin_takes_workers_in_turn_whatever_they_hold():
    a, b = WorkerState("a", models={"B.safetensors"}), WorkerState("b", models={"A.safetensors"})
    got = Scheduler("round_robin").assign([("p1", need("A.safetensors")), ("p2", need("B.safetensors"))], [a, b])
    assert [(p, w.id) for p, w in got] == [("p1", "a"), ("p2", "b")]


def test_fan_out_plans_only_what_gives_the_same_images():
    wf = json.loads((REPO / "workflows" / "default.json").read_text())
    assert fanout.plan(wf, ["7"], 2) == ("4", [(0, 2), (2, 2)])
    assert fanout.plan(wf, ["7"], 3) == ("4", [(0, 2), (2, 2)])  # parts of at least 2 items
    assert fanout.plan(wf, ["7"], 1) is None
    anc = json.loads(json.dumps(wf))
    anc["5"]["inputs"]["sampler_name"] = "euler_ancestral"
    assert fanout.plan(anc, ["7"], 2) is None
    small = json.loads(json.dumps(wf))
    small["4"]["inputs"]["batch_size"] = 3
    assert fanout.plan(small, ["7"], 2) is None
    other = {**wf, "9": {"class_type": "ImageInvert", "inputs": {"image": ["6", 0]}},
             "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}}
    assert fanout.plan(other, ["7", "10"], 2) is None  # ImageInvert is not on the per-item list
    part = fanout.part_prompt(wf, "4", 2, 2)
    assert part["5"]["inputs"]["latent_image"] == [fanout.PART_NODE, 0]
    assert part[fanout.PART_NODE]["inputs"] == {"samples": ["4", 0], "batch_index": 2, "length": 2}
    assert wf["5"]["inputs"]["latent_image"] == ["4", 0]  # the original is untouched
