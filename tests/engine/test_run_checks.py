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


# -- item 8: linked values are range-checked; outputs must fit the memory budget -----------------------------
from engine.budget import tensor_bytes  # noqa: E402
from engine.node import Float  # noqa: E402


class Size(Node):
    """An unbounded integer (like PrimitiveInt)."""
    category = "test"
    inputs = (Int("value", 0),)
    outputs = (Output("INT"),)

    def run(self, ctx, value):
        return (value,)


class Canvas(Node):
    """Allocates width*height*batch float32 values (a stand-in for EmptyLatentImage / EmptyImage)."""
    category = "test"
    inputs = (Int("width", 8, min=1, max=16384), Int("height", 8, min=1, max=16384), Int("batch", 1, min=1, max=4096),
              Float("gain", 1.0, min=0.0, max=2.0))
    outputs = (Output("CANVAS"),)
    RAN: list = []

    @classmethod
    def estimate_bytes(cls, width, height, batch, **_):
        return tensor_bytes(batch, height, width)

    def run(self, ctx, width, height, batch, gain):
        Canvas.RAN.append((width, height, batch))
        return ((width, height, batch),)


class Grow(Node):
    """Scales a canvas by ``factor``; its estimate reads the linked canvas."""
    category = "test"
    inputs = (Socket("canvas", "CANVAS"), Int("factor", 2, min=1, max=64))
    outputs = (Output("CANVAS"),)

    @classmethod
    def estimate_bytes(cls, canvas, factor):
        w, h, b = canvas
        return tensor_bytes(b, h * factor, w * factor)

    def run(self, ctx, canvas, factor):
        Canvas.RAN.append(("grow", factor))
        w, h, b = canvas
        return ((w * factor, h * factor, b),)


class Sink(Node):
    """Output node."""
    category = "test"
    inputs = (Socket("canvas", "CANVAS"),)
    outputs = ()
    output_node = True

    def run(self, ctx, canvas):
        return ()


def _ex(**kw):
    return Executor(Registry([Size, Canvas, Grow, Sink]), **kw)


def test_linked_values_are_checked_against_the_consuming_range():
    """Item 8: a PrimitiveInt-like value linked into a width skipped min/max (100000 and -64 reached the node)."""
    for value, etype in ((100000, "value_bigger_than_max"), (-64, "value_smaller_than_min")):
        Canvas.RAN.clear()
        wf = {"1": {"class_type": "Size", "inputs": {"value": value}},
              "2": {"class_type": "Canvas", "inputs": {"width": ["1", 0], "height": 8, "batch": 1, "gain": 1.0}},
              "3": {"class_type": "Sink", "inputs": {"canvas": ["2", 0]}}}
        events = []
        r = _ex().run(wf, sink=events.append)
        assert r.status == "error" and Canvas.RAN == []
        assert r.error["node_id"] == "2" and r.error["exception_type"] == "engine.budget.LinkedValueError"
        assert "width" in r.error["exception_message"]
        item = r.node_errors["2"]["errors"][0]  # the same item validation gives a constant
        assert item["type"] == etype and item["extra_info"]["input_name"] == "width"
        assert item["extra_info"]["received_value"] == value
    # in range: runs
    wf = {"1": {"class_type": "Size", "inputs": {"value": 16384}},
          "2": {"class_type": "Canvas", "inputs": {"width": 4, "height": ["1", 0], "batch": 1, "gain": 1.0}},
          "3": {"class_type": "Sink", "inputs": {"canvas": ["2", 0]}}}
    assert _ex().run(wf).status == "success"


def test_a_run_that_cannot_fit_the_budget_is_refused_before_anything_runs():
    """Item 8: EmptyLatentImage 16384x16384 batch 64 allocated 4 GiB before a later node failed."""
    Canvas.RAN.clear()
    wf = {"1": {"class_type": "Canvas", "inputs": {"width": 16384, "height": 16384, "batch": 64, "gain": 1.0}},
          "2": {"class_type": "Sink", "inputs": {"canvas": ["1", 0]}}}
    events = []
    r = _ex(memory_budget=1 << 30).run(wf, sink=events.append)
    assert r.status == "error" and Canvas.RAN == []
    msg = r.error["exception_message"]
    assert r.error["node_id"] == "1" and "64.00 GiB" in msg and str(64 << 30) in msg and str(1 << 30) in msg
    assert r.node_errors["1"]["errors"][0]["extra_info"] == {"needed_bytes": 64 << 30, "budget_bytes": 1 << 30}
    assert [e.type for e in events][-1] == "execution_error"


def test_a_node_whose_linked_input_makes_it_too_big_is_refused_before_it_runs():
    Canvas.RAN.clear()
    wf = {"1": {"class_type": "Canvas", "inputs": {"width": 1024, "height": 1024, "batch": 1, "gain": 1.0}},
          "2": {"class_type": "Grow", "inputs": {"canvas": ["1", 0], "factor": 64}},
          "3": {"class_type": "Sink", "inputs": {"canvas": ["2", 0]}}}
    r = _ex(memory_budget=1 << 30).run(wf)
    assert r.status == "error" and r.error["node_id"] == "2" and Canvas.RAN == [(1024, 1024, 1)]
    assert "16.00 GiB" in r.error["exception_message"]
    wf["2"]["inputs"]["factor"] = 2
    Canvas.RAN.clear()
    assert _ex(memory_budget=1 << 30).run(wf).status == "success" and Canvas.RAN[-1] == ("grow", 2)


def test_estimates_of_the_tensor_creating_nodes():
    """The ComfyUI nodes that create tensors declare what they allocate (float32)."""
    import torch

    from nodes import default_registry

    reg = default_registry()
    est = lambda name, **kw: reg.get(name).estimate_bytes(**kw)  # noqa: E731
    assert est("EmptyLatentImage", width=16384, height=16384, batch_size=64) == 64 * 4 * 2048 * 2048 * 4
    assert est("EmptyImage", width=512, height=256, batch_size=2, color=0) == 2 * 256 * 512 * 3 * 4
    lat = {"samples": torch.zeros(2, 4, 8, 16)}
    assert est("VAEDecode", samples=lat, vae=None) == 2 * 64 * 128 * 3 * 4
    assert est("LatentUpscaleBy", samples=lat, upscale_method="nearest-exact", scale_by=2.0) == 2 * 4 * 16 * 32 * 4
    img = torch.zeros(1, 10, 20, 3)
    assert est("ImageScaleBy", image=img, upscale_method="area", scale_by=0.5) == 1 * 5 * 10 * 3 * 4
    assert est("ImageScale", image=img, upscale_method="area", width=40, height=0, crop="disabled") == 10 * 40 * 3 * 4
    ex = Executor(reg, memory_budget=1 << 30)  # the case, refused before anything runs
    wf = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 64}},
          "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    r = ex.run(wf)
    assert r.status == "error" and r.error["node_id"] == "1" and "memory budget" in r.error["exception_message"]
    assert r.nodes["1"].status == "failed" and r.nodes["2"].status == "skipped"


def test_cache_keys_accept_text_that_is_not_utf8():
    """Item 4: a lone surrogate in a constant made msgpack raise while deriving the cache key (a traceback in
    `loom run`); keys now encode it, distinct from every real string."""
    from engine.cache import node_key

    a = node_key("X", "1", {"s": "a\ud800"}, {})
    b = node_key("X", "1", {"s": "a\udfff"}, {})
    c = node_key("X", "1", {"s": "a"}, {})
    assert len({a, b, c}) == 3 and a == node_key("X", "1", {"s": "a\ud800"}, {})
