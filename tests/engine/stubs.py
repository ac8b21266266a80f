"""Small stub nodes for engine tests: no torch, no files."""
from __future__ import annotations

import time

from engine import Combo, Float, Int, Node, Output, Registry, Result, Socket, String

CALLS: list[str] = []  # class_type of every run, in order


class FakeTensor:
    """A value with torch's in-place modification counter (``_version``) and ``nbytes``."""

    def __init__(self, data):
        self.data = list(data)
        self._version = 0

    @property
    def nbytes(self) -> int:
        return 8 * len(self.data)

    def add_(self, x):
        self.data = [v + x for v in self.data]
        self._version += 1
        return self


class Number(Node):
    """Emits a constant integer."""
    category = "test"
    inputs = (Int("value", 0, min=-1000, max=10**6),)
    outputs = (Output("INT"),)

    def run(self, ctx, value):
        CALLS.append("Number")
        return (value,)


class Add(Node):
    """a + b."""
    category = "test"
    inputs = (Socket("a", "INT"), Socket("b", "INT", optional=True), Int("k", 0, min=-10, max=10))
    outputs = (Output("INT", "sum"),)

    def run(self, ctx, a, k, b=0):
        CALLS.append("Add")
        return (a + b + k,)


class Scale(Node):
    """value * factor, with a mode combo."""
    category = "test"
    inputs = (Socket("value", "INT"), Float("factor", 1.0, min=0.0, max=10.0), Combo("mode", ["floor", "round"]))
    outputs = (Output("FLOAT"),)

    def run(self, ctx, value, factor, mode):
        CALLS.append("Scale")
        return (value * factor,)


class Show(Node):
    """Output node: reports its value in the ui dict."""
    category = "test"
    output_node = True
    inputs = (Socket("value", "INT,FLOAT"), String("label", "x"))
    outputs = ()
    hidden = ("PROMPT",)

    def run(self, ctx, value, label, prompt=None):
        CALLS.append("Show")
        return Result(ui={"text": [f"{label}={value}"]})


class MakeTensor(Node):
    """Emits a FakeTensor of n ones."""
    category = "test"
    inputs = (Int("n", 4, min=1, max=10**7),)
    outputs = (Output("TENSOR"),)

    def run(self, ctx, n):
        CALLS.append("MakeTensor")
        return (FakeTensor([1] * n),)


class MakeDict(Node):
    """Emits a dict holding a list."""
    category = "test"
    inputs = (Int("n", 2, min=0, max=100),)
    outputs = (Output("LATENT"),)

    def run(self, ctx, n):
        CALLS.append("MakeDict")
        return ({"samples": list(range(n))},)


class MutateDict(Node):
    """Misbehaves: adds a key and appends to the list of its input, then returns it."""
    category = "test"
    inputs = (Socket("latent", "LATENT"),)
    outputs = (Output("LATENT"),)

    def run(self, ctx, latent):
        latent["samples"].append(99)
        latent["extra"] = True
        return (latent,)


class MutateTensor(Node):
    """Misbehaves: writes into its input tensor in place."""
    category = "test"
    inputs = (Socket("t", "TENSOR"),)
    outputs = (Output("TENSOR"),)

    def run(self, ctx, t):
        return (t.add_(1),)


class ShowAny(Node):
    """Output node for any type."""
    category = "test"
    output_node = True
    inputs = (Socket("value", "*"),)

    def run(self, ctx, value):
        CALLS.append("ShowAny")
        data = getattr(value, "data", value)
        return Result(ui={"text": [repr(data)]})


class Size(Node):
    """Output node: reports the length of a FakeTensor (a small ui)."""
    category = "test"
    output_node = True
    inputs = (Socket("t", "TENSOR"),)

    def run(self, ctx, t):
        CALLS.append("Size")
        return Result(ui={"text": [str(len(t.data))]})


class Boom(Node):
    """Always raises."""
    category = "test"
    inputs = (Socket("value", "INT"),)
    outputs = (Output("INT"),)

    def run(self, ctx, value):
        raise ValueError("boom")


class Steps(Node):
    """Sleeps `steps` times `delay` seconds, reporting progress and honouring cancellation."""
    category = "test"
    inputs = (Int("steps", 10, min=1, max=10000), Float("delay", 0.01, min=0.0, max=10.0))
    outputs = (Output("INT"),)

    def run(self, ctx, steps, delay):
        for i in range(steps):
            time.sleep(delay)
            ctx.progress(i + 1, steps)
        return (steps,)


class Dice(Node):
    """Not idempotent: a fresh value each run."""
    category = "test"
    not_idempotent = True
    outputs = (Output("INT"),)

    def run(self, ctx):
        CALLS.append("Dice")
        return (len(CALLS),)


class FileValue(Node):
    """Reads an int from a text file; fingerprint = the file's content."""
    category = "test"
    inputs = (String("path", ""),)
    outputs = (Output("INT"),)

    @classmethod
    def fingerprint(cls, env, path):
        return open(path).read()

    def run(self, ctx, path):
        CALLS.append("FileValue")
        return (int(open(path).read()),)


STUBS = [Number, Add, Scale, Show, MakeTensor, MakeDict, MutateDict, MutateTensor, ShowAny, Size, Boom, Steps, Dice,
         FileValue]


def registry() -> Registry:
    return Registry(STUBS)
