"""The in-place mutation guard (values.Versions, torch's ``_version`` counter) with real torch tensors:
a node that writes into an input fails with InputMutated, the corrupt upstream value is dropped from
the cache, and the next run recomputes it; nodes that copy first are left alone."""
from __future__ import annotations

import pytest
import torch

from engine import Executor, Node, Output, Registry, Result, Socket
from engine.node import Int


class MakeLatent(Node):
    """A LATENT-shaped dict holding a real tensor of ``value``."""
    inputs = (Int("value", 1, min=0, max=100),)
    outputs = (Output("LATENT"),)

    def run(self, ctx, value):
        return ({"samples": torch.full((1, 4, 2, 2), float(value))},)


class Mutate(Node):
    """Writes into its input in place (a node bug), in one of several ways."""
    inputs = (Socket("latent", "LATENT"), Int("how", 0, min=0, max=3))
    outputs = (Output("LATENT"),)

    def run(self, ctx, latent, how):
        t = latent["samples"]
        if how == 0:
            t.add_(1)
        elif how == 1:
            t[0, 0] = 5.0  # through indexing
        elif how == 2:
            t.view(-1)[:2].mul_(3)  # through a view
        else:
            torch.relu_(t.neg_())
            raise RuntimeError("failed after writing")  # raising after the write is caught too
        return (latent,)


class Copying(Node):
    """Copies before changing: allowed."""
    inputs = (Socket("latent", "LATENT"),)
    outputs = (Output("LATENT"),)

    def run(self, ctx, latent):
        t = latent["samples"].clone()
        t.add_(1)
        latent["samples"] = t  # the dict is the node's own copy (containers are isolated)
        return (latent,)


class Total(Node):
    """Output: the sum of a latent."""
    output_node = True
    inputs = (Socket("latent", "LATENT"),)

    def run(self, ctx, latent):
        return Result(ui={"text": [f"{latent['samples'].sum().item():g}"]})


REG = Registry([MakeLatent, Mutate, Copying, Total])


def wf(middle: str, how: int = 0) -> dict:
    inputs = {"latent": ["1", 0]} | ({"how": how} if middle == "Mutate" else {})
    return {"1": {"class_type": "MakeLatent", "inputs": {"value": 1}},
            "2": {"class_type": middle, "inputs": inputs},
            "3": {"class_type": "Total", "inputs": {"latent": ["2", 0]}},
            "4": {"class_type": "Total", "inputs": {"latent": ["1", 0]}}}


@pytest.mark.parametrize("how", [0, 1, 2, 3])
def test_writing_into_a_real_tensor_input_fails_the_node_and_drops_the_value(how):
    ex = Executor(REG)
    clean = ex.run({"1": wf("Mutate")["1"], "4": wf("Mutate")["4"]})  # MakeLatent's output is now cached
    assert clean.outputs["4"] == {"text": ["16"]} and len(ex.cache) == 2
    r = ex.run(wf("Mutate", how))
    assert r.status == "error" and r.error["node_id"] == "2"
    if how == 3:  # the node's own exception is reported; the write is still caught below
        assert r.error["exception_type"] == "RuntimeError"
    else:
        assert r.error["exception_type"] == "engine.errors.InputMutated"
        assert "modified its input(s) latent in place" in r.error["exception_message"]
    assert r.nodes["1"].status == "cached" and r.nodes["2"].status == "failed"
    # the corrupt upstream entry is gone: the next run recomputes it and sees the clean value again
    again = ex.run({k: v for k, v in wf("Copying").items() if k != "4"})  # a new reader of node 1
    assert again.nodes["1"].status == "executed" and again.nodes["1"].reason == "evicted from cache"
    assert again.outputs["3"] == {"text": ["32"]}  # 16 ones, + 1 each: the clean source


def test_a_node_that_copies_first_is_not_flagged_and_upstream_stays_cached():
    ex = Executor(REG)
    r = ex.run(wf("Copying"))
    assert r.status == "success"
    assert r.outputs == {"3": {"text": ["32"]}, "4": {"text": ["16"]}}  # 16 ones + 1 each; the source unchanged
    again = ex.run(wf("Copying"))
    assert again.executed == [] and again.outputs == r.outputs
