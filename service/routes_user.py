"""Users, settings and user files (/users, /settings, /userdata, /v2/userdata), single-user.

Everything lives under ``<user_dir>/default``. Userdata names arrive URL-encoded with ``%2F`` for
sub-folders (``workflows%2Fa.json``); they are read from the raw request path so an encoded slash
is never confused with the ``/move/`` separator, then confined to the user folder.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from engine.folders import UnsafePathError, confine

from .bodies import Settings, parse
from .http import JSON, read_body, read_json, svc
from .routes_files import atomic_write

USER = "default"
SETTINGS = "comfy.settings.json"
_settings_lock = threading.Lock()


def user_root(s) -> Path:
    p = Path(s.config.user_dir) / USER
    p.mkdir(parents=True, exist_ok=True)
    return p


def _confine(root: Path, rel: str) -> Path:
    try:
        return confine(root, rel)
    except UnsafePathError as e:
        raise HTTPException(403, str(e))


# -- users and settings ---------------------------------------------------------------------------
async def get_users(request: Request) -> Response:
    return JSON({"storage": "server", "migrated": (Path(svc(request).config.user_dir) / USER).is_dir()})


async def post_users(request: Request) -> Response:
    return JSON({"error": "this server runs in single-user mode"}, status_code=400)


def _load_settings(s) -> dict:
    p = user_root(s) / SETTINGS
    try:
        d = json.loads(p.read_text("utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_settings(s, d: dict) -> None:
    atomic_write(user_root(s) / SETTINGS, json.dumps(d, indent=2, ensure_ascii=False).encode("utf-8"))


async def get_settings(request: Request) -> Response:
    return JSON(_load_settings(svc(request)))


async def get_setting(request: Request) -> Response:
    return JSON(_load_settings(svc(request)).get(request.path_params["id"]))


async def post_settings(request: Request) -> Response:
    s = svc(request)
    body = parse(Settings, await read_json(request, s.config.max_json_bytes)).root
    with _settings_lock:
        d = _load_settings(s)
        d.update(body)
        _save_settings(s, d)
    return Response(status_code=200)


async def post_setting(request: Request) -> Response:
    s = svc(request)
    body = await read_json(request, s.config.max_json_bytes)
    with _settings_lock:
        d = _load_settings(s)
        d[request.path_params["id"]] = body
        _save_settings(s, d)
    return Response(status_code=200)


# -- userdata ---------------------------------------------------------------------------------------
def _flag(request: Request, name: str, default: bool) -> bool:
    v = request.query_params.get(name)
    return default if v is None else v.lower() in ("true", "1", "yes")


def _info(root: Path, p: Path) -> dict:
    st = p.stat()
    return {"path": p.relative_to(root).as_posix(), "size": st.st_size, "modified": st.st_mtime,
            "created": getattr(st, "st_birthtime", st.st_ctime)}


async def list_userdata(request: Request) -> Response:
    s = svc(request)
    d = request.query_params.get("dir")
    if not d:
        raise HTTPException(400, "dir is required")
    root = user_root(s)
    base = _confine(root, d)
    if not base.is_dir():
        raise HTTPException(404, "no such directory")
    recurse = _flag(request, "recurse", False)
    full = _flag(request, "full_info", False)
    split = _flag(request, "split", False)
    rbase = base.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dp = Path(dirpath)
        if not recurse:
            dirnames[:] = []
        else:  # never follow a symlinked folder out of the user root
            dirnames[:] = sorted(n for n in dirnames if (dp / n).resolve().is_relative_to(rbase))
        for f in sorted(filenames):
            p = dp / f
            if not p.resolve().is_relative_to(rbase):
                continue
            rel = p.relative_to(base).as_posix()
            if full:
                info = _info(base, p)
                out.append(info)
            elif split:
                out.append([rel, *rel.split("/")])
            else:
                out.append(rel)
    return JSON(out)


async def list_userdata_v2(request: Request) -> Response:
    s = svc(request)
    root = user_root(s)
    rel = request.query_params.get("path") or ""
    base = _confine(root, rel) if rel else root.resolve()
    if not base.is_dir():
        raise HTTPException(404, "no such directory")
    dirs, files = [], []
    for e in sorted(os.scandir(base), key=lambda e: e.name):
        p = Path(e.path)
        if not p.resolve().is_relative_to(root.resolve()):
            continue
        relp = p.relative_to(root).as_posix()
        if e.is_dir():
            dirs.append({"name": e.name, "path": relp, "type": "directory"})
        elif e.is_file():
            st = e.stat()
            files.append({"name": e.name, "path": relp, "type": "file", "size": st.st_size, "modified": st.st_mtime})
    return JSON(dirs + files)


def _names(request: Request) -> tuple[str, str | None]:
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.scope["path"]
    path = path.split("?", 1)[0]
    i = path.find("/userdata/")
    tail = path[i + len("/userdata/"):]
    src, sep, dest = tail.partition("/move/")
    return unquote(src), (unquote(dest) if sep else None)


async def userdata_file(request: Request) -> Response:
    s = svc(request)
    root = user_root(s)
    src, dest = _names(request)
    if not src:
        raise HTTPException(400, "file name required")
    path = _confine(root, src)
    method = request.method
    if dest is not None:
        if method != "POST":
            raise HTTPException(405, "move is POST")
        target = _confine(root, dest)
        if not path.is_file():
            raise HTTPException(404, "source not found")
        if target.exists() and not _flag(request, "overwrite", True):
            raise HTTPException(409, "destination exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return JSON(_info(root, target) if _flag(request, "full_info", False) else target.relative_to(root).as_posix())
    if method == "GET":
        if not path.is_file():
            raise HTTPException(404, "file not found")
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff"},
                            media_type="application/json" if path.suffix == ".json" else "application/octet-stream")
    if method == "DELETE":
        if not path.is_file():
            raise HTTPException(404, "file not found")
        path.unlink()
        return Response(status_code=204)
    if method == "POST":
        if path.is_dir():
            raise HTTPException(400, "is a directory")
        if path.exists() and not _flag(request, "overwrite", True):
            raise HTTPException(409, "file exists")
        data = await read_body(request, s.config.max_upload_bytes)
        atomic_write(path, data)
        return JSON(_info(root, path) if _flag(request, "full_info", False) else path.relative_to(root).as_posix())
    raise HTTPException(405, "method not allowed")


ROUTES = [
    ("/users", get_users, ["GET"]),
    ("/users", post_users, ["POST"]),
    ("/settings", get_settings, ["GET"]),
    ("/settings", post_settings, ["POST"]),
    ("/settings/{id}", get_setting, ["GET"]),
    ("/settings/{id}", post_setting, ["POST"]),
    ("/userdata", list_userdata, ["GET"]),
    ("/v2/userdata", list_userdata_v2, ["GET"]),
    ("/userdata/{rest:path}", userdata_file, ["GET", "POST", "DELETE"]),
]
