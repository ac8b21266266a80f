"""The older official editor, comfyui-frontend-package 1.16.9 (ComfyUI's frontend of spring 2025, which many
installs still pin), against Loom: it boots on /object_info and its template browser lists the official
templates and Loom's own workflows (the issue found it throwing a TypeError there before /api/workflow_templates
answered in the shape it expects).

The package is fetched once from PyPI with `pip download` (the registry is reachable wherever the test extra
installs) into ~/.cache/loom-tests, since the `ui` extra pins the current 1.58 editor under the same name.
Needs chromium and playwright like tests/server/test_browser.py, and skips with the same reasons without them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import LiveServer
from .test_browser import _launch, _prepare

VERSION = "1.16.9"


def _editor_1_16_9() -> Path:
    cache = Path.home() / ".cache" / "loom-tests" / f"comfyui-frontend-{VERSION}"
    static = cache / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                            f"comfyui-frontend-package=={VERSION}"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"pip download comfyui-frontend-package=={VERSION} failed: {r.stderr[-2000:]}"
        wheel = next(cache.glob(f"comfyui_frontend_package-{VERSION}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(cache)
    return static


def test_editor_1_16_9_template_browser_lists_official_and_loom_templates(tmp_path):
    _prepare(tmp_path)
    from playwright.sync_api import sync_playwright

    from nodes import default_registry

    static = _editor_1_16_9()
    with LiveServer(tmp_path, registry=default_registry(), frontend_root=static) as srv, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(srv.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager && "
                                   "Object.keys(window.LiteGraph.registered_node_types || {}).length > 100",
                                   timeout=120_000)
            assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == VERSION
            page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            page.get_by_text("Get Started with a Template").first.wait_for(timeout=60_000)
            # the official templates' categories (from the ui extra's packages) and Loom's own category
            page.get_by_text("Custom Nodes", exact=True).first.wait_for(timeout=30_000)
            page.wait_for_function("() => [...document.images].filter(i => i.src.includes('/templates/') && "
                                   "i.naturalWidth > 0).length >= 2", timeout=60_000)
            page.get_by_text("loom", exact=True).first.click()
            names = [p.stem for p in (Path(__file__).resolve().parents[2] / "workflows").glob("*.json")]
            page.wait_for_function("(names) => names.every(n => document.body.innerText.includes(n))", arg=names,
                                   timeout=60_000)
            # a thumbnail made by running the workflow is shown (loaded from /api/workflow_templates' module)
            page.wait_for_function("() => [...document.images].some(i => i.src.includes('default') && "
                                   "i.naturalWidth > 0)", timeout=30_000)
            assert not page_errors, page_errors
        finally:
            browser.close()
