"""The real sampler behind the server: a tiny random SD1 checkpoint (built at test time, no download),
step progress with latent previews, interrupt mid-sampling within one step, and a finished image."""
from __future__ import annotations

import json
import struct

import httpx
import pytest
import websockets

from .conftest import LiveServer, collect, done_for, run

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sd_server(tmp_path_factory):
    import torch

    from tests.tiny_sd import build_tiny_sd1, save_checkpoint

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("sd")
    (base / "models" / "checkpoints").mkdir(parents=True)
    save_checkpoint(base / "models" / "checkpoints" / "tiny-sd1.safetensors", *build_tiny_sd1())
    with LiveServer(base) as srv:
        yield srv


def _wf(steps: int, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sd"}},
    }


def test_sampling_progress_previews_and_interrupt_within_one_step(sd_server):
    async def go():
        ws = await websockets.connect(sd_server.ws_url + "?clientId=sd")
        await ws.recv()
        await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        await ws.recv()
        async with httpx.AsyncClient(base_url=sd_server.url, timeout=120) as c:
            r = await c.post("/prompt", json={"prompt": _wf(400, 1), "client_id": "sd",
                                              "extra_data": {"preview_method": "auto"}})
            assert r.status_code == 200, r.text
            pid = r.json()["prompt_id"]
            before, bins = await collect(ws, lambda m: m["type"] == "progress" and m["data"]["value"] >= 8, timeout=120)
            assert (await c.post("/interrupt", json={"prompt_id": pid})).status_code == 200
            ev = (await c.get(f"/prompt/{pid}/events")).json()["events"]
            at_cancel = max(e["data"]["value"] for e in ev if e["type"] == "progress")
            after, bins2 = await collect(ws, done_for(pid), timeout=60)
            final = max([m["data"]["value"] for m in before + after if m["type"] == "progress"])
            assert final - at_cancel <= 1, (at_cancel, final)
            intr = next(m for m in after if m["type"] == "execution_interrupted")["data"]
            assert intr["node_id"] == "5" and intr["node_type"] == "KSampler"
            frames = bins + bins2
            assert frames, "no latent preview reached the client"
            t, n = struct.unpack(">II", frames[0][:8])
            meta = json.loads(frames[0][8:8 + n])
            assert t == 4 and meta["node_id"] == "5" and frames[0][8 + n:8 + n + 2] == b"\xff\xd8"
            # a short run to the end: the image is served by /view
            pid = (await c.post("/prompt", json={"prompt": _wf(3, 2), "client_id": "sd"})).json()["prompt_id"]
            msgs, _ = await collect(ws, done_for(pid), timeout=120)
            assert [m["data"]["value"] for m in msgs if m["type"] == "progress"] == [1, 2, 3]
            img = next(m for m in msgs if m["type"] == "executed")["data"]["output"]["images"][0]
            r = await c.get("/view", params=img)
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
            h = (await c.get(f"/history/{pid}")).json()[pid]
            assert h["loom"]["nodes"]["1"]["status"] == "cached"  # the checkpoint loader stayed cached
        await ws.close()
    run(go())
