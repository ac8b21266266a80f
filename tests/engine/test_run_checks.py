"""Run-time checks of the executor (issue 9): event order, linked-value ranges, memory estimates,
text that cannot be encoded."""
from __future__ import annotations

from engine import Executor, Node, Output, Registry
from engine.node import Int, Socket

from . import stubs


class Probe(Node):
    """Output node whose fingerprint records the events already emitted when cache keys are computed."""
    category = "test"
    inputs = (Int("value", 0),)
    outputs = ()
    output_node = True
    SEEN: list = []
    EVENTS: list = []

    @classmethod
    def fingerprint(cls, env, **constants):
        cls.SEEN.append([e.type for e in cls.EVENTS])
        return 0

    def run(self, ctx, value):
        return ()


def test_execution_start_is_sent_before_the_cache_key_work():
    """Item 12a: ComfyUI sends execution_start first, before any per-run work."""
    ex = Executor(Registry([*stubs.registry(), Probe]))
    Probe.SEEN.clear(), Probe.EVENTS.clear()
    r = ex.run({"1": {"class_type": "Probe", "inputs": {"value": 1}}}, sink=Probe.EVENTS.append)
    assert r.status == "success"
    assert Probe.SEEN == [["execution_start"]]
    assert [e.type for e in Probe.EVENTS][:2] == ["execution_start", "execution_cached"]
