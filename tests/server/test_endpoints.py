"""The lookups the frontend makes at boot, with ComfyUI's shapes, bare and under /api."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from .conftest import IMAGE_WF

BOOT = ["/users", "/settings", "/extensions", "/object_info", "/features", "/system_stats", "/i18n", "/embeddings",
        "/models", "/experiment/models", "/workflow_templates", "/global_subgraphs", "/prompt", "/queue", "/history",
        "/jobs?status=in_progress,pending&limit=200&offset=0"]


def test_every_route_bare_and_under_api(live):
    with live.client() as c:
        for path in BOOT:
            for prefix in ("", "/api"):
                r = c.get(prefix + path)
                assert r.status_code == 200, (prefix + path, r.status_code)
                assert r.headers["content-type"].startswith("application/json"), path
                r.json()
        for path in ("/internal/logs", "/internal/logs/raw", "/internal/folder_paths", "/internal/files/output",
                     "/templates/index.json"):
            assert c.get(path).status_code == 200, path
        assert c.get("/internal/files/etc").status_code == 400
        assert c.get("/").status_code == 200


def test_object_info_and_system_stats_shapes(live):
    with live.client() as c:
        info = c.get("/api/object_info").json()
        for name, d in info.items():
            assert d["name"] == name
            for k in ("display_name", "description", "category", "python_module"):
                assert isinstance(d[k], str), (name, k)
            assert isinstance(d["output_node"], bool)
            assert len(d["output"]) == len(d["output_is_list"]) == len(d["output_name"])
        assert "SaveImage" in info and info["SaveImage"]["output_node"] is True
        one = c.get("/object_info/EmptyImage").json()
        assert list(one) == ["EmptyImage"] and one["EmptyImage"] == info["EmptyImage"]
        st = c.get("/system_stats").json()
        for k in ("os", "python_version", "embedded_python", "comfyui_version", "pytorch_version", "argv",
                  "ram_total", "ram_free"):
            assert k in st["system"], k
        # the ComfyUI API Loom matches, and Loom's own version (pyproject's) separately
        import tomllib
        loom_v = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
        assert st["system"]["comfyui_version"] == "0.3.75" and st["system"]["loom_version"] == loom_v
        fams = st["system"]["loom_model_families"]
        assert {"sd1", "sdxl", "flux", "sd3", "zimage", "qwen_image"} <= set(fams["diffusion_models"])
        assert fams["clip_loader_types"]["lumina2"] == ["qwen3"]
        assert fams["clip_loader_types"]["qwen_image"] == ["qwen25vl"]
        for dev in st["devices"]:
            assert all(isinstance(dev[k], (int, float)) for k in ("index", "vram_total", "vram_free",
                                                                  "torch_vram_total", "torch_vram_free"))
        assert c.get("/users").json() == {"storage": "server", "migrated": True} or \
            c.get("/users").json()["storage"] == "server"
        assert c.get("/features").json()["supports_preview_metadata"] is True


def test_models_listing_and_metadata(live):
    ck = live.config.models_dir / "checkpoints"
    (ck / "sub").mkdir(parents=True)
    header = json.dumps({"__metadata__": {"ss_network_dim": "16"}}).encode()
    (ck / "sub" / "a.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (ck / "b.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    (ck / "notes.txt").write_text("x")
    emb = live.config.models_dir / "embeddings"
    emb.mkdir()
    (emb / "style.pt").write_bytes(b"")
    with live.client() as c:
        assert "checkpoints" in c.get("/models").json()
        assert c.get("/api/models/checkpoints").json() == ["b.safetensors", "sub/a.safetensors"]
        assert c.get("/embeddings").json() == ["style"]
        assert c.get("/view_metadata/checkpoints", params={"filename": "sub/a.safetensors"}).json() == \
            {"ss_network_dim": "16"}
        assert c.get("/view_metadata/checkpoints", params={"filename": "b.safetensors"}).status_code == 404
        assert c.get("/view_metadata/checkpoints", params={"filename": "notes.txt"}).status_code == 404
        em = c.get("/api/experiment/models/checkpoints").json()
        assert {e["name"] for e in em} == {"b.safetensors", "sub/a.safetensors"} and all("size" in e for e in em)


def test_free_and_partial_targets(live):
    with live.client() as c:
        wf = {**IMAGE_WF, "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
        r = c.post("/prompt", json={"prompt": wf, "partial_execution_targets": ["4"]})
        assert r.status_code == 200
        pid = r.json()["prompt_id"]
        q = c.get("/queue").json()
        items = q["queue_pending"] + q["queue_running"]
        assert not items or items[0][4] == ["4"]
        assert c.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200
        import time
        t0 = time.time()
        while c.get("/prompt").json()["exec_info"]["queue_remaining"] and time.time() - t0 < 20:
            time.sleep(0.05)
        out = c.get(f"/history/{pid}").json()[pid]["outputs"]
        assert list(out) == ["4"] and out["4"]["images"][0]["type"] == "temp"


def test_view_preview_and_channels(live):
    from io import BytesIO

    from PIL import Image
    Image.new("RGBA", (20, 10), (10, 20, 30, 99)).save(live.config.output_dir / "rgba.png")
    with live.client() as c:
        r = c.get("/view", params={"filename": "rgba.png"})
        assert r.headers["content-type"] == "image/png" and 'filename="rgba.png"' in r.headers["content-disposition"]
        r = c.get("/view", params={"filename": "rgba.png", "preview": "webp;80"})
        assert r.headers["content-type"] == "image/webp" and Image.open(BytesIO(r.content)).size == (20, 10)
        r = c.get("/view", params={"filename": "rgba.png", "preview": "jpeg"})
        assert r.headers["content-type"] == "image/jpeg"
        r = c.get("/view", params={"filename": "rgba.png", "channel": "rgb"})
        assert Image.open(BytesIO(r.content)).mode == "RGB"
        r = c.get("/view", params={"filename": "rgba.png", "channel": "a"})
        assert Image.open(BytesIO(r.content)).getpixel((1, 1))[3] == 99
        r = c.get("/view", params={"filename": "rgba.png [output]", "type": "input"})
        assert r.status_code == 200
        assert c.get("/view", params={"filename": "rgba.png", "type": "input"}).status_code == 404
