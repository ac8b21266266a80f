"""ComfyUI's classic templates run end to end on the bundled model: the official UI-format files of the `ui` extra's
template packages (read from the installed packages, as the server serves them) go through Loom's loader and the
Executor to saved images, with every model file they name provided under a temp models/ tree:

- the checkpoint (DreamShaper & co.) is the bundled ``loom-shapes-64.safetensors``;
- the separate VAE is the bundled checkpoint's own VAE, saved alone in the LDM layout;
- the ControlNet is a tiny one made from the bundled UNet (tests/tiny_controlnet.py, original single-file layout);
- LoRAs are the shipped ``models/loras/loom-shapes-grayscale-lora.safetensors``;
- the textual-inversion embedding is the bundled CLIP's token vectors of two words.

Loom's own ``workflows/embedding_example.json`` (the classic embedding_example graph) runs on the checkout's files
with the shipped ``models/embeddings/loom-blue-square.safetensors``.

To keep each run to a few seconds on a CPU the tests shrink the templates through the API workflow: 64x64 latents
(the bundled model's size) and 4 steps instead of 1024/768 px and 20/30 steps; everything else is the template's.

embedding_example is not in the pinned template packages (templates-core 0.3.23, media-image 0.3.26, media-other
0.3.37): ComfyUI's embedding example is the default text-to-image graph with ``embedding:<name>`` in the negative
prompt, so that test loads the packages' official ``default.json`` and writes the embedding into its negative
prompt the same way.
"""
from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from engine.events import Event
from engine.executor import Executor
from engine.workflow import load
from nodes import default_registry
from tests.tiny_controlnet import build_tiny_controlnet, save_controlnet

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "checkpoints" / "loom-shapes-64.safetensors"
SHIPPED_LORA = REPO / "models" / "loras" / "loom-shapes-grayscale-lora.safetensors"
SHIPPED_EMBEDDING = REPO / "models" / "embeddings" / "loom-blue-square.safetensors"
STEPS = 4


def template(package: str, name: str) -> Path:
    """The installed official template file; a missing one fails (the `ui` extra is part of the test install)."""
    try:
        path = Path(str(importlib.resources.files(package) / "templates" / f"{name}.json"))
    except ModuleNotFoundError:
        pytest.fail(f"{package} is not installed (pip install -e '.[ui]')")
    assert path.is_file(), f"{name}.json missing from {package}"
    return path


def node_of(ui_path: Path, class_type: str) -> dict:
    """The template's (single, active) UI node of ``class_type``."""
    nodes = [n for n in json.loads(ui_path.read_text())["nodes"] if n["type"] == class_type and n.get("mode", 0) == 0]
    assert len(nodes) == 1, (class_type, nodes)
    return nodes[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(env, models root): the bundled checkpoint and its parts under a temp models/ tree."""
    from tests.nodes.conftest import make_env

    root = tmp_path_factory.mktemp("models")
    for d in ("checkpoints", "vae", "controlnet", "loras", "embeddings"):
        (root / d).mkdir()
    assert BUNDLED.is_file() and SHIPPED_LORA.is_file()
    shutil.copyfile(BUNDLED, root / "checkpoints" / "loom-shapes-64.safetensors")
    env = make_env(root, tmp_path_factory.mktemp("io"))
    env.input_dir.mkdir(parents=True, exist_ok=True)
    return env, root


def provide(root: Path, folder: str, name: str, src: Path):
    dst = root / folder / name
    if not dst.exists():
        shutil.copyfile(src, dst)


def shrink(wf):
    """64x64 latents and STEPS steps (see the module docstring)."""
    over = []
    for nid, n in wf.prompt.items():
        if n["class_type"] == "EmptyLatentImage":
            over += [(nid, "width", 64), (nid, "height", 64)]
        if n["class_type"] == "KSampler":
            over += [(nid, "steps", STEPS), (nid, "seed", 7)]
    wf, unused = wf.with_overrides(over)
    assert not unused
    return wf


def run(env, wf, overrides=()):
    """Run; returns (saved PIL images of every SaveImage, warning events)."""
    events: list[Event] = []
    wf, _ = wf.with_overrides(overrides)
    r = Executor(default_registry(), env).run(wf, sink=events.append)
    assert r.status == "success", r.error
    saves = [nid for nid, n in wf.prompt.items() if n["class_type"] == "SaveImage"]
    assert saves
    images = []
    for nid in saves:
        for item in r.outputs[nid]["images"]:
            path = env.output_dir / item.get("subfolder", "") / item["filename"]
            assert path.is_file()
            images.append(Image.open(path).convert("RGB"))
    return images, [e for e in events if e.type == "warning"]


def pixels(img) -> torch.Tensor:
    """(H*W, 3) float RGB values 0..255."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(-1, 3).copy())


def chroma(img) -> float:
    p = pixels(img)
    return float((p.max(1).values - p.min(1).values).mean())


def test_controlnet_example(world):
    env, root = world
    path = template("comfyui_workflow_templates_media_image", "controlnet_example")
    ckpt = node_of(path, "CheckpointLoaderSimple")["widgets_values"][0]
    vae = node_of(path, "VAELoader")["widgets_values"][0]
    cn_name = node_of(path, "ControlNetLoader")["widgets_values"][0]
    image = node_of(path, "LoadImage")["widgets_values"][0]
    provide(root, "checkpoints", ckpt, BUNDLED)
    sd = load_file(str(BUNDLED))
    save_file({k[len("first_stage_model."):]: v.contiguous() for k, v in sd.items()
               if k.startswith("first_stage_model.")}, str(root / "vae" / vae))
    ref, _, _ = env.model_store().load_checkpoint(ckpt)
    with env.model_store().using(ref) as (unet,):
        save_controlnet(root / "controlnet" / cn_name, build_tiny_controlnet(unet))
    hint = Image.new("RGB", (64, 64), "white")  # a scribble-like input: a black square outline and a diagonal
    draw = ImageDraw.Draw(hint)
    draw.rectangle((12, 12, 52, 52), outline="black", width=3)
    draw.line((0, 63, 63, 0), fill="black", width=3)
    hint.save(env.input_dir / image)

    wf = shrink(load(path, default_registry()))
    apply_id = next(nid for nid, n in wf.prompt.items() if n["class_type"] == "ControlNetApplyAdvanced")
    images, warnings = run(env, wf)
    # SaveImage (the generation) and PreviewImage (the Canny edges) are both outputs; SaveImage wrote one image
    assert len(images) == 1 and images[0].size == (64, 64) and not warnings
    off, _ = run(env, wf, [(apply_id, "strength", 0.0)])
    diff = (pixels(images[0]) - pixels(off[0])).abs().mean()
    print(f"controlnet_example: mean |strength 1 - strength 0| = {diff:.2f}/255")
    assert diff > 2.0, f"the ControlNet barely changed the image: mean |diff| {diff:.2f}/255"


def test_lora_template(world):
    env, root = world
    path = template("comfyui_workflow_templates_media_other", "lora")
    ui = json.loads(path.read_text())
    provide(root, "checkpoints", node_of(path, "CheckpointLoaderSimple")["widgets_values"][0], BUNDLED)
    loras = [n for n in ui["nodes"] if n["type"] == "LoraLoader"]
    assert loras
    for n in loras:  # the bypassed second LoRA too, so the file is a valid choice if a user enables it
        provide(root, "loras", n["widgets_values"][0], SHIPPED_LORA)
    wf = shrink(load(path, default_registry()))
    active = [nid for nid, n in wf.prompt.items() if n["class_type"] == "LoraLoader"]
    assert len(active) == sum(n.get("mode", 0) == 0 for n in loras)  # bypassed LoRA nodes are left out
    images, warnings = run(env, wf)
    assert len(images) == 1 and images[0].size == (64, 64) and not warnings
    base, _ = run(env, wf, [(nid, k, 0.0) for nid in active for k in ("strength_model", "strength_clip")])
    diff = (pixels(images[0]) - pixels(base[0])).abs().mean()
    print(f"lora: mean |lora - no lora| = {diff:.2f}/255, chroma {chroma(images[0]):.1f} vs {chroma(base[0]):.1f}")
    assert diff > 2.0, f"the LoRA barely changed the image: mean |diff| {diff:.2f}/255"
    # the shipped LoRA takes the colour out: the template's strength (0.75) must lower the chroma
    assert chroma(images[0]) < chroma(base[0])


def test_embedding_example(world):
    env, root = world
    path = template("comfyui_workflow_templates_media_other", "default")
    provide(root, "checkpoints", node_of(path, "CheckpointLoaderSimple")["widgets_values"][0], BUNDLED)
    ckpt = node_of(path, "CheckpointLoaderSimple")["widgets_values"][0]
    _, clip, _ = env.model_store().load_checkpoint(ckpt)
    with env.model_store().using(clip) as (tenc,):  # the token vectors of 'red square' as a 2-vector embedding
        ids = tenc.tokenizers[0](["red", "square"], add_special_tokens=False)["input_ids"]
        assert all(len(i) == 1 for i in ids)
        weight = tenc.encoders[0].embeddings.token_embedding.weight
        save_file({"emb_params": torch.stack([weight[i[0]] for i in ids]).detach().float().contiguous()},
                  str(root / "embeddings" / "redsquare.safetensors"))
    wf = shrink(load(path, default_registry()))
    encoders = [nid for nid, n in wf.prompt.items() if n["class_type"] == "CLIPTextEncode"]
    neg = next(nid for nid in encoders if wf.prompt[nid]["inputs"]["text"].startswith(("text,", "bad", "(worst"))
               or "watermark" in wf.prompt[nid]["inputs"]["text"])
    pos = next(nid for nid in encoders if nid != neg)
    base = [(pos, "text", "a blue circle"), (neg, "text", "")]
    images, warnings = run(env, wf, base[:1] + [(neg, "text", "embedding:redsquare, text, watermark")])
    assert len(images) == 1 and images[0].size == (64, 64)
    assert not warnings, [e.data for e in warnings]
    # applied: the embedding encodes like its words, so the picture is the one of the words, not of the bare name
    words, _ = run(env, wf, base[:1] + [(neg, "text", "red square, text, watermark")])
    plain, _ = run(env, wf, base[:1] + [(neg, "text", "redsquare, text, watermark")])
    print(f"embedding: max |embedding - words| = {(pixels(images[0]) - pixels(words[0])).abs().max():.1f}/255, "
          f"mean |embedding - bare name| = {(pixels(images[0]) - pixels(plain[0])).abs().mean():.2f}/255")
    assert torch.allclose(pixels(images[0]), pixels(words[0]), atol=2.0)
    assert (pixels(images[0]) - pixels(plain[0])).abs().mean() > 1.0
    # a missing embedding is a run-time warning event naming it
    _, warned = run(env, wf, base[:1] + [(neg, "text", "embedding:nothere, text")])
    assert len(warned) == 1 and "nothere" in warned[0].data["message"]


def test_embedding_example_workflow(tmp_path):
    """workflows/embedding_example.json: ComfyUI's classic embedding_example graph, on the checkout's own models,
    with the shipped embedding in the positive prompt: it draws large blue squares, and without it ('shape shape',
    the vectors it was trained from) it does not."""
    from engine.context import Env
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from training import scorer

    assert SHIPPED_EMBEDDING.is_file()
    wf_path = REPO / "workflows" / "embedding_example.json"
    prompt = json.loads(wf_path.read_text())
    assert sorted(n["class_type"] for n in prompt.values()) == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage"])
    pos = prompt["3"]["inputs"]["positive"][0]
    assert "embedding:loom-blue-square" in prompt[pos]["inputs"]["text"]
    models = REPO / "models"
    env = Env(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
              models_dir=models, folders=ModelFolders(models),
              model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
    wf = load(wf_path, default_registry())
    images, warnings = run(env, wf)
    assert len(images) == 4 and not warnings, [e.data for e in warnings]

    def blue_squares(imgs):
        found = [scorer.analyse(np.asarray(im), 1)["shapes"] for im in imgs]
        return sum(bool(f) and (f[0]["color"], f[0]["shape"]) == ("blue", "square") for f in found)
    plain, _ = run(env, wf, [(pos, "text", prompt[pos]["inputs"]["text"].replace("embedding:loom-blue-square",
                                                                                  "shape shape"))])
    got, without = blue_squares(images), blue_squares(plain)
    print(f"embedding_example: blue squares {got}/4 with the embedding, {without}/4 with 'shape shape'")
    assert got >= 3 and without <= 1
