"""Workflow templates for the editor's template browser, served as ComfyUI 0.3.75 serves them.

- ``/templates/<file>``: the official templates from the comfyui-workflow-templates packages (the ``ui`` extra
  installs the core manifest and the image and other media bundles): ``index.json``, each template's ``.json`` and
  its thumbnails, located through the core package's manifest (``get_asset_path``). ``index.json`` lists only the
  templates whose files are installed, so the browser shows no card it cannot open. Without the packages,
  ``index.json`` is ``[]`` and other files 404.
- ``/api/workflow_templates``: ``{module: [template names]}``, ComfyUI's list of custom nodes' example workflows;
  Loom lists its own workflows/ as the module ``loom``. ``/api/workflow_templates/loom/<name>.json`` returns the
  workflow in the editor's UI format (converted from the API format with the node schemas), and ``<name>.jpg`` its
  thumbnail, made by running it (``python -m service.thumbnails``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from .http import JSON, svc

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
THUMBNAILS = WORKFLOWS / "thumbnails"
MODULE = "loom"


@functools.lru_cache(maxsize=1)
def official_assets() -> dict[str, str]:
    """filename -> absolute path of every installed official template asset ({} without the packages)."""
    try:
        from comfyui_workflow_templates_core import get_asset_path, iter_templates
    except ImportError:
        return {}
    out = {}
    for entry in iter_templates():
        for asset in entry.assets:
            try:
                out[asset.filename] = get_asset_path(entry.template_id, asset.filename)
            except (FileNotFoundError, KeyError):  # its media bundle is not installed
                continue
    return out


def templates_version() -> str:
    from importlib import metadata
    for dist in ("comfyui-workflow-templates", "comfyui-workflow-templates-core"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


@functools.lru_cache(maxsize=1)
def official_index() -> list:
    """index.json with the templates whose workflow file is installed."""
    assets = official_assets()
    if "index.json" not in assets:
        return []
    cats = json.loads(Path(assets["index.json"]).read_text(encoding="utf-8"))
    for cat in cats:
        cat["templates"] = [t for t in cat.get("templates", []) if f"{t.get('name')}.json" in assets]
    return [c for c in cats if c["templates"]]


def loom_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


async def templates_file(request: Request) -> Response:
    name = request.path_params["path"]
    if name == "index.json":
        return JSON(official_index())
    if name == "index_logo.json" and name not in official_assets():
        return JSON({})
    path = official_assets().get(name)
    if path is None:
        raise HTTPException(404, f"no template file '{name}'")
    return FileResponse(path, headers={"Cache-Control": "no-cache"} if name.endswith(".json") else None)


async def workflow_templates(request: Request) -> Response:
    return JSON({MODULE: loom_names()})


async def workflow_template_file(request: Request) -> Response:
    module, filename = request.path_params["module"], request.path_params["filename"]
    stem, _, ext = filename.rpartition(".")
    if module != MODULE or stem not in loom_names():
        raise HTTPException(404, f"no template '{module}/{filename}'")
    if ext == "json":
        from engine.api_to_ui import api_to_ui
        api = json.loads((WORKFLOWS / f"{stem}.json").read_text(encoding="utf-8"))
        return JSON(api_to_ui(api, svc(request).registry))
    thumb = THUMBNAILS / f"{stem}.{ext}"
    if ext in ("jpg", "webp", "png") and thumb.is_file():
        return FileResponse(thumb)
    raise HTTPException(404, f"no template file '{module}/{filename}'")


ROUTES = [
    ("/workflow_templates", workflow_templates, ["GET"]),
    ("/workflow_templates/{module}/{filename}", workflow_template_file, ["GET"]),
]
# served without the /api prefix, like ComfyUI's static /templates route
STATIC = [("/templates/{path}", templates_file)]
