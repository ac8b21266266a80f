"""Model-free image nodes: ComfyUI's names, inputs and file conventions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Env, Executor, WorkflowError
from engine.pnginfo import read_text_chunks
from engine.schema import object_info
from engine.workflow import load
from nodes import default_registry
from nodes.image import input_images, upscale
from tests.comfy_spec import comfy_object_info



@pytest.fixture
def env(tmp_path):
    e = Env(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp")
    e.input_dir.mkdir()
    return e


@pytest.fixture
def ex(env):
    return Executor(default_registry(), env)


def save_rgba(path: Path, w=6, h=4, alpha=128):
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = alpha
    Image.fromarray(arr, "RGBA").save(path)


def preview(node_id="p", src=("1", 0)):
    return {node_id: {"class_type": "PreviewImage", "inputs": {"images": list(src)}}}


def grab(ex, wf):
    """Run and return the IMAGE/MASK tensors of every non-output node (from the cache)."""
    r = ex.run(wf)
    assert r.status == "success", r.error
    return r


# --- schema vs ComfyUI ----------------------------------------------------------------------------

def test_object_info_matches_comfyui_for_names_inputs_defaults_and_ranges():
    ref = comfy_object_info()
    mine = object_info(default_registry())
    names = {"EmptyImage", "LoadImage", "LoadImageMask", "ImageInvert", "ImageScale", "ImageScaleBy", "SaveImage",
             "PreviewImage", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
             "PrimitiveBoolean"}
    assert names <= set(mine)
    for name in sorted(names):
        info, r = mine[name], ref[name]
        assert info["input"].get("hidden") == r["input"].get("hidden"), name
        for field in ("input_order", "output", "output_name", "output_is_list", "display_name", "category",
                      "output_node"):
            assert info[field] == r[field], (name, field)
        for section, inputs in info["input"].items():
            if section == "hidden":
                continue
            for iname, spec in inputs.items():
                rspec = r["input"][section][iname]
                if isinstance(spec, list) and isinstance(spec[0], list):  # combos: file lists differ
                    if name not in ("LoadImage", "LoadImageMask") or iname != "image":
                        assert spec[0] == rspec[0], (name, iname)
                else:
                    assert spec[0] == rspec[0], (name, iname)
                opts, ropts = (spec[1] if len(spec) > 1 else {}), (rspec[1] if len(rspec) > 1 else {})
                for k in ("default", "min", "max", "step", "multiline", "image_upload", "control_after_generate"):
                    assert opts.get(k) == ropts.get(k), (name, iname, k)


def test_builtin_object_info_is_frontend_valid():
    from tests.engine.test_schema import assert_frontend_valid

    for v in object_info(default_registry()).values():
        assert_frontend_valid(v)


# --- nodes ----------------------------------------------------------------------------------------

def test_empty_image_colour_and_shape(ex, env):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 5, "height": 3, "batch_size": 2, "color": 0xFF8000}},
          **preview()}
    grab(ex, wf)
    img = ex.cache.get(next(iter(ex.cache._entries))).outputs[0]
    assert img.shape == (2, 3, 5, 3) and img.dtype == torch.float32
    assert torch.allclose(img[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))


def test_load_image_gives_rgb_and_inverted_alpha_mask(ex, env):
    save_rgba(env.input_dir / "a.png")
    Image.new("RGB", (3, 2), (0, 0, 255)).save(env.input_dir / "b.jpg")
    (env.input_dir / "notes.txt").write_text("x")
    (env.input_dir / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(env.input_dir / "sub" / "c.png")
    assert input_images(env) == ["a.png", "b.jpg"]  # top level only, images only, sorted
    from nodes.image import LoadImage
    from engine.context import CancelToken, NodeContext

    ctx = NodeContext(env, "p", "1", "LoadImage", CancelToken(), lambda e: None)
    img, mask = LoadImage().run(ctx, "a.png")
    assert img.shape == (1, 4, 6, 3) and mask.shape == (1, 4, 6)
    assert torch.allclose(mask, torch.full_like(mask, 1 - 128 / 255))
    img, mask = LoadImage().run(ctx, "b.jpg")
    assert img.shape == (1, 2, 3, 3) and mask.shape == (1, 64, 64) and mask.abs().sum() == 0
    img, _ = LoadImage().run(ctx, "sub/c.png")  # subfolders are valid (the combo check is skipped)
    assert img.shape == (1, 2, 2, 3)


def test_load_image_validation_confinement_and_fingerprint(ex, env):
    save_rgba(env.input_dir / "a.png")
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, **preview()}
    assert ex.run(wf).status == "success"
    assert ex.run(wf).executed == []
    save_rgba(env.input_dir / "a.png", alpha=0)  # same name, new content: re-runs
    r = ex.run(wf)
    assert r.nodes["1"].status == "executed" and "fingerprint" in r.nodes["1"].reason
    for bad, msg in [("missing.png", "Invalid image file"), ("../a.png", "Invalid image path"),
                     ("/etc/passwd", "Invalid image path")]:
        wf["1"]["inputs"]["image"] = bad
        with pytest.raises(WorkflowError) as ei:
            ex.run(wf)
        item = ei.value.node_errors["1"]["errors"][0]
        assert item["type"] == "custom_validation_failed" and msg in item["details"]


def test_load_image_mask_channels(ex, env):
    save_rgba(env.input_dir / "a.png", alpha=255)
    from nodes.image import LoadImageMask
    from engine.context import CancelToken, NodeContext

    ctx = NodeContext(env, "p", "1", "LoadImageMask", CancelToken(), lambda e: None)
    (m,) = LoadImageMask().run(ctx, "a.png", "red")
    assert m.shape == (1, 4, 6) and torch.all(m == 1)
    (m,) = LoadImageMask().run(ctx, "a.png", "alpha")
    assert torch.all(m == 0)
    Image.new("RGB", (3, 3)).save(env.input_dir / "rgb.png")
    (m,) = LoadImageMask().run(ctx, "rgb.png", "alpha")
    assert m.shape == (1, 64, 64)


def test_invert_and_scale():
    img = torch.rand(2, 8, 12, 3)
    from nodes.image import ImageInvert

    (inv,) = ImageInvert().run(None, img)
    assert torch.allclose(inv, 1 - img) and torch.equal(img, img.clone())
    assert upscale(img, "bilinear", 6, 4).shape == (2, 4, 6, 3)
    assert upscale(img, "nearest-exact", 0, 4).shape == (2, 4, 6, 3)  # 0 keeps the aspect ratio
    assert upscale(img, "area", 3, 0).shape == (2, 2, 3, 3)
    assert upscale(img, "lanczos", 24, 16).shape == (2, 16, 24, 3)
    assert upscale(img, "bicubic", 0, 0) is img
    c = upscale(img, "nearest-exact", 8, 8, "center")  # crops 12 wide to 8 first
    assert torch.allclose(c, img[:, :, 2:10])


def test_pipeline_invert_scale_save(ex, env):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "color": 0}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                          "scale_by": 0.5}},
          "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "bilinear", "width": 6,
                                                        "height": 0, "crop": "disabled"}},
          "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "run/white"}}}
    r = ex.run(wf, extra_data={"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}})
    assert r.status == "success", r.error
    assert r.outputs["9"] == {"images": [{"filename": "white_00001_.png", "subfolder": "run", "type": "output"}]}
    out = env.output_dir / "run" / "white_00001_.png"
    im = Image.open(out)
    assert im.size == (6, 3) and im.getpixel((0, 0)) == (255, 255, 255)
    chunks = read_text_chunks(out.read_bytes())
    assert json.loads(chunks["prompt"]) == wf and json.loads(chunks["workflow"]) == {"nodes": [], "links": []}
    # the saved PNG is a workflow file: loading it gives the same graph back
    assert set(load(out).nodes) == set(wf)


def test_save_image_counter_subfolders_and_confinement(ex, env):
    (env.output_dir / "x").mkdir(parents=True)
    (env.output_dir / "x" / "img_00007_.png").write_bytes(b"")
    (env.output_dir / "x" / "img_extra_00099_.png").write_bytes(b"")  # another prefix: ignored
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 2}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x/img"}}}
    r = ex.run(wf)
    assert [i["filename"] for i in r.outputs["2"]["images"]] == ["img_00008_.png", "img_00009_.png"]
    assert ex.run(wf).executed == []  # a cached output node is not re-run: no new file
    assert len(list((env.output_dir / "x").glob("*.png"))) == 4
    wf["2"]["inputs"]["filename_prefix"] = "../escape"
    r = ex.run(wf)
    assert r.status == "error" and r.error["exception_type"] == "engine.folders.UnsafePathError"
    assert not (env.output_dir.parent / "escape_00001_.png").exists()


def test_save_image_never_overwrites_a_file_created_after_its_scan(ex, env, monkeypatch):
    """Pool workers share the output folder: a name taken between the counter scan and the write is skipped."""
    import nodes.image as image

    scan = image.save_path

    def stale_scan(*a, **kw):  # as if another worker wrote img_00001_ right after this scan
        folder, stem, sub, counter = scan(*a, **kw)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}_{counter:05}_.png").write_bytes(b"theirs")
        return folder, stem, sub, counter

    monkeypatch.setattr(image, "save_path", stale_scan)
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 2}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "img"}}}
    r = ex.run(wf)
    assert [i["filename"] for i in r.outputs["2"]["images"]] == ["img_00002_.png", "img_00003_.png"]
    assert (env.output_dir / "img_00001_.png").read_bytes() == b"theirs"


def test_preview_image_goes_to_temp(ex, env):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2}}, **preview()}
    r = ex.run(wf)
    (item,) = r.outputs["p"]["images"]
    assert item["type"] == "temp" and item["subfolder"] == "" and item["filename"].startswith("ComfyUI_temp_")
    assert (env.temp_dir / item["filename"]).is_file()


def test_primitives_feed_widgets():
    ex = Executor(default_registry())
    wf = {"w": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
          "1": {"class_type": "EmptyImage", "inputs": {"width": ["w", 0], "height": ["w", 0]}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    v = ex.prepare(wf)
    assert v.workflow.nodes["1"].inputs["width"].node == "w"
    with pytest.raises(WorkflowError) as ei:
        ex.prepare({**wf, "w": {"class_type": "PrimitiveInt", "inputs": {}}})
    assert ei.value.node_errors["w"]["errors"][0]["type"] == "required_input_missing"


def test_save_image_writes_a_run_manifest_beside_the_images(ex, env):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 255}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "m"}}}
    r = ex.run(wf)
    assert r.status == "success"
    names = [i["filename"] for i in r.outputs["2"]["images"]]
    manifest = json.loads((env.output_dir / "m_00001_.manifest.json").read_text())
    assert manifest["files"] == names == ["m_00001_.png", "m_00002_.png"]
    assert manifest["nodes"]["2"]["class_type"] == "SaveImage"
    assert "torch" in json.dumps(manifest["environment"])
