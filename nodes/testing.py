"""Test-only nodes, registered only when the environment variable LOOM_TEST_NODES=1.

LoomTestSlow sleeps ``steps`` × ``delay`` seconds, reporting progress every step, so cancellation
(POST /interrupt, Ctrl-C in the CLI) can be tested without a model.
"""
from __future__ import annotations

import os
import time

from engine.node import Float, Int, Node, Output, Result, Socket


class LoomTestSlow(Node):
    """Sleeps steps × delay seconds with progress and cancellation; passes ``value`` through."""
    category = "testing"
    inputs = (Int("steps", 10, min=1, max=100000), Float("delay", 0.05, min=0.0, max=60.0, step=0.01),
              Socket("value", "*", optional=True))
    outputs = (Output("INT", "steps"),)
    not_idempotent = True
    output_node = True  # a one-node workflow is enough

    def run(self, ctx, steps, delay, value=None):
        for i in range(steps):
            ctx.check_cancelled()
            time.sleep(delay)
            ctx.progress(i + 1, steps)
        return Result((steps,), {"text": [f"slept {steps} steps"]})


NODES = [LoomTestSlow] if os.environ.get("LOOM_TEST_NODES") == "1" else []
