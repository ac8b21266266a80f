"""``loom``: run, validate and inspect workflows headlessly; start the server.

    loom run WORKFLOW... [--set ID.INPUT=VALUE]... [--models DIR] [--input DIR] [--output DIR]
                         [--temp DIR] [--cache-mb N] [--json] [--server URL [--token T]]
    loom validate WORKFLOW... [--models DIR] [--input DIR] [--json]
    loom nodes [--json]
    loom serve [server options]     (see ``loom serve --help``)

WORKFLOW is an API-format JSON file, a UI-format JSON file saved by the editor, a POST /prompt
body, or a PNG written by SaveImage. Several workflows run in order in one process and share the
output cache, so a second run of the same graph is served from the cache.

Exit codes: 0 success; 1 a node failed while running; 2 bad usage or an invalid workflow (with
``run``, outputs that are valid still run); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
REPO = Path(__file__).resolve().parent


# --- environment ----------------------------------------------------------------------------------

def _model_store_factory(env, store_kwargs=None):
    try:
        from modelstore.models import ModelStore
    except ImportError as e:  # pragma: no cover - the model store is optional for model-free workflows
        raise RuntimeError(f"the model store is not available: {e}") from e
    return ModelStore(env.folders, **(store_kwargs or {}))


def make_env(args):
    from engine.context import Env
    from modelstore.precision import store_kwargs

    kw = store_kwargs(getattr(args, "device", None), getattr(args, "dtype", None))
    return Env(input_dir=Path(args.input), output_dir=Path(args.output), temp_dir=Path(args.temp),
               models_dir=Path(args.models), model_store_factory=lambda env: _model_store_factory(env, kw))


def make_registry():
    from nodes import default_registry

    return default_registry()


# --- output helpers -------------------------------------------------------------------------------

class Printer:
    """Human or JSON-lines output; a one-line progress bar on a terminal (stderr)."""

    def __init__(self, as_json: bool):
        self.json = as_json
        self.tty = sys.stderr.isatty() and not as_json
        self._bar = False
        self.total = 0
        self.done = 0
        self.titles: dict[str, str] = {}

    def line(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    def say(self, text: str, err: bool = False) -> None:
        self.clear()
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def clear(self) -> None:
        if self._bar:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._bar = False

    def bar(self, node: str, value: int | None = None, total: int | None = None) -> None:
        if not self.tty:
            return
        text = f"[{min(self.done, self.total)}/{self.total}] {self.titles.get(node, node)}"
        if value is not None and total:
            width = 24
            filled = int(width * value / total)
            text += f"  {'#' * filled}{'.' * (width - filled)} {value}/{total}"
        cols = 100
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns - 1
        except OSError:
            pass
        sys.stderr.write("\r\x1b[2K" + text[:cols])
        sys.stderr.flush()
        self._bar = True

    def event(self, ev) -> None:
        if self.json:
            self.line(ev.to_message())
            return
        t, d = ev.type, ev.data
        if t == "executing" and d.get("node") is not None:
            self.done += 1
            self.bar(d["node"])
        elif t == "progress":
            self.bar(d["node"], d["value"], d["max"])
        elif t == "warning":
            self.say(f"warning: node {d.get('node')} ({d.get('class_type')}): {d.get('message')}", err=True)


def format_errors(err: dict) -> str:
    e = err["error"]
    lines = [f"error: {e['message']}" + (f" ({e['type']})" if e.get("type") else "")]
    shown = False
    for nid, ne in err.get("node_errors", {}).items():
        for item in ne["errors"]:
            shown = True
            lines.append(f"  node {nid} ({ne.get('class_type')}): {item['type']}: {item['message']}"
                         + (f": {item['details']}" if item.get("details") else ""))
    if not shown and e.get("details"):
        lines.append("  " + e["details"].replace("\n", "\n  "))
    return "\n".join(lines)


def output_files(env, outputs: dict) -> list[str]:
    files = []
    for ui in outputs.values():
        for key in ("images", "audio", "video"):
            for item in (ui or {}).get(key, []) or []:
                if not isinstance(item, dict) or "filename" not in item:
                    continue
                root = {"output": env.output_dir, "temp": env.temp_dir, "input": env.input_dir}.get(
                    item.get("type", "output"), env.output_dir)
                files.append(str(Path(root) / (item.get("subfolder") or "") / item["filename"]))
    return files


# --- --set ----------------------------------------------------------------------------------------

def parse_sets(items: list[str] | None) -> list[tuple[str, str, Any]]:
    """``--set ID.INPUT=VALUE`` items -> (node id, input name, value): VALUE as JSON, else the bare string.
    Shared with ``loom run --server`` (``service.client.run_remote``)."""
    out = []
    for item in items or ():
        target, eq, raw = item.partition("=")
        nid, dot, name = target.rpartition(".")
        if not eq or not dot or not nid or not name:
            raise ValueError(f"--set {item!r}: expected ID.INPUT=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare string
        out.append((nid, name, value))
    return out


def apply_sets(wf, sets, path: str, used: set):
    from engine.workflow import parse_api

    if not sets:
        return wf
    prompt = json.loads(json.dumps(wf.prompt))
    for nid, name, value in sets:
        node = prompt.get(nid)
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            node["inputs"][name] = value
            used.add((nid, name))
    return parse_api(prompt, wf.extra_data)


# --- commands -------------------------------------------------------------------------------------

def _load(path: str, registry):
    from engine.workflow import load

    return load(path, registry)


def cmd_run(args) -> int:
    if args.server:
        try:
            from service.client import run_remote
        except ImportError:
            print("loom run --server: not available yet (the remote client, service/client.py, has not landed)",
                  file=sys.stderr)
            return EXIT_INVALID
        kw = {"token": args.token} if args.token else {}
        return int(run_remote(args.server, args.workflows, sets=args.set, as_json=args.json, **kw) or 0)

    from engine import Executor, OutputCache, WorkflowError
    from engine.errors import partial_validation

    try:
        sets = parse_sets(args.set)
        env = make_env(args)  # a bad --dtype is a usage error
    except ValueError as e:
        print(f"loom run: {e}", file=sys.stderr)
        return EXIT_INVALID
    registry = make_registry()
    ex = Executor(registry, env, OutputCache(int(args.cache_mb * 1024 * 1024)))
    out = Printer(args.json)
    worst = EXIT_OK
    used: set = set()
    loaded = []
    for path in args.workflows:  # load everything first: a typo in the last file fails fast
        try:
            loaded.append((path, apply_sets(_load(path, registry), sets, path, used), None))
        except WorkflowError as e:
            loaded.append((path, None, e))
    unused = [f"{n}.{i}" for n, i, _ in sets if (n, i) not in used]
    if unused:
        print(f"loom run: --set names no node input in these workflows: {', '.join(unused)}", file=sys.stderr)
        return EXIT_INVALID

    for path, wf, err in loaded:
        if err is None:
            try:
                validated = ex.prepare(wf)
            except WorkflowError as e:
                err = e
        if err is not None:
            worst = max(worst, EXIT_INVALID)
            if args.json:
                out.line({"type": "validation_error", "workflow": path, "data": err.to_dict()})
                out.line({"type": "summary", "data": {"workflow": path, "status": "invalid", "outputs": [],
                                                      "executed": [], "cached": []}})
            else:
                out.say(f"{path}: invalid workflow\n{format_errors(err.to_dict())}", err=True)
            continue
        if validated.node_errors:
            worst = max(worst, EXIT_INVALID)
            partial = partial_validation(validated.node_errors)
            if args.json:
                out.line({"type": "validation_error", "workflow": path, "data": partial})
            else:
                out.say(f"{path}: some outputs are invalid and will not run\n{format_errors(partial)}", err=True)
        code = _run_one(ex, validated, path, out, env)
        if code == EXIT_INTERRUPTED:
            return code
        worst = max(worst, code)
    return worst


def _run_one(ex, validated, path: str, out: Printer, env) -> int:
    from engine import CancelToken

    cancel = CancelToken()
    q: queue.Queue = queue.Queue()
    prompt_id = str(uuid.uuid4())
    out.total = len(validated.workflow.nodes)
    out.done = 0
    out.titles = {nid: f"{s.class_type} #{nid}" for nid, s in validated.workflow.nodes.items()}
    box: dict = {}

    def work():
        try:
            box["result"] = ex.run(validated, prompt_id=prompt_id, sink=q.put, cancel=cancel)
        except BaseException as e:  # pragma: no cover - reported below
            box["error"] = e
        q.put(None)

    t0 = time.perf_counter()
    th = threading.Thread(target=work, name="loom-run", daemon=True)
    th.start()
    interrupted = False
    while True:
        try:
            ev = q.get()
            if ev is None:
                break
            if ev.type == "execution_cached" and not out.json:
                out.total = max(0, out.total - len(ev.data["nodes"]))
            out.event(ev)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: leave now
                out.clear()
                return EXIT_INTERRUPTED
            interrupted = True
            cancel.cancel()
            out.say("interrupting... (Ctrl-C again to quit now)", err=True)
    th.join()
    out.clear()
    if "error" in box:
        raise box["error"]
    r = box["result"]
    elapsed = time.perf_counter() - t0
    files = output_files(env, r.outputs)
    summary = {"workflow": path, "prompt_id": r.prompt_id, "status": r.status, "duration_ms": round(elapsed * 1000, 3),
               "outputs": files, "executed": r.executed, "cached": r.cached,
               "nodes": {n: {"class_type": rec.class_type, "status": rec.status, "reason": rec.reason,
                             "duration_ms": round(rec.duration_ms, 3)} for n, rec in r.nodes.items()}}
    if r.error:
        summary["error"] = {k: r.error[k] for k in ("node_id", "node_type", "exception_type", "exception_message")}
    if out.json:
        out.line({"type": "summary", "data": summary})
    else:
        head = f"{path}: {r.status} in {elapsed:.2f} s ({len(r.executed)} executed, {len(r.cached)} cached)"
        if r.status == "error":
            e = r.error
            head += (f"\n  node {e['node_id']} ({e['node_type']}) raised {e['exception_type']}: "
                     f"{e['exception_message'].strip()}")
        out.say(head, err=r.status != "success")
        for f in files:
            out.say(f"  output: {f}")
    return {"success": EXIT_OK, "error": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}[r.status]


def cmd_validate(args) -> int:
    from engine import Executor, WorkflowError
    from engine.errors import partial_validation

    env = make_env(args)
    registry = make_registry()
    ex = Executor(registry, env)
    worst = EXIT_OK
    for path in args.workflows:
        try:
            v = ex.prepare(_load(path, registry))
        except WorkflowError as e:
            worst = EXIT_INVALID
            if args.json:
                print(json.dumps({"workflow": path, "ok": False, **e.to_dict()}))
            else:
                print(f"{path}: invalid\n{format_errors(e.to_dict())}")
            continue
        ok = not v.node_errors
        worst = max(worst, EXIT_OK if ok else EXIT_INVALID)
        if args.json:
            print(json.dumps({"workflow": path, "ok": ok, "outputs": v.outputs, "node_errors": v.node_errors,
                              "warnings": v.warnings}))
        else:
            print(f"{path}: {'ok' if ok else 'partly invalid'}: {len(v.workflow.nodes)} nodes, "
                  f"outputs {', '.join(v.outputs)}")
            if not ok:
                print(format_errors(partial_validation(v.node_errors)))
            for w in v.warnings:
                print(f"  warning: {w}")
    return worst


def cmd_nodes(args) -> int:
    from engine.schema import object_info

    env = make_env(args)
    info = object_info(make_registry(), env)
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    by_cat: dict[str, list] = {}
    for v in info.values():
        by_cat.setdefault(v["category"], []).append(v)
    for cat in sorted(by_cat):
        print(f"{cat}:")
        for v in by_cat[cat]:
            ins = ", ".join(v["input_order"].get("required", []) + [f"[{n}]" for n in v["input_order"].get("optional", [])])
            outs = ", ".join(v["output_name"]) or ("(output node)" if v["output_node"] else "")
            print(f"  {v['name']:<28} ({ins}) -> {outs}")
    return EXIT_OK


def cmd_serve(argv: list[str]) -> int:
    try:
        import server
    except ImportError as e:
        print(f"loom serve: the server is not available: {e}", file=sys.stderr)
        return EXIT_INVALID
    return int(server.main(argv) or 0)


# --- argument parsing -----------------------------------------------------------------------------

def _folders(p: argparse.ArgumentParser, run: bool = False) -> None:
    p.add_argument("--models", default=str(REPO / "models"), help="models root (default: the repo's models/)")
    p.add_argument("--input", default="input", help="input folder for LoadImage (default: ./input)")
    p.add_argument("--output", "--out", default="output", help="output folder for SaveImage (default: ./output)")
    p.add_argument("--temp", default="temp", help="temp folder for PreviewImage (default: ./temp)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loom", description="Loom: a node-graph workflow engine for diffusion image "
                                "generation that speaks ComfyUI's workflow format.",
                                epilog="exit codes: 0 ok, 1 a node failed, 2 invalid workflow or usage, 130 interrupted",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run workflow files in order, sharing the cache")
    r.add_argument("workflows", nargs="+", metavar="WORKFLOW")
    r.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE",
                   help="override a node input (VALUE is JSON, or a bare string); repeatable")
    r.add_argument("--json", action="store_true", help="one JSON event per line, and a summary per workflow")
    r.add_argument("--cache-mb", type=float, default=2048, help="output cache budget in MiB (default 2048)")
    r.add_argument("--server", metavar="URL", help="run on a Loom/ComfyUI server instead of in this process")
    r.add_argument("--token", help="access token for --server")
    from modelstore.precision import add_arguments

    add_arguments(r)
    _folders(r, run=True)
    v = sub.add_parser("validate", help="check workflow files without running them")
    v.add_argument("workflows", nargs="+", metavar="WORKFLOW")
    v.add_argument("--json", action="store_true")
    _folders(v)
    n = sub.add_parser("nodes", help="print the node catalogue (/object_info)")
    n.add_argument("--json", action="store_true", help="ComfyUI's /object_info JSON")
    _folders(n)
    sub.add_parser("serve", help="start the HTTP/websocket server (options: loom serve --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a workflow's text may not be encodable (lone surrogates)
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_INVALID if e.code else EXIT_OK
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "validate":
            return cmd_validate(args)
        return cmd_nodes(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
