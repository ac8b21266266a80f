"""Hub bookkeeping without sockets: replay bounds, progress_state synthesis, seq numbering."""
from __future__ import annotations

from service.hub import Hub


def _run(h: Hub, pid: str, nodes: int) -> None:
    h.begin(pid, None)
    for i in range(nodes):
        h.event(pid, "executing", {"node": str(i), "display_node": str(i), "prompt_id": pid})
        h.event(pid, "node_done", {"node": str(i), "prompt_id": pid, "duration_ms": 0.1, "reason": "new"})
    h.end(pid)


def test_progress_state_carries_one_node_and_seq_is_dense():
    h = Hub()
    nodes = 3
    _run(h, "p", nodes)
    evs, done = h.events_after("p", -1)
    assert done and [e[0] for e in evs] == list(range(len(evs)))
    states = [e[2] for e in evs if e[1] == "progress_state"]
    # one "running" state when a node starts and one "finished" when it is done, for each node in turn
    assert all(len(s["nodes"]) == 1 for s in states)
    seen = [(nid, st["state"]) for s in states for nid, st in s["nodes"].items()]
    assert seen == [(str(i), state) for i in range(nodes) for state in ("running", "finished")]
    assert evs[-1][1] == "executing" and evs[-1][2]["node"] is None
    mid = len(evs) // 2
    assert [e[0] for e in h.events_after("p", mid)[0]] == list(range(mid + 1, len(evs)))


def test_replay_is_bounded_by_prompts_and_total_events():
    cap = 100
    h = Hub(replay_prompts=3, replay_events=cap)
    for i in range(5):
        _run(h, f"p{i}", 5)
    per_prompt = len(h.events_after("p4", -1)[0])
    assert 3 * per_prompt <= cap  # so only the prompt count bounds this part
    assert list(h.replay) == ["p2", "p3", "p4"] and h.replay_total == 3 * per_prompt
    assert h.events_after("p0", -1) is None
    _run(h, "big", 40)  # more events than the cap: everything older goes, "big" keeps a capped buffer
    assert list(h.replay) == ["big"] and h.replay_total == cap
    assert len(h.events_after("big", -1)[0]) == cap
    assert not h.runs and h.current is None
