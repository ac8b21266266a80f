"""ComfyUI's official frontend (comfyui-frontend-package) as Loom's editor, in headless Debian Chromium.

Boots the real frontend against a live Loom server, checks Loom's nodes are registered from
/object_info, saves and reloads a workflow through the frontend's own userdata client, loads a
graph, clicks Run, sees total and per-node progress (window title "[total%][node%]", which is fed
by progress_state/progress events — Loom sends only the changed node's state), the live preview,
the finished image loaded from /view, and the job in the Job Queue panel (fed by /api/jobs); the template
browser; and nested subgraphs made with the editor's own Convert-to-Subgraph command, saved, run by `loom run`.

Needs: apt-get install -y chromium; pip install playwright comfyui-frontend-package.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import LiveServer

CHROMIUM = os.environ.get("LOOM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    try:
        import comfyui_frontend_package  # noqa: F401
    except ImportError:
        return "comfyui-frontend-package is not installed (pip install loom[ui])"
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    return None


WF = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0x336699}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "browser"}},
    "4": {"class_type": "ServerSteps", "inputs": {"steps": 25, "delay": 0.12, "preview": 1, "seed": 1}},
}


def _prepare(tmp_path):
    """Skip with the reason when chromium/playwright/the editor are missing; else a user folder whose settings
    skip the editor's tutorial. Returns that folder."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    ud = tmp_path / "user" / "default"
    ud.mkdir(parents=True)
    (ud / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return ud


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                             args=ARGS)


def test_official_frontend_end_to_end(tmp_path):
    ud = _prepare(tmp_path)
    from playwright.sync_api import sync_playwright

    # the editor sends no preview_method while its setting is "default": the server flag turns previews on
    with LiveServer(tmp_path, preview_method="auto") as srv, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(srv.url + "/")
            # boots, and registers Loom's nodes from /object_info
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "Object.keys(window.LiteGraph.registered_node_types || {}).length > 0",
                                   timeout=90_000)
            types = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
            for t in ("EmptyImage", "ImageInvert", "SaveImage", "ServerSteps"):
                assert t in types
            # saves and reloads a workflow through the frontend's own userdata client
            saved = page.evaluate("""async () => {
                const api = window.app.api;
                const data = JSON.stringify(window.app.graph.serialize());
                const r = await api.storeUserData('workflows/loom-saved.json', data,
                                                  {overwrite: true, stringify: false, throwOnError: true});
                const files = await api.listUserDataFullInfo('workflows');
                const back = await (await api.getUserData('workflows/loom-saved.json')).json();
                return {status: r.status, files: files.map(f => f.path), nodes: back.nodes.length};
            }""")
            assert saved["status"] == 200 and "loom-saved.json" in saved["files"]
            assert (ud / "workflows" / "loom-saved.json").is_file()
            # load a graph and press Run
            page.evaluate("(wf) => window.app.loadApiJson(wf, 'loom-test.json')", WF)
            page.wait_for_function("() => window.app.graph._nodes.length === 4")
            page.get_by_role("button", name="Run").first.click()
            # progress: total and current-node percentages in the title, driven by the websocket
            # (one condition, not wait-then-read: the title changes between steps)
            page.wait_for_function(r"() => /\[\d+%\]\[\d+%\].*ServerSteps/.test(document.title)", timeout=30_000)
            # a live preview reaches the sampling node
            page.wait_for_function("() => (window.app.graph.getNodeById(4).imgs || []).some(i => i.naturalWidth > 0)",
                                   timeout=30_000)
            # the finished image is fetched from /view and shown on the SaveImage node
            page.wait_for_function("""() => (window.app.graph.getNodeById(3).imgs || []).some(
                i => i.src.includes('/api/view?filename=browser_00001_.png') && i.naturalWidth === 64)""",
                                   timeout=60_000)
            page.wait_for_function("() => !/\\[\\d+%\\]/.test(document.title)", timeout=30_000)
            # the Job Queue panel lists the finished job
            page.get_by_text("0 active").first.click()
            page.get_by_text("Job Queue").first.wait_for(timeout=15_000)
            page.get_by_text("browser_00001_.png").first.wait_for(timeout=15_000)
            assert not page_errors, page_errors
        finally:
            browser.close()


def test_frontend_works_with_a_token(tmp_path):
    """With a token (required off loopback), opening /?token=... sets an HttpOnly cookie and the frontend's
    fetches and websocket carry it; without it the page is refused."""
    _prepare(tmp_path)
    from playwright.sync_api import sync_playwright

    with LiveServer(tmp_path, token="tok-123") as srv, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            assert page.goto(srv.url + "/").status == 401
            page.goto(srv.url + "/?token=tok-123")
            assert "token" not in page.url
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "Object.keys(window.LiteGraph.registered_node_types || {}).length > 0",
                                   timeout=90_000)
            # the websocket connected (the server's first status message carries the sid)
            page.wait_for_function("() => !!window.app.api.clientId", timeout=30_000)
            assert page.evaluate("() => window.app.api.clientId") in srv.svc.hub.clients
        finally:
            browser.close()


def test_template_browser_lists_loom_and_official_templates(tmp_path):
    """The editor's template browser (Comfy.BrowseTemplates) shows Loom's workflows/ (module "loom" of
    /api/workflow_templates) and the official templates from the `ui` extra's packages."""
    _prepare(tmp_path)
    from playwright.sync_api import sync_playwright

    from nodes import default_registry

    with LiveServer(tmp_path, registry=default_registry()) as srv, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager",
                                   timeout=120_000)
            page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            # the official templates (the `ui` extra's packages) fill "All Templates"
            page.wait_for_function(r"() => /Showing \d+ of \d+ templates/.test(document.body.innerText)",
                                   timeout=60_000)
            text = page.evaluate("() => document.body.innerText")
            assert "No templates found" not in text
            shown = int(text.split("Showing ", 1)[1].split(" ", 1)[0])
            assert shown >= 20, shown
            # Loom's workflows are the category "loom": all of them, by name
            page.get_by_text("loom", exact=True).first.click()
            n = len(list((Path(__file__).resolve().parents[2] / "workflows").glob("*.json")))
            page.wait_for_function(f"() => document.body.innerText.includes('Showing {n} of {n} templates')",
                                   timeout=60_000)
            text = page.evaluate("() => document.body.innerText")
            assert "latent-interpolation" in text and "upscale-with-model" in text
        finally:
            browser.close()


# EmptyImage -> ImageInvert x3 -> SaveImage: an odd number of inversions, so every one must have run
SUB_WF = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0x336699}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "nested"}},
}


def test_editor_built_nested_subgraph_runs_headlessly(tmp_path):
    """The editor's own command Comfy.Graph.ConvertToSubgraph (1.58.1) wraps EmptyImage in a subgraph whose colour
    widget is promoted (Comfy.Graph.ToggleWidgetPromotion) and set on the parent, wraps node 4 in a subgraph, then
    node 3 and that subgraph in another (nesting); the workflow the editor saves (graphToPrompt().workflow, the file
    "Save" writes, with definitions.subgraphs) runs with `loom run` and gives the once-inverted promoted colour."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from nodes import default_registry
    from tests.test_cli import loom, summaries

    _prepare(tmp_path)
    with LiveServer(tmp_path, registry=default_registry()) as srv, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(srv.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager && "
                                   "Object.keys(window.LiteGraph.registered_node_types || {}).length > 0",
                                   timeout=90_000)
            page.evaluate("(wf) => window.app.loadApiJson(wf, 'nested.json')", SUB_WF)
            page.wait_for_function("() => window.app.graph._nodes.length === 5")
            made = page.evaluate("""async () => {
                const app = window.app, canvas = app.canvas, g = app.graph;
                const convert = async (ids) => {
                    canvas.deselectAll();
                    for (const id of ids) canvas.select(g.getNodeById(id));
                    await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph');
                    const sel = [...canvas.selectedItems];
                    return sel.length === 1 ? sel[0].id : null;
                };
                // EmptyImage into a subgraph; promote its colour widget with the editor's toggle command (it acts
                // on the hovered widget: put the canvas mouse on it) and set the promoted widget on the parent
                const host = g.getNodeById(await convert([1]));
                canvas.openSubgraph(host.subgraph, host);
                canvas.draw(true, true);
                const empty = canvas.graph._nodes.find(n => n.type === 'EmptyImage');
                const cw = empty.widgets.find(w => w.name === 'color');
                canvas.graph_mouse[0] = empty.pos[0] + 20;
                canvas.graph_mouse[1] = empty.pos[1] + cw.y + 5;
                await app.extensionManager.command.execute('Comfy.Graph.ToggleWidgetPromotion');
                canvas.setGraph(g);
                const promoted = (host.widgets || []).find(w => w.name === 'color');
                if (promoted) promoted.value = 0x102030;
                const inner = await convert([4]);
                const outer = await convert([3, inner]);
                const {workflow, output} = await app.graphToPrompt();
                return {promoted: !!promoted, saved: workflow, editor_ids: Object.keys(output), root: g._nodes.map(n => n.type)};
            }""")
            assert not page_errors, page_errors
        finally:
            browser.close()
    saved = made["saved"]
    assert made["promoted"], "the editor did not promote the colour widget"
    subs = saved.get("definitions", {}).get("subgraphs", [])
    assert len(subs) == 3, made["root"]
    # the root holds the EmptyImage subgraph, Invert 2, the outer subgraph and SaveImage; the outer holds the inner
    assert made["root"].count("ImageInvert") == 1 and len(made["root"]) == 4, made["root"]
    by_id = {s["id"]: s for s in subs}
    assert any({n["type"] for n in sg["nodes"]} >= {"ImageInvert"} and any(n["type"] in by_id for n in sg["nodes"])
               for sg in subs), "the subgraphs are not nested"
    wf = tmp_path / "editor-nested.json"
    wf.write_text(json.dumps(saved))
    r = loom("validate", str(wf), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = loom("run", str(wf), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (s,) = summaries(r.stdout)
    assert s["status"] == "success", s
    # five nodes ran (EmptyImage inside its subgraph); the innermost invert carries the two-level "outer:inner:node" id
    assert len(s["executed"]) == 5 and any(e.count(":") == 2 for e in s["executed"]), s["executed"]
    # Loom flattens to the same "outer:inner" ids as the editor's own API prompt
    assert sorted(s["executed"]) == sorted(made["editor_ids"]), (s["executed"], made["editor_ids"])
    px = np.asarray(Image.open(tmp_path / s["outputs"][0]).convert("RGB"))[0, 0]
    # the promoted colour set on the parent (0x102030), not the inner node's own 0x336699, inverted once
    assert np.abs(px.astype(int) - [0xFF - 0x10, 0xFF - 0x20, 0xFF - 0x30]).max() <= 1, px
