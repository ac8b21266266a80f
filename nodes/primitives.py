"""Primitive constants (ComfyUI's PrimitiveInt/Float/String/StringMultiline/Boolean): a widget in, the
same value out, so one value can feed several nodes."""
from __future__ import annotations

from engine.node import MISSING, Input, Node, Output

INT_LIMIT = 9223372036854775807


class PrimitiveInt(Node):
    """An integer constant."""
    display_name = "Int"
    category = "utils/primitive"
    inputs = (Input("value", "INT", MISSING, -INT_LIMIT, INT_LIMIT, extra={"control_after_generate": True}),)
    outputs = (Output("INT"),)

    def run(self, ctx, value):
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""
    display_name = "Float"
    category = "utils/primitive"
    inputs = (Input("value", "FLOAT", MISSING, -INT_LIMIT, INT_LIMIT),)
    outputs = (Output("FLOAT"),)

    def run(self, ctx, value):
        return (value,)


class PrimitiveString(Node):
    """A one-line string constant."""
    display_name = "String"
    category = "utils/primitive"
    inputs = (Input("value", "STRING", MISSING, extra={"multiline": False}),)
    outputs = (Output("STRING"),)

    def run(self, ctx, value):
        return (value,)


class PrimitiveStringMultiline(PrimitiveString):
    """A multi-line string constant."""
    class_type = "PrimitiveStringMultiline"
    display_name = "String (Multiline)"
    inputs = (Input("value", "STRING", MISSING, extra={"multiline": True}),)


class PrimitiveBoolean(Node):
    """A boolean constant."""
    display_name = "Boolean"
    category = "utils/primitive"
    inputs = (Input("value", "BOOLEAN", MISSING),)
    outputs = (Output("BOOLEAN"),)

    def run(self, ctx, value):
        return (value,)


NODES = [PrimitiveString, PrimitiveStringMultiline, PrimitiveInt, PrimitiveFloat, PrimitiveBoolean]
