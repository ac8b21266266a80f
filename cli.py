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
``run``, outputs that are valid still run); 70 an internal error (a bug in Loom); 130 interrupted.

This module owns the command line: arguments, printing and exit codes, for local runs and for
``--server`` runs alike (``service.client`` is a plain HTTP/websocket client). ``--set`` overrides
are applied by ``Workflow.with_overrides`` with the same rule in both: an override that names no
node in any of the given workflows is a usage error (exit 2) before anything runs or is sent.
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

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
STATUS_EXIT = {"success": EXIT_OK, "error": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}
REPO = Path(__file__).resolve().parent


# --- environment ----------------------------------------------------------------------------------

def _model_store_factory(env, store_kwargs=None):
    from modelstore.models import ModelStore

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
        """One engine ``Event`` (local) or server message turned into one (remote)."""
        if self.json:
            self.line(ev.to_message())
            return
        t, d = ev.type, ev.data
        if t == "execution_cached":
            self.total = max(0, self.total - len(d.get("nodes") or ()))
        elif t == "executing" and d.get("node") is not None:
            self.done += 1
            self.bar(d["node"])
        elif t == "progress":
            self.bar(d["node"], d["value"], d["max"])
        elif t == "warning":
            self.say(f"warning: node {d.get('node')} ({d.get('class_type')}): {d.get('message')}", err=True)

    def start(self, nodes: dict) -> None:
        """A workflow (node id -> NodeSpec) starts: reset the progress bar."""
        self.total, self.done = len(nodes), 0
        self.titles = {nid: f"{s.class_type} #{nid}" for nid, s in nodes.items()}

    def invalid(self, path: str, err: dict) -> None:
        """A workflow that cannot run at all (``err``: an error envelope)."""
        if self.json:
            self.line({"type": "validation_error", "workflow": path, "data": err})
            self.line({"type": "summary", "data": {"workflow": path, "status": "invalid", "outputs": [],
                                                   "executed": [], "cached": []}})
        else:
            self.say(f"{path}: invalid workflow\n{format_errors(err)}", err=True)

    def partly_invalid(self, path: str, node_errors: dict) -> None:
        from engine.errors import partial_validation

        err = partial_validation(node_errors)
        if self.json:
            self.line({"type": "validation_error", "workflow": path, "data": err})
        else:
            self.say(f"{path}: some outputs are invalid and will not run\n{format_errors(err)}", err=True)

    def summary(self, path: str, prompt_id: str | None, status: str, elapsed_s: float, files: list[str],
                nodes: dict, error: dict | None) -> None:
        """The end of one workflow: a ``summary`` line (JSON) or a few human lines."""
        executed = [n for n, r in nodes.items() if r.get("status") == "executed"]
        cached = [n for n, r in nodes.items() if r.get("status") == "cached"]
        if self.json:
            data = {"workflow": path, "prompt_id": prompt_id, "status": status,
                    "duration_ms": round(elapsed_s * 1000, 3), "outputs": files, "executed": executed,
                    "cached": cached, "nodes": nodes}
            if error:
                data["error"] = {k: error.get(k) for k in ("node_id", "node_type", "exception_type",
                                                           "exception_message")}
            self.line({"type": "summary", "data": data})
            return
        head = f"{path}: {status} in {elapsed_s:.2f} s ({len(executed)} executed, {len(cached)} cached)"
        if status == "error" and error:
            head += (f"\n  node {error.get('node_id')} ({error.get('node_type')}) raised {error.get('exception_type')}: "
                     f"{str(error.get('exception_message', '')).strip()}")
        self.say(head, err=status != "success")
        for f in files:
            self.say(f"  output: {f}")


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
    """``--set ID.INPUT=VALUE`` items -> (node id, input name, value): VALUE as JSON, else the bare string."""
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


def load_workflows(paths: list[str], registry, sets: list) -> tuple[list[tuple], list[str]]:
    """Load every workflow first (a typo in the last file fails fast) and apply the overrides:
    ([(path, workflow or None, WorkflowError or None)], the overrides no workflow used)."""
    from engine.workflow import WorkflowError, load

    loaded, used = [], set()
    for path in paths:
        try:
            wf, unused = load(path, registry).with_overrides(sets)
        except WorkflowError as e:
            loaded.append((path, None, e))
            continue
        used |= {(n, i) for n, i, _ in sets} - {(n, i) for n, i, _ in unused}
        loaded.append((path, wf, None))
    return loaded, [f"{n}.{i}" for n, i, _ in sets if (n, i) not in used]


# --- commands -------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    try:
        sets = parse_sets(args.set)
        from modelstore.precision import parse_dtype

        parse_dtype(getattr(args, "dtype", None))  # a bad --dtype is a usage error
    except ValueError as e:
        print(f"loom run: {e}", file=sys.stderr)
        return EXIT_INVALID
    registry = make_registry()
    loaded, unused = load_workflows(args.workflows, registry, sets)
    if unused:
        print(f"loom run: --set names no node input in these workflows: {', '.join(unused)}", file=sys.stderr)
        return EXIT_INVALID
    out = Printer(args.json)
    return (_run_remote if args.server else _run_local)(args, registry, loaded, out)


def _run_local(args, registry, loaded: list, out: Printer) -> int:
    from engine import Executor, OutputCache, WorkflowError

    env = make_env(args)
    ex = Executor(registry, env, OutputCache(int(args.cache_mb * 1024 * 1024)))
    worst = EXIT_OK
    for path, wf, err in loaded:
        if err is None:
            try:
                validated = ex.prepare(wf)
            except WorkflowError as e:
                err = e
        if err is not None:
            worst = max(worst, EXIT_INVALID)
            out.invalid(path, err.to_dict())
            continue
        if validated.node_errors:
            worst = max(worst, EXIT_INVALID)
            out.partly_invalid(path, validated.node_errors)
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
    out.start(validated.workflow.nodes)
    box: dict = {}

    def work():
        try:
            box["result"] = ex.run(validated, prompt_id=prompt_id, sink=q.put, cancel=cancel)
        except BaseException as e:  # re-raised below, on this thread
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
    nodes = {n: {"class_type": rec.class_type, "status": rec.status, "reason": rec.reason,
                 "duration_ms": round(rec.duration_ms, 3)} for n, rec in r.nodes.items()}
    out.summary(path, r.prompt_id, r.status, time.perf_counter() - t0, output_files(env, r.outputs), nodes, r.error)
    return STATUS_EXIT[r.status]


def _run_remote(args, registry, loaded: list, out: Printer) -> int:
    """``loom run --server URL``: the same loading, overrides, printing and exit codes as a local run;
    the workflow runs on the server. Output paths are the server's (``output/...``)."""
    import httpx

    from engine.events import Event
    from service.client import LoomClient, PromptRejected

    try:
        client = LoomClient(args.server, token=args.token)
    except (ValueError, httpx.InvalidURL) as e:
        print(f"loom run: bad server URL {args.server!r}: {e}", file=sys.stderr)
        return EXIT_INVALID
    worst = EXIT_OK
    with client:
        for path, wf, err in loaded:
            if err is not None:
                worst = max(worst, EXIT_INVALID)
                out.invalid(path, err.to_dict())
                continue
            out.start(wf.nodes)

            def submitted(res: dict, path=path) -> None:
                if res.get("node_errors"):
                    out.partly_invalid(path, res["node_errors"])

            t0 = time.perf_counter()
            try:
                entry = client.run(wf.prompt, on_event=lambda m: out.event(Event(m["type"], m.get("data") or {})),
                                   extra_data=wf.extra_data, on_submit=submitted)
            except PromptRejected as e:
                worst = max(worst, EXIT_INVALID)
                out.invalid(path, e.body if isinstance(e.body, dict) and "error" in e.body
                            else {"error": {"type": "rejected", "message": str(e)}, "node_errors": {}})
                continue
            except KeyboardInterrupt:
                out.say("interrupted", err=True)
                return EXIT_INTERRUPTED
            except (httpx.HTTPError, OSError) as e:
                out.say(f"loom run: cannot reach {client.base}: {e}", err=True)
                return EXIT_INVALID
            out.clear()
            status, nodes, error = remote_outcome(entry)
            files = [f"{i.get('type', 'output')}/{i['subfolder'] + '/' if i.get('subfolder') else ''}{i['filename']}"
                     for ui in (entry.get("outputs") or {}).values() for key in ("images", "audio", "video")
                     for i in (ui or {}).get(key) or () if isinstance(i, dict) and "filename" in i]
            out.summary(path, entry.get("prompt_id"), status, time.perf_counter() - t0, files, nodes, error)
            if status == "interrupted":
                return EXIT_INTERRUPTED
            worst = max(worst, STATUS_EXIT[status])
    return worst


def remote_outcome(entry: dict) -> tuple[str, dict, dict | None]:
    """(status, per-node records, execution_error data) from a server's history entry; the records
    come from Loom's ``loom`` key (a ComfyUI server has none: only its cached list is known)."""
    status = entry.get("status") or {}
    msgs = {m[0]: m[1] for m in status.get("messages") or () if isinstance(m, (list, tuple)) and len(m) == 2}
    if status.get("completed"):
        outcome = "success"
    elif "execution_interrupted" in msgs:
        outcome = "interrupted"
    else:
        outcome = "error"
    loom = entry.get("loom") or {}
    nodes = loom.get("nodes")
    if nodes is None:
        nodes = {n: {"status": "cached"} for n in (msgs.get("execution_cached") or {}).get("nodes", [])}
    return outcome, nodes, loom.get("error") or msgs.get("execution_error")


def cmd_validate(args) -> int:
    from engine import Executor, WorkflowError
    from engine.errors import partial_validation
    from engine.workflow import load

    env = make_env(args)
    registry = make_registry()
    ex = Executor(registry, env)
    worst = EXIT_OK
    for path in args.workflows:
        try:
            v = ex.prepare(load(path, registry))
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
    import server

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
                                epilog="exit codes: 0 ok, 1 a node failed, 2 invalid workflow or usage, 70 internal error "
                                "(a bug in Loom), 130 interrupted",
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
    except Exception:  # not the workflow's fault: say so, with the traceback to report
        import traceback

        print(f"loom {args.command}: internal error (a bug in Loom, please report it):\n{traceback.format_exc()}",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
