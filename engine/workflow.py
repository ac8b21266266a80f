"""Workflow files: ComfyUI's API ("prompt") format parsed into typed node specs.

API format: ``{id: {"class_type": str, "inputs": {name: constant | [source_id, output]}, "_meta": {...}}}``.
A link is a 2-element list whose first element is the source node id *as a string*; the second
is the output index (int) or, as a Loom extension, the output's name. ``{"__value__": [...]}``
wraps list-valued constants. Loading also accepts the editor's UI format, a POST /prompt body
(``{"prompt": {...}}``) and PNG files carrying either in their text chunks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ErrorItem, WorkflowError

NODE_KEYS = frozenset({"class_type", "inputs", "_meta", "is_changed"})
MAX_NODES = 100_000


@dataclass(frozen=True, slots=True)
class Link:
    node: str
    output: int | str  # index, or an output name (resolved during validation)


@dataclass(slots=True)
class NodeSpec:
    id: str
    class_type: str
    inputs: dict[str, Any]  # constant value or Link
    title: str | None = None


@dataclass
class Workflow:
    nodes: dict[str, NodeSpec]
    prompt: dict  # the API-format dict as given (for PNG metadata and history)
    extra_data: dict = field(default_factory=dict)  # e.g. {"extra_pnginfo": {"workflow": ui_json}}

    def __len__(self) -> int:
        return len(self.nodes)

    def with_overrides(self, overrides: Iterable[tuple[str, str, Any]]) -> tuple["Workflow", list[tuple[str, str, Any]]]:
        """Set node inputs: ``(node id, input name, value)`` each, a value written as in the API format
        (a ``["id", index]`` list is a link). Returns the new workflow (re-parsed from a copy of the
        prompt; this one is unchanged) and the overrides that name no node of it, in the given order.
        Whether the input exists is validation's business (an unknown constant input is a warning)."""
        overrides = list(overrides)
        if not overrides:
            return self, []
        prompt = json.loads(json.dumps(self.prompt))
        unused = []
        for nid, name, value in overrides:
            node = prompt.get(nid)
            if isinstance(node, dict) and isinstance(node.get("inputs", {}), dict):
                node.setdefault("inputs", {})[name] = value
            else:
                unused.append((nid, name, value))
        return parse_api(prompt, self.extra_data), unused


def is_link(v: Any) -> bool:
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
        return False
    i = v[1]
    if isinstance(i, bool):
        return False
    return isinstance(i, (int, str)) or (isinstance(i, float) and i.is_integer())


def parse_api(prompt: Any, extra_data: dict | None = None) -> Workflow:
    """Parse an API-format dict, collecting every structural problem before raising."""
    if not isinstance(prompt, dict):
        raise WorkflowError("invalid_prompt", "Workflow must be a JSON object of nodes",
                            f"got {type(prompt).__name__}")
    if len(prompt) > MAX_NODES:
        raise WorkflowError("invalid_prompt", "Workflow too large", f"{len(prompt)} nodes > {MAX_NODES}")
    nodes: dict[str, NodeSpec] = {}
    node_errors: dict[str, dict] = {}

    def bad(nid: str, ctype: Any, item: ErrorItem) -> None:
        entry = node_errors.setdefault(nid, {"errors": [], "dependent_outputs": [],
                                             "class_type": ctype if isinstance(ctype, str) else None})
        entry["errors"].append(item.to_dict())

    for nid, raw in prompt.items():
        if type(nid) is not str:
            nid = str(nid)
        if not isinstance(raw, dict):
            bad(nid, None, ErrorItem("invalid_node", "Node must be an object",
                                     f"Node ID '#{nid}' is {type(raw).__name__}"))
            continue
        ctype = raw.get("class_type")
        if not isinstance(ctype, str) or not ctype:
            bad(nid, None, ErrorItem("missing_class_type", "Node has no class_type",
                                     f"Node ID '#{nid}'"))
            continue
        if not NODE_KEYS.issuperset(raw):
            unknown = sorted(str(k) for k in raw if k not in NODE_KEYS)
            bad(nid, ctype, ErrorItem("unknown_field", "Node has unknown fields",
                                      f"Node ID '#{nid}': {', '.join(unknown)}; expected class_type, inputs, _meta",
                                      {"fields": unknown}))
        inputs = raw.get("inputs", {})
        if not isinstance(inputs, dict):
            bad(nid, ctype, ErrorItem("invalid_inputs", "Node inputs must be an object",
                                      f"Node ID '#{nid}': inputs is {type(inputs).__name__}"))
            continue
        parsed = {}
        for name, v in inputs.items():
            if type(name) is not str:
                name = str(name)
            tv = type(v)
            if tv is list:
                if is_link(v):
                    v = Link(v[0], int(v[1]) if type(v[1]) is float else v[1])
            elif isinstance(v, dict) and len(v) == 1 and "__value__" in v:
                v = v["__value__"]
            parsed[name] = v
        meta = raw.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) and isinstance(meta.get("title"), str) else None
        nodes[nid] = NodeSpec(nid, ctype, parsed, title)

    if node_errors:
        first = next(iter(node_errors.items()))
        raise WorkflowError("invalid_prompt", "Workflow is malformed",
                            f"Node ID '#{first[0]}': {first[1]['errors'][0]['details']}", node_errors)
    return Workflow(nodes, prompt, dict(extra_data or {}))


def looks_like_ui(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("nodes"), list) and "links" in obj


def from_json_value(obj: Any, registry=None) -> Workflow:
    """A decoded JSON value in any accepted shape → Workflow."""
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), dict) and "class_type" not in obj["prompt"]:
        extra = obj.get("extra_data") if isinstance(obj.get("extra_data"), dict) else {}
        return parse_api(obj["prompt"], extra)
    if looks_like_ui(obj):
        if registry is None:
            raise WorkflowError("invalid_prompt", "UI-format workflow needs the node catalogue to convert")
        from .ui_format import ui_to_api

        return parse_api(ui_to_api(obj, registry), {"extra_pnginfo": {"workflow": obj}})
    return parse_api(obj)


def load(source: str | Path | bytes, registry=None) -> Workflow:
    """Load a workflow from a file path or raw bytes: API JSON, UI JSON, or a PNG with metadata."""
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise WorkflowError("invalid_prompt", "Cannot read workflow file", f"{source}: {e.strerror or e}")
    else:
        data = bytes(source)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        from .pnginfo import read_text_chunks

        chunks = read_text_chunks(data)
        if "prompt" in chunks:
            obj = _decode(chunks["prompt"].encode())
            extra = {}
            if "workflow" in chunks:
                try:
                    extra = {"extra_pnginfo": {"workflow": json.loads(chunks["workflow"])}}
                except (ValueError, RecursionError):
                    pass
            return parse_api(obj, extra)
        if "workflow" in chunks:
            return from_json_value(_decode(chunks["workflow"].encode()), registry)
        raise WorkflowError("invalid_prompt", "PNG carries no workflow", "no 'prompt' or 'workflow' text chunk")
    return from_json_value(_decode(data), registry)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise WorkflowError("invalid_json", "Workflow is not UTF-8 text", str(e))
    except json.JSONDecodeError as e:
        raise WorkflowError("invalid_json", "Workflow is not valid JSON",
                            f"line {e.lineno} column {e.colno}: {e.msg}")
    except ValueError as e:  # e.g. an integer of more than 4,300 digits (Python's int/str conversion limit)
        raise WorkflowError("invalid_json", "Workflow is not valid JSON", str(e)[:300])
    except RecursionError:
        raise WorkflowError("invalid_json", "Workflow JSON is nested too deeply")
