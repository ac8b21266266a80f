"""Templates for the editor's template browser: the official ones (comfyui-workflow-templates packages, the `ui`
extra) under /templates/..., and Loom's workflows/ as the module "loom" of /api/workflow_templates, in the editor's
UI format, with thumbnails made by running them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.api_to_ui import api_to_ui
from engine.ui_format import ui_to_api
from nodes import default_registry

from .conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


@pytest.fixture
def real(tmp_path):
    with LiveServer(tmp_path, registry=default_registry()) as s:
        yield s


@pytest.mark.parametrize("name", NAMES)
def test_loom_workflow_as_ui_format_converts_back_to_itself(name):
    reg = default_registry()
    api = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    ui = api_to_ui(api, reg)
    assert all(isinstance(n["id"], int) for n in ui["nodes"]) and ui["version"] == 0.4
    back = ui_to_api(ui, reg)
    assert set(back) == set(api)
    for nid, node in api.items():
        assert back[nid]["class_type"] == node["class_type"]
        assert back[nid]["inputs"] == node["inputs"], nid
        assert back[nid]["_meta"]["title"] == node["_meta"]["title"]


def test_loom_templates_are_listed_served_and_have_thumbnails(real):
    with real.client() as c:
        listed = c.get("/api/workflow_templates").json()
        assert listed["loom"] == NAMES
        for name in NAMES:
            r = c.get(f"/api/workflow_templates/loom/{name}.json")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            assert {n["type"] for n in r.json()["nodes"]} >= {"SaveImage"} | (
                {"PreviewImage"} if name == "image-basics" else set()) or "PreviewImage" in r.text
            t = c.get(f"/api/workflow_templates/loom/{name}.jpg")
            assert t.status_code == 200 and t.content[:2] == b"\xff\xd8", name  # a JPEG made by running it
        assert c.get("/api/workflow_templates/loom/nope.json").status_code == 404
        assert c.get("/api/workflow_templates/other/default.json").status_code == 404
        assert c.get("/api/workflow_templates/loom/..%2Fpyproject.json").status_code == 404


def test_official_templates_are_served_from_the_packages(real):
    """The `ui` extra's template packages: index.json lists only installed templates; each listed template's
    workflow file is served; the classic SD1 templates are there."""
    with real.client() as c:
        idx = c.get("/templates/index.json")
        assert idx.status_code == 200 and idx.headers["content-type"].startswith("application/json")
        cats = idx.json()
        names = [t["name"] for cat in cats for t in cat["templates"]]
        assert {"default", "lora", "controlnet_example", "image2image"} <= set(names), names[:20]
        wf = c.get("/templates/lora.json")
        assert wf.status_code == 200 and isinstance(wf.json()["nodes"], list)
        thumb = c.get(f"/templates/{cats[0]['templates'][0]['name']}-1.{cats[0]['templates'][0]['mediaSubtype']}")
        assert thumb.status_code == 200 and len(thumb.content) > 1000
        assert c.get("/templates/not-a-template.json").status_code == 404
        st = c.get("/api/system_stats").json()["system"]
        assert st["installed_templates_version"]
