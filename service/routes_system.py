"""Node catalogue, system facts, models, and the small lookups the frontend makes at boot."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from engine.schema import COMFYUI_API_VERSION, node_info, object_info

from .devices import local_devices, ram
from .http import JSON, svc
from .routes_templates import templates_version

LOGS: list[dict] = []  # the server's own log lines for /internal/logs (bounded by the log handler)


def _torch_version() -> str:
    t = sys.modules.get("torch")
    if t is not None:
        return str(t.__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


_ram = ram


async def system_stats(request: Request) -> Response:
    s = svc(request)
    total, free = _ram()
    try:
        fe = metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        fe = ""
    return JSON({"system": {"os": os.name, "ram_total": total, "ram_free": free,
                            "comfyui_version": COMFYUI_API_VERSION, "loom_version": s.config.version,
                            "required_frontend_version": fe, "installed_templates_version": templates_version(),
                            "required_templates_version": "", "python_version": sys.version,
                            "pytorch_version": _torch_version(), "embedded_python": False,
                            "argv": ["loom", "serve"], "platform": platform.platform(),
                            "loom_model_families": _families()},
                 "devices": _devices(s)})


def _devices(s) -> list[dict]:
    """Every worker's devices (one list for the in-process worker; each pool worker's, tagged with its id)."""
    workers = s.worker.workers() if s.worker is not None else []
    if len(workers) <= 1 or workers[0].get("id") == "local":
        return local_devices()
    return [{**d, "worker": w["id"]} for w in workers for d in w.get("devices") or ()]


async def get_workers(request: Request) -> Response:
    """Loom: the workers that run prompts (id, node, pid, devices, resident models, busy prompt, prompts done,
    last error)."""
    s = svc(request)
    return JSON({"workers": s.worker.workers() if s.worker is not None else []})


def _families() -> dict:
    """The model families this server can load (torch-free catalogue), for the editor's missing-models view."""
    from modelstore.families.catalog import summary

    return summary()


async def get_object_info(request: Request) -> Response:
    s = svc(request)
    return JSON(object_info(s.registry, s.env))


async def get_object_info_one(request: Request) -> Response:
    s = svc(request)
    cls = s.registry.get(request.path_params["node_class"])
    return JSON({cls.class_type: node_info(cls, s.env)} if cls is not None else {})


def _kinds() -> list[str]:
    from engine.folders import FOLDER_KINDS

    return list(FOLDER_KINDS)


def _folders(s):
    from engine.folders import ModelFolders

    return ModelFolders(s.config.models_dir)


async def get_models(request: Request) -> Response:
    return JSON(_kinds())


async def get_models_folder(request: Request) -> Response:
    folder = request.path_params["folder"]
    if folder not in _kinds():
        raise HTTPException(404, "unknown model folder")
    return JSON(_folders(svc(request)).list(folder))


async def get_embeddings(request: Request) -> Response:
    names = _folders(svc(request)).list("embeddings")
    return JSON([os.path.splitext(n)[0] for n in names])


async def experiment_models(request: Request) -> Response:
    f = _folders(svc(request))
    return JSON([{"name": k, "folders": [str(p) for p in f.paths(k)]} for k in _kinds()])


async def experiment_models_folder(request: Request) -> Response:
    folder = request.path_params["folder"]
    if folder not in _kinds():
        raise HTTPException(404, "unknown model folder")
    f = _folders(svc(request))
    out = []
    for name in f.list(folder):
        for i, base in enumerate(f.paths(folder)):
            p = base / name
            if p.exists():
                st = p.stat()
                out.append({"name": name, "pathIndex": i, "modified": st.st_mtime, "created": st.st_ctime,
                            "size": st.st_size})
                break
    return JSON(out)


async def features(request: Request) -> Response:
    return JSON(svc(request).hub.flags)


async def empty_list(request: Request) -> Response:
    return JSON([])


async def empty_dict(request: Request) -> Response:
    return JSON({})


async def not_found(request: Request) -> Response:
    raise HTTPException(404, "not found")


async def logs(request: Request) -> Response:
    return JSON("\n".join(e["m"] for e in LOGS))


async def logs_raw(request: Request) -> Response:
    return JSON({"entries": LOGS, "size": {"cols": 120, "rows": 40}})


async def logs_subscribe(request: Request) -> Response:
    return Response(status_code=200)


async def folder_paths(request: Request) -> Response:
    s = svc(request)
    f = _folders(s)
    return JSON({k: [str(p) for p in f.paths(k)] for k in _kinds()})


ROUTES = [
    ("/object_info", get_object_info, ["GET"]),
    ("/object_info/{node_class}", get_object_info_one, ["GET"]),
    ("/system_stats", system_stats, ["GET"]),
    ("/loom/workers", get_workers, ["GET"]),
    ("/embeddings", get_embeddings, ["GET"]),
    ("/extensions", empty_list, ["GET"]),
    ("/features", features, ["GET"]),
    ("/models", get_models, ["GET"]),
    ("/models/{folder}", get_models_folder, ["GET"]),
    ("/experiment/models", experiment_models, ["GET"]),
    ("/experiment/models/{folder}", experiment_models_folder, ["GET"]),
    ("/experiment/models/preview/{folder}/{index}/{filename:path}", not_found, ["GET"]),
    ("/i18n", empty_dict, ["GET"]),
    ("/global_subgraphs", empty_dict, ["GET"]),
    ("/node_replacements", empty_dict, ["GET"]),
]
INTERNAL = [
    ("/logs", logs, ["GET"]),
    ("/logs/raw", logs_raw, ["GET"]),
    ("/logs/subscribe", logs_subscribe, ["PATCH"]),
    ("/folder_paths", folder_paths, ["GET"]),
]
STATIC_JSON: list = []  # /templates/... live in routes_templates
