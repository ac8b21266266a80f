"""Loom's HTTP + websocket server, wire-compatible with ComfyUI's API.

``loom serve [--host 127.0.0.1] [--port 8188] [--base DIR] [--models DIR] [--output DIR] [--input DIR]
[--token TOKEN|generate] [--ray auto|local|ADDRESS --workers N]`` serves the API (every route bare and under /api), the websocket at /ws,
and — with ``pip install loom[ui]`` — ComfyUI's official frontend at /. Tests call
``create_app(Config(...))``. The pieces live in ``service/`` (config, store, worker, hub, routes_*,
security, client).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from service import routes_files, routes_prompt, routes_system, routes_templates, routes_user
from service.config import Config
from service.http import JSON, Service
from service.hub import Hub
from service.security import Guard
from service.serving import install_log_filters, uvicorn_config
from service.store import BaseInUse, BaseLock, Store
from service.worker import Worker

log = logging.getLogger("loom.server")

NO_FRONTEND = """<!doctype html><meta charset=utf-8><title>Loom</title>
<h1>Loom server</h1><p>The API is running. Install the editor with <code>pip install loom[ui]</code>
(ComfyUI's frontend package) and restart to use it here.</p>"""


def _build_env(config: Config):
    from engine.context import Env

    from modelstore.precision import store_kwargs

    kw = store_kwargs(config.device, config.dtype)

    def store_factory(env):
        from modelstore.models import ModelStore

        return ModelStore(env.folders, **kw)

    return Env(input_dir=Path(config.input_dir), output_dir=Path(config.output_dir), temp_dir=Path(config.temp_dir),
               models_dir=Path(config.models_dir), model_store_factory=store_factory)


def _prune_outputs_fn(config: Config):
    from engine.folders import UnsafePathError, confine

    def prune(outputs: dict) -> None:
        for ui in outputs.values():
            for key in ("images", "video", "audio"):
                for f in (ui or {}).get(key) or ():
                    if not isinstance(f, dict) or f.get("type") != "output":
                        continue
                    try:
                        p = confine(config.output_dir, "/".join(x for x in (f.get("subfolder"), f.get("filename")) if x))
                        p.unlink(missing_ok=True)
                        p.with_suffix(".manifest.json").unlink(missing_ok=True)  # SaveImage's run manifest
                    except (UnsafePathError, OSError):
                        pass

    return prune


def _make_worker(config: Config, executor, store: Store, hub: Hub, loop):
    """The in-process worker, or with ``config.ray`` a pool of Ray actors (same API)."""
    if not config.ray:
        return Worker(executor, store, hub, loop, preview_interval_s=config.preview_interval_s,
                      preview_size=config.preview_size, preview_method=config.preview_method)
    from service.ray_pool import RayPool

    actor_config = {"models_dir": str(config.models_dir), "input_dir": str(config.input_dir),
                    "output_dir": str(config.output_dir), "temp_dir": str(config.temp_dir),
                    "registry": config.ray_registry, "budget_bytes": config.worker_model_budget_bytes,
                    "preview_interval_s": config.preview_interval_s, "preview_size": config.preview_size,
                    "preview_method": config.preview_method, "cache_bytes": config.cache_bytes,
                    "memory_budget_bytes": config.memory_budget_bytes}
    return RayPool(store, hub, loop, workers=config.workers, actor_config=actor_config, address=config.ray,
                   policy=config.ray_policy, prepare=executor.prepare, num_cpus=config.ray_num_cpus)


def create_app(config: Config | None = None, *, registry=None) -> Starlette:
    """The ASGI app. ``registry`` (or ``config.registry``) replaces the default node catalogue."""
    config = config or Config()
    config.ensure_dirs()
    if registry is not None:
        config.registry = registry
    if config.registry is None:
        from nodes import default_registry

        config.registry = default_registry()
    if config.env is None:
        config.env = _build_env(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        from engine.cache import OutputCache
        from engine.executor import Executor

        lock = config.base_lock if config.base_lock is not None and config.base_lock.held \
            else BaseLock(config.db_path).acquire()  # raises BaseInUse: one server per queue
        store = Store(config.db_path, max_items=config.history_max_items, max_age_s=config.history_max_age_s,
                      on_prune_outputs=_prune_outputs_fn(config) if config.prune_outputs else None)
        recovered = store.recover(requeue=config.requeue_interrupted)
        if recovered:
            log.warning("%d prompt(s) were running when the server stopped: %s", len(recovered),
                        "re-queued" if config.requeue_interrupted else "marked failed")
        store.prune()
        hub = Hub(queue_limit=config.ws_queue_limit, replay_prompts=config.replay_prompts,
                  replay_events=config.replay_events, max_upload=config.max_upload_bytes)
        hub.remaining = store.remaining()
        executor = Executor(config.registry, config.env, OutputCache(config.cache_bytes),
                            memory_budget=config.memory_budget_bytes)
        s = Service(config, config.registry, config.env, executor, store, hub)
        s.worker = _make_worker(config, executor, store, hub, asyncio.get_running_loop())
        app.state.svc = s
        if config.ray:  # starting Ray and its actors takes seconds: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, s.worker.start)
        else:
            s.worker.start()
        # Everything alive now (torch, the catalogue, the app) lives as long as the server: move it out of
        # the collector's reach, so the collections that a 10,000-node POST /prompt triggers scan only the
        # request's own objects (measured in bench/server.py).
        gc.freeze()
        try:
            yield
        finally:
            await hub.close_all()
            await asyncio.get_running_loop().run_in_executor(None, s.worker.stop)
            store.close()
            lock.release()

    routes: list = []
    for mod in (routes_prompt, routes_files, routes_user, routes_system, routes_templates):
        for path, endpoint, methods in mod.ROUTES:
            routes.append(Route(path, endpoint, methods=methods))
            routes.append(Route("/api" + path, endpoint, methods=methods))
        for path, endpoint, methods in getattr(mod, "INTERNAL", ()):
            routes.append(Route("/internal" + path, endpoint, methods=methods))
    for path, endpoint in routes_system.STATIC_JSON + routes_templates.STATIC:
        routes.append(Route(path, endpoint, methods=["GET"]))

    async def ws_endpoint(websocket):
        await websocket.accept()
        q = websocket.query_params
        await websocket.app.state.svc.hub.serve(websocket, q.get("clientId"), q.get("format") == "msgpack",
                                                q.get("events") == "loom")

    routes += [WebSocketRoute("/ws", ws_endpoint), WebSocketRoute("/api/ws", ws_endpoint)]

    frontend = config.default_frontend_root()
    if frontend is not None:
        index = frontend / "index.html"

        async def root(request: Request) -> Response:
            return FileResponse(index, headers={"Cache-Control": "no-cache"})

        routes.append(Route("/", root, methods=["GET"]))
        routes.append(Mount("/", StaticFiles(directory=str(frontend), follow_symlink=False), name="frontend"))
    else:
        async def root(request: Request) -> Response:
            return HTMLResponse(NO_FRONTEND)

        routes.append(Route("/", root, methods=["GET"]))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        body = {"error": exc.detail}
        if isinstance(exc.detail, dict):  # a structured error item: ComfyUI's envelope
            body["node_errors"] = {}
        return JSON(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def os_error(request: Request, exc: OSError) -> Response:
        if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EILSEQ):
            return JSON({"error": f"bad path: {exc.strerror}"}, status_code=400)
        return await server_error(request, exc)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSON({"error": "internal server error"}, status_code=500)

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Guard, config=config)],
                    exception_handlers={HTTPException: http_error, OSError: os_error, Exception: server_error})
    app.state.config = config
    install_log_filters()  # tokens never reach a log line, however the app is served
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loom serve", description="Run Loom's ComfyUI-compatible server.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--base", default=".", help="base folder for models/, input/, output/, temp/, user/ and the queue")
    p.add_argument("--models", help="models folder (default BASE/models)")
    p.add_argument("--output", help="output folder (default BASE/output)")
    p.add_argument("--input", help="input folder (default BASE/input)")
    p.add_argument("--temp", help="temp folder (default BASE/temp)")
    p.add_argument("--user", help="user folder (default BASE/user)")
    p.add_argument("--db", help="queue/history database (default BASE/loom.sqlite3)")
    p.add_argument("--token", default=os.environ.get("LOOM_TOKEN"),
                   help="access token (required off loopback); 'generate' makes one and prints it")
    p.add_argument("--allow-origin", action="append", default=[], help="extra allowed Origin (repeatable)")
    p.add_argument("--max-upload-mb", type=float, default=100.0)
    p.add_argument("--history-max-items", type=int, default=10_000)
    p.add_argument("--history-max-age-days", type=float, default=30.0)
    p.add_argument("--prune-outputs", action="store_true", help="delete output files of pruned history entries")
    p.add_argument("--requeue-interrupted", action="store_true",
                   help="on restart, re-queue a prompt that was running (default: mark it failed)")
    p.add_argument("--frontend-root", help="serve this folder as the editor instead of comfyui-frontend-package")
    p.add_argument("--cache-mb", type=float, default=2048.0, help="output-cache budget in MiB (default 2048)")
    p.add_argument("--memory-mb", type=float, default=None,
                   help="memory budget in MiB for what one node allocates (default: the machine's RAM)")
    p.add_argument("--preview-method", default="none", choices=("none", "auto", "latent2rgb", "taesd"),
                   help="live previews for prompts that do not ask (default none, like ComfyUI)")
    p.add_argument("--head-timeout", type=float, default=30.0,
                   help="seconds a client has to send a request head (default 30)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="open connections at once (default: half the file limit, at most 1000)")
    p.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run prompts on a pool of Ray actors (pip install loom[ray]): 'local' starts a loopback-only "
                        "Ray instance on this machine, 'auto' joins the one started here with `ray start`, "
                        "ADDRESS joins a cluster")
    p.add_argument("--workers", type=int, default=1, help="pool actors with --ray (one per GPU on GPU machines)")
    p.add_argument("--log-level", default="info")
    from modelstore.precision import add_arguments

    add_arguments(p)
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> Config:
    return Config(host=a.host, port=a.port, base_dir=Path(a.base), models_dir=a.models, output_dir=a.output,
                  input_dir=a.input, temp_dir=a.temp, user_dir=a.user, db_path=a.db, token=a.token,
                  allowed_origins=tuple(a.allow_origin), max_upload_bytes=int(a.max_upload_mb * 1024 * 1024),
                  history_max_items=a.history_max_items, history_max_age_s=a.history_max_age_days * 86400,
                  prune_outputs=a.prune_outputs, requeue_interrupted=a.requeue_interrupted,
                  frontend_root=Path(a.frontend_root) if a.frontend_root else None, ray=a.ray,
                  workers=max(1, a.workers), cache_bytes=int(a.cache_mb * 1024 * 1024),
                  memory_budget_bytes=int(a.memory_mb * 1024 * 1024) if a.memory_mb is not None else None,
                  preview_method=a.preview_method, head_timeout_s=a.head_timeout, max_connections=a.max_connections)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    a = parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(a)
    config.check()
    if config.ray:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise SystemExit("--ray needs Ray: pip install 'loom[ray]'")
    try:  # before anything else: a second server on this queue must not start at all
        config.base_lock = BaseLock(config.db_path).acquire()
    except BaseInUse as e:
        print(f"loom serve: {e}", file=sys.stderr)
        return 1
    app = create_app(config)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}/"
    print(f"Loom server on {url}" + (f"?token={config.token}" if config.token else ""), file=sys.stderr)
    ucfg = uvicorn_config(app, config, host=config.host, port=config.port, log_level=a.log_level.lower())
    install_log_filters(handlers=True)  # uvicorn has configured logging: limit repeats, redact everywhere
    uvicorn.Server(ucfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
