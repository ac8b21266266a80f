"""Schemas generated from node declarations: ComfyUI's ``/object_info`` and a JSON Schema for
API-format workflow files. Never write a node's schema by hand."""
from __future__ import annotations

from typing import Any

from .node import HIDDEN_TYPES, MISSING, Input, Node, Registry

# The ComfyUI release whose API (object_info declarations, HTTP/websocket protocol, error types) Loom matches.
# /system_stats reports it as comfyui_version, so the editor's "update ComfyUI" checks compare against it.
COMFYUI_API_VERSION = "0.3.75"


def input_spec(inp: Input, env: Any = None) -> list:
    """``[TYPE, options]`` as ComfyUI's frontend reads it (V1 combos: the option list first)."""
    opts: dict[str, Any] = {}
    if inp.default is not MISSING:
        opts["default"] = inp.default
    for k in ("min", "max", "step", "round"):
        v = getattr(inp, k)
        if v is not None:
            opts[k] = v
    opts.update(inp.extra)
    if inp.tooltip:
        opts["tooltip"] = inp.tooltip
    if inp.type == "COMBO":
        return [inp.choices(env), opts] if opts else [inp.choices(env)]
    return [inp.type, opts] if opts or inp.is_widget else [inp.type]


def node_info(cls: type[Node], env: Any = None) -> dict:
    required = {i.name: input_spec(i, env) for i in cls.inputs if not i.optional}
    optional = {i.name: input_spec(i, env) for i in cls.inputs if i.optional}
    hidden = {HIDDEN_TYPES[h]: h for h in cls.hidden}
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    info = {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in cls.outputs],
        "output_is_list": [o.is_list for o in cls.outputs],
        "output_name": [o.label for o in cls.outputs],
        "name": cls.class_type,
        "display_name": cls.display_name,
        "description": cls.description(),
        "python_module": cls.python_module,
        "category": cls.category,
        "output_node": bool(cls.output_node),
    }
    if any(o.tooltip for o in cls.outputs):
        info["output_tooltips"] = [o.tooltip or "" for o in cls.outputs]
    if cls.deprecated:
        info["deprecated"] = True
    if cls.experimental:
        info["experimental"] = True
    return info


def object_info(registry: Registry, env: Any = None) -> dict:
    return {cls.class_type: node_info(cls, env) for cls in registry}


_LINK = {"type": "array", "prefixItems": [{"type": "string"}, {"type": ["integer", "string"]}],
         "minItems": 2, "maxItems": 2, "description": "[source node id, output index or name]"}


def _value_schema(inp: Input, env: Any) -> dict:
    t = inp.type
    if t == "INT":
        s: dict[str, Any] = {"type": "integer"}
    elif t == "FLOAT":
        s = {"type": "number"}
    elif t == "STRING":
        s = {"type": "string"}
    elif t == "BOOLEAN":
        s = {"type": "boolean"}
    elif t == "COMBO":
        s = {"enum": inp.choices(env)} if inp.check_options else {"type": "string"}
    else:
        return {**_LINK, "description": f"link to a {t} output"}
    if inp.min is not None:
        s["minimum"] = inp.min
    if inp.max is not None:
        s["maximum"] = inp.max
    if inp.default is not MISSING:
        s["default"] = inp.default
    if inp.tooltip:
        s["description"] = inp.tooltip
    return {"anyOf": [s, _LINK]}


def workflow_json_schema(registry: Registry, env: Any = None) -> dict:
    """JSON Schema (2020-12) of an API-format workflow file for this catalogue."""
    variants = []
    for cls in registry:
        props = {i.name: _value_schema(i, env) for i in cls.inputs}
        variants.append({
            "type": "object",
            "title": cls.class_type,
            "description": cls.description(),
            "properties": {
                "class_type": {"const": cls.class_type},
                "inputs": {"type": "object", "properties": props,
                           "required": [i.name for i in cls.inputs if not i.optional and not i.is_widget]},
                "_meta": {"type": "object"},
            },
            "required": ["class_type", "inputs"],
            "additionalProperties": False,
        })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Loom workflow (ComfyUI API format)",
            "type": "object", "additionalProperties": {"oneOf": variants}}
