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
    _run(h, "p", 3)
    evs, done = h.events_after("p", -1)
    assert done and [e[0] for e in evs] == list(range(len(evs)))
    states = [e[2] for e in evs if e[1] == "progress_state"]
    assert len(states) == 6 and all(len(s["nodes"]) == 1 for s in states)
    assert [next(iter(s["nodes"].values()))["state"] for s in states[:2]] == ["running", "finished"]
    assert evs[-1][1] == "executing" and evs[-1][2]["node"] is None
    assert [e[0] for e in h.events_after("p", 5)[0]] == list(range(6, len(evs)))


def test_replay_is_bounded_by_prompts_and_total_events():
    h = Hub(replay_prompts=3, replay_events=100)
    for i in range(5):
        _run(h, f"p{i}", 5)  # 5 nodes -> 21 events each
    assert list(h.replay) == ["p2", "p3", "p4"]
    assert h.events_after("p0", -1) is None
    _run(h, "big", 40)  # 161 events: everything older goes, the running prompt keeps its (capped) buffer
    assert list(h.replay) == ["big"] and h.replay_total == 100
    assert not h.runs and h.current is None
