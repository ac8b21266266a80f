"""PreviewAny ("Preview as Text"): shows any value as text in the editor (strings as they are, numbers and
booleans with str(), lists and dicts as indented JSON, other values with repr())."""
from __future__ import annotations

import json

from engine.node import Node, Result, Socket


def as_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    try:
        return json.dumps(value, indent=4)
    except (TypeError, ValueError):
        shape = getattr(value, "shape", None)
        return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else repr(value)


class PreviewAny(Node):
    """Shows the value of any output as text."""
    display_name = "Preview as Text"
    category = "utils"
    python_module = "comfy_extras.nodes_preview_any"
    output_node = True
    inputs = (Socket("source", "*"),)
    outputs = ()

    def run(self, ctx, source):
        return Result(ui={"text": [as_text(source)]})


NODES = [PreviewAny]
