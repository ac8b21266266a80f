"""Test-only nodes for the server tests: slow steps with previews, a failing node, a counter."""
from __future__ import annotations

import threading
import time

from engine.node import Float, Int, Node, Output, Result, Socket, String

STARTED = threading.Event()
STEPS_DONE = {"n": 0}  # steps completed by the last ServerSteps run (read by the interrupt test)


class ServerSteps(Node):
    """Runs ``steps`` steps of ``delay`` seconds, reporting progress (and a preview image) per step."""
    category = "testing"
    inputs = (Int("steps", 5, min=1, max=100000), Float("delay", 0.01, min=0.0, max=60.0, step=0.001),
              Int("preview", 0, min=0, max=1), Int("seed", 0, min=0, max=10**9))
    outputs = (Output("INT", "steps"),)
    output_node = True

    def run(self, ctx, steps, delay, preview, seed):
        STARTED.set()
        STEPS_DONE["n"] = 0
        for i in range(steps):
            ctx.check_cancelled()
            time.sleep(delay)
            STEPS_DONE["n"] = i + 1
            pv = None
            if preview:
                def pv(i=i):
                    from PIL import Image
                    return Image.new("RGB", (64, 64), (i * 20 % 256, 80, 160))
            ctx.progress(i + 1, steps, pv)
        return Result((steps,), {"text": [f"ran {steps} steps"], "done_at": [time.time()]})


class ServerFail(Node):
    """Always raises."""
    category = "testing"
    inputs = (String("message", "boom"),)
    outputs = ()
    output_node = True

    def run(self, ctx, message):
        raise RuntimeError(message)


class ServerChain(Node):
    """value + 1 (for long chains in benchmarks)."""
    category = "testing"
    inputs = (Socket("value", "INT", optional=True), Int("k", 0, min=0, max=10**9))
    outputs = (Output("INT"),)

    def run(self, ctx, k, value=None):
        return ((value or 0) + 1,)


class ServerShow(Node):
    """Output node reporting an INT."""
    category = "testing"
    inputs = (Socket("value", "INT"),)
    outputs = ()
    output_node = True

    def run(self, ctx, value):
        return Result((), {"text": [str(value)], "done_at": [time.time()]})


class ServerKillWorker(Node):
    """Kills the process running it with SIGKILL after ``delay`` seconds: a pool worker lost mid-prompt (the Ray
    pool tests only; in-process it would kill the server)."""
    category = "testing"
    inputs = (Float("delay", 0.0, min=0.0, max=60.0, step=0.001), Int("seed", 0, min=0, max=10**9))
    outputs = ()
    output_node = True

    def run(self, ctx, delay, seed):
        import os
        import signal

        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)


STUBS = [ServerSteps, ServerFail, ServerChain, ServerShow, ServerKillWorker]


def registry():
    from engine.node import Registry
    from nodes import all_nodes

    return Registry([*all_nodes(), *STUBS])
