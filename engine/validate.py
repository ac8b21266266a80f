"""Validation before anything runs: every error at once, in ComfyUI's ``node_errors`` shape.

Only nodes upstream of the requested output nodes are validated (ComfyUI's rule). Constants are
coerced to their declared types; links are checked for existence, output index and type. An
output whose ancestry holds any error is dropped; if every output is dropped the workflow fails
with ``prompt_outputs_failed_validation``. Graph walks (upstream, consumers, cycles) are ``graph``'s.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from . import graph
from .errors import ErrorItem, WorkflowError, input_error
from .node import MISSING, Input, Node, Registry
from .workflow import Link, NodeSpec, Workflow


@dataclass
class Validated:
    """A workflow ready to run: coerced constants, integer link indices, runnable outputs."""

    workflow: Workflow
    outputs: list[str]
    node_errors: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    classes: dict[str, type[Node]] = field(default_factory=dict)


def types_compatible(received: str, expected: str) -> bool:
    if received == expected or received == "*" or expected == "*":
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def coerce(inp: Input, value: Any, env: Any, option_cache: dict) -> tuple[Any, ErrorItem | None]:
    """Coerce one constant to the input's declared type; return (value, error)."""
    t, name = inp.type, inp.name
    cfg = {"type": t, "min": inp.min, "max": inp.max} if t in ("INT", "FLOAT") else None

    def wrong(expected: str) -> tuple[Any, ErrorItem]:
        return value, input_error("invalid_input_type", f"Failed to convert an input value to a {t} value",
                                  name, f"{name}, {value!r:.80}, expected {expected}", received=value)

    if t == "INT":
        if isinstance(value, bool):
            return wrong("an integer")
        if isinstance(value, float):
            if not value.is_integer():
                return wrong("an integer")
            value = int(value)
        elif isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                return wrong("an integer")
        elif not isinstance(value, int):
            return wrong("an integer")
    elif t == "FLOAT":
        if isinstance(value, bool):
            return wrong("a number")
        try:
            value = float(value) if isinstance(value, (int, float, str)) else None
        except (ValueError, OverflowError):
            value = None
        if value is None or not math.isfinite(value):
            return wrong("a finite number")
    elif t == "STRING":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            return wrong("a string")
        elif has_lone_surrogate(value):
            return wrong("text without lone UTF-16 surrogates (a \\ud800-\\udfff escape outside a pair)")
    elif t == "BOOLEAN":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif value in (0, 1) and not isinstance(value, float):
            value = bool(value)
        elif not isinstance(value, bool):
            return wrong("true or false")
    elif t == "COMBO":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return wrong("one of the listed options")
        if isinstance(value, str) and has_lone_surrogate(value):
            return wrong("one of the listed options")
        if inp.check_options:
            key = id(inp)
            if key not in option_cache:
                option_cache[key] = inp.choices(env)
            opts = option_cache[key]
            if value not in opts:
                shown = ", ".join(map(str, opts)) if len(opts) <= 20 else f"(list of length {len(opts)})"
                return value, input_error("value_not_in_list", "Value not in list", name,
                                          f"{name}: '{value}' not in [{shown}]", received=value,
                                          config={"options": opts} if len(opts) <= 20 else None)
        return value, None
    else:  # a socket type given a constant
        return value, input_error("invalid_input_type", f"Input expects a link to a {t} output", name,
                                  f"{name} got a constant {value!r:.60}; a link is [\"node_id\", output_index] "
                                  "with the node id as a string", received=value)
    if t in ("INT", "FLOAT"):
        if inp.min is not None and value < inp.min:
            return value, input_error("value_smaller_than_min", f"Value {value} smaller than min of {inp.min}",
                                      name, f"{name}", received=value, config=cfg)
        if inp.max is not None and value > inp.max:
            return value, input_error("value_bigger_than_max", f"Value {value} bigger than max of {inp.max}",
                                      name, f"{name}", received=value, config=cfg)
    return value, None


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(s: str) -> bool:
    """True when ``s`` holds a lone UTF-16 surrogate (JSON's "\\ud800" decodes to one): not a character,
    so it cannot be written to a file name, a PNG chunk or a database."""
    return not s.isascii() and _SURROGATE.search(s) is not None


def validate(wf: Workflow, registry: Registry, env: Any = None, targets: list[str] | None = None) -> Validated:
    nodes = wf.nodes
    classes: dict[str, type[Node]] = {}
    unknown: dict[str, dict] = {}
    for nid, spec in nodes.items():
        cls = registry.get(spec.class_type)
        if cls is None:
            hint = registry.suggest(spec.class_type)
            det = f"Node ID '#{nid}': unknown node type '{spec.class_type}'"
            det += f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
            unknown[nid] = [ErrorItem("unknown_class_type", "Node type not found", det, {"suggestions": hint})]
        else:
            classes[nid] = cls
    # Unknown nodes do not stop validation: the editor's missing-nodes dialog needs `missing_node_type`, and the
    # user needs every other error of the workflow at once (raised after the checks below).
    outputs = [nid for nid, c in classes.items() if c.output_node]
    if targets is not None:
        wanted = {str(t) for t in targets}
        outputs = [o for o in outputs if o in wanted]
    if not outputs and not unknown:
        raise WorkflowError("prompt_no_outputs", "Prompt has no outputs",
                            "the workflow needs at least one output node (SaveImage, PreviewImage, ...)")

    # what must be validated: everything upstream of the outputs and of the unknown nodes
    needed = graph.upstream(graph.dependencies(nodes), outputs + list(unknown))

    errors: dict[str, list[ErrorItem]] = {}
    warnings: list[str] = []
    option_cache: dict = {}
    new_nodes: dict[str, NodeSpec] = {}
    links_of: dict[str, list[str]] = {}  # node -> sources of its valid links (all of them needed nodes)
    for nid in needed:
        if nid in unknown:
            continue
        spec, cls = nodes[nid], classes[nid]
        given = spec.inputs
        errs: list[ErrorItem] = []
        out: dict[str, Any] = {}
        consts: dict[str, Any] = {}
        sources: list[str] = []
        matched = 0
        for inp in cls.inputs:
            name = inp.name
            if name not in given:
                if inp.optional:
                    continue
                if inp.is_widget and inp.default is not MISSING:
                    out[name] = consts[name] = inp.default
                    warnings.append(f"node {nid} ({spec.class_type}): '{name}' missing, using default {inp.default!r}")
                    continue
                errs.append(input_error("required_input_missing", "Required input is missing", name,
                                        f"{name} ({inp.type})"))
                continue
            matched += 1
            v = given[name]
            tv, t = type(v), inp.type
            # Fast paths for the common, valid cases; everything else (and every error) goes the long way.
            if tv is Link:
                src = classes.get(v.node)
                idx = v.output
                if (src is not None and type(idx) is int and 0 <= idx < len(src.outputs)
                        and src.outputs[idx].type == t and v.node in nodes):
                    out[name] = v
                    sources.append(v.node)
                    continue
                link, err = _check_link(nid, inp, v, nodes, classes)
                if err:
                    errs.append(err)
                else:
                    out[name] = link
                    sources.append(v.node)
                continue
            if (tv is int and t == "INT") or (tv is float and t == "FLOAT" and v - v == 0):
                lo, hi = inp.min, inp.max
                if (lo is None or v >= lo) and (hi is None or v <= hi):
                    out[name] = consts[name] = v
                    continue
            elif (tv is str and t == "STRING") or (tv is bool and t == "BOOLEAN"):
                out[name] = consts[name] = v
                continue
            v2, err = coerce(inp, v, env, option_cache)
            if err:
                errs.append(err)
            else:
                out[name] = consts[name] = v2
        if matched < len(given):
            for name, v in given.items():
                if cls.input(name) is None:
                    if type(v) is Link:
                        errs.append(input_error("unknown_input", "Link into an input the node does not have", name,
                                                f"{spec.class_type} has no input '{name}'; inputs are "
                                                + ", ".join(i.name for i in cls.inputs)))
                    else:
                        warnings.append(f"node {nid} ({spec.class_type}): ignoring unknown input '{name}'")
        if not errs and cls.check.__func__ is not _BASE_CHECK:
            try:
                custom = cls.check(env, **consts) or {}
            except Exception as e:  # a buggy check must not crash validation
                custom = {"*": f"{type(e).__name__}: {e}"}
            for name, msg in custom.items():
                errs.append(input_error("custom_validation_failed", "Custom validation failed for node",
                                        name, f"{name} - {msg}"))
        if not errs and cls.warnings.__func__ is not _BASE_WARNINGS:
            try:
                warnings += [f"node {nid} ({spec.class_type}): {w}" for w in cls.warnings(env, **consts) or ()]
            except Exception as e:  # a buggy warning hook must not fail validation
                warnings.append(f"node {nid} ({spec.class_type}): warning check failed: {type(e).__name__}: {e}")
        if errs:
            errors[nid] = errs
        new_nodes[nid] = NodeSpec(nid, spec.class_type, out, spec.title)
        links_of[nid] = sources

    for nid in graph.cycle_nodes(links_of):  # sources that are unknown nodes are not keys: ignored
        errors.setdefault(nid, []).append(ErrorItem("dependency_cycle", "Workflow has a cycle",
                                                    f"Node ID '#{nid}' depends on itself through its inputs"))

    node_errors: dict[str, dict] = {}
    good = outputs
    consumers = graph.consumers(graph.dependencies(nodes, needed)) if errors or unknown else {}

    def entries(errs: dict) -> dict[str, dict]:
        return {nid: {"errors": [e.to_dict() for e in items],
                      "dependent_outputs": [o for o in outputs if o in graph.downstream(consumers, nid)],
                      "class_type": nodes[nid].class_type} for nid, items in errs.items()}

    if unknown:
        nid = next(iter(unknown))
        ct = nodes[nid].class_type
        title = nodes[nid].title or ct
        raise WorkflowError("missing_node_type", f"Node '{title}' not found. The custom node may not be installed.",
                            f"Node ID '#{nid}'", entries({**unknown, **errors}),
                            {"node_id": nid, "class_type": ct, "node_title": title})
    if errors:
        node_errors = entries(errors)
        bad_all = set().union(*(graph.downstream(consumers, nid) for nid in errors))
        good = [o for o in outputs if o not in bad_all]
        if not good:
            lines = [f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"]]
            raise WorkflowError("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                "\n".join(lines), node_errors)
    wf2 = Workflow(new_nodes, wf.prompt, wf.extra_data)
    return Validated(wf2, good, node_errors, warnings, {n: classes[n] for n in new_nodes})


_BASE_CHECK = Node.check.__func__
_BASE_WARNINGS = Node.warnings.__func__


def _check_link(nid: str, inp: Input, v: Link, nodes: dict, classes: dict) -> tuple[Link | None, ErrorItem | None]:
    src = v.node
    if src not in nodes:
        return None, input_error("bad_linked_input", "Linked node does not exist", inp.name,
                                 f"{inp.name} links to node '{src}', which is not in the workflow")
    src_cls = classes.get(src)
    if src_cls is None:  # an unknown node, reported on its own: its outputs cannot be checked
        return v, None
    outs = src_cls.outputs
    idx = v.output
    if isinstance(idx, str):
        names = [o.label for o in outs]
        if idx not in names:
            return None, input_error("bad_linked_input", "Linked output does not exist", inp.name,
                                     f"{inp.name} links to output '{idx}' of {src_cls.class_type} #{src}; "
                                     f"outputs are {names}")
        idx = names.index(idx)
    elif isinstance(idx, float):
        idx = int(idx)
    if not 0 <= idx < len(outs):
        return None, input_error("bad_linked_input", "Linked output index out of range", inp.name,
                                 f"{inp.name} links to output {idx} of {src_cls.class_type} #{src}, "
                                 f"which has {len(outs)} output(s)")
    received = outs[idx].type
    expected = "COMBO" if inp.type == "COMBO" else inp.type
    if not types_compatible(received, expected) and not (inp.type == "COMBO" and received in ("STRING", "*")):
        return None, input_error("return_type_mismatch", "Return type mismatch between linked nodes", inp.name,
                                 f"{inp.name}, received_type({received}) mismatch input_type({expected})",
                                 received_type=received, linked_node=[src, idx])
    return Link(src, idx), None
