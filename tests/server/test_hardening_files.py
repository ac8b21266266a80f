"""Issue 9, files: uploads racing for one name, file modes, PNG text limits, multipart limits while
streaming, deeply nested model headers and websocket frames. Each test failed on the code before its fix."""
from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import httpx
import websockets

from .conftest import IMAGE_WF, collect, done_for, run


def _wait_history(c, pid, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = c.get(f"/history/{pid}").json()
        if pid in h:
            return h[pid]
        time.sleep(0.05)
    raise TimeoutError(pid)


# -- 2, 13. uploads: one file per upload, even when racing; the same mode as outputs --------------------------
def _png_bytes(seed: int, text: dict | None = None, compressed: bool = False) -> bytes:
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        (info.add_itxt(k, v, zip=True) if compressed else info.add_text(k, v))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, seed // 256 % 256, 7)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_concurrent_uploads_of_one_name_each_keep_their_bytes(live):
    """Item 2: 40 concurrent uploads of "same.png" with different bytes: 40 names, each holding its own bytes."""
    datas = [_png_bytes(i) for i in range(40)]

    async def go():
        async with httpx.AsyncClient(base_url=live.url, timeout=60,
                                     limits=httpx.Limits(max_connections=40)) as c:
            return await asyncio.gather(*[c.post("/upload/image", files={"image": ("same.png", d, "image/png")})
                                          for d in datas])
    rs = run(go())
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    names = [r.json()["name"] for r in rs]
    assert len(set(names)) == 40
    for name, d in zip(names, datas):
        assert (live.config.input_dir / name).read_bytes() == d, name
    assert not [p for p in live.config.input_dir.iterdir() if p.name.startswith(".upload-")]  # no temp left


def test_uploads_get_the_mode_outputs_get(live):
    """Item 13: uploads were 0600 (mkstemp) while outputs are 0644 (the umask)."""
    with live.client() as c:
        r = c.post("/upload/image", files={"image": ("mode.png", _png_bytes(1))})
        assert r.status_code == 200
        pid = c.post("/prompt", json={"prompt": IMAGE_WF}).json()["prompt_id"]
        out = _wait_history(c, pid)["outputs"]["3"]["images"][0]["filename"]
        assert c.post("/api/userdata/m.json", content=b"{}").status_code == 200
    umask_mode = 0o666 & ~_umask_now()
    up = (live.config.input_dir / r.json()["name"]).stat().st_mode & 0o777
    saved = (live.config.output_dir / out).stat().st_mode & 0o777
    user = (live.config.user_dir / "default" / "m.json").stat().st_mode & 0o777
    assert up == saved == user == umask_mode, (oct(up), oct(saved), oct(user))


def _umask_now() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# -- 7. one size limit for workflow text, compressed or not ------------------------------------------------
def test_large_compressed_workflow_chunk_is_an_image(live):
    """Item 7: a 2 MB workflow in an iTXt (compressed) chunk was "not an image"; uncompressed it was fine."""
    wf = json.dumps({"nodes": [{"id": i, "type": "Note", "widgets_values": ["x" * 200]} for i in range(10_000)]})
    assert len(wf) > 2_000_000
    with live.client() as c:
        for compressed in (False, True):
            png = _png_bytes(3, {"workflow": wf}, compressed)
            r = c.post("/upload/image", files={"image": (f"wf-{compressed}.png", png)})
            assert r.status_code == 200, (compressed, r.text)
            assert c.get("/view", params={"filename": r.json()["name"], "type": "input", "preview": "jpeg"}) \
                .status_code == 200


# -- multipart through python-multipart, limits while streaming ----------------------------------------------
def test_multipart_limits_are_enforced_while_streaming(make_server):
    """Issue 10 item 10: the upload parser is python-multipart; oversize parts fail with 413, bad bodies 400."""
    srv = make_server(max_upload_bytes=100_000)
    with srv.client() as c:
        assert c.post("/upload/image", files={"image": ("a.png", _png_bytes(5))},
                      data={"subfolder": "sub", "overwrite": "true"}).json()["subfolder"] == "sub"

        def chunked(parts):  # a generator body: no Content-Length, so only the streaming limit can stop it
            def gen():
                yield from parts
            return c.post("/upload/image", content=gen(),
                          headers={"content-type": "multipart/form-data; boundary=XyZ"})

        head = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        r = chunked([head] + [b"\0" * 50_000] * 10)
        assert r.status_code == 413
        field = b'--XyZ\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n'
        r = chunked([field, b"a" * 70_000, b"\r\n--XyZ--\r\n"])
        assert r.status_code == 413 and "subfolder" in r.json()["error"]
        many = b"".join(b'--XyZ\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(40))
        assert chunked([many, b"--XyZ--\r\n"]).status_code == 413
        assert chunked([b"--XyZ\r\nnot a header line at all"]).status_code == 400
        assert c.post("/upload/image", content=b"x", headers={"content-type": "multipart/form-data"}).status_code == 400
        assert not list((srv.config.input_dir).glob("big*"))
        assert c.get("/prompt").status_code == 200


# -- 6. deep nesting in model headers and websocket frames -----------------------------------------------------
def test_deeply_nested_safetensors_header_is_not_a_500(live):
    """Item 6: /view_metadata on a header nested 100,000 deep answered 500 (RecursionError)."""
    d = live.config.models_dir / "loras"
    d.mkdir(parents=True, exist_ok=True)
    header = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (d / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with live.client() as c:
        r = c.get("/view_metadata/loras", params={"filename": "deep.safetensors"})
        assert r.status_code == 404 and "header" in r.json()["error"]


def test_deeply_nested_websocket_frame_is_ignored(live):
    """Item 6: a text frame of 30,000 nested arrays raised RecursionError in the hub's receive loop."""
    async def go():
        ws = await websockets.connect(live.ws_url + "?clientId=deep")
        await ws.recv()
        await ws.send("[" * 30_000 + "]" * 30_000)
        await ws.send(json.dumps({"type": "feature_flags", "data": {"x": 1}}))
        async with httpx.AsyncClient(base_url=live.url) as c:
            pid = (await c.post("/prompt", json={"prompt": IMAGE_WF, "client_id": "deep"})).json()["prompt_id"]
            msgs, _ = await collect(ws, done_for(pid))  # the socket still works
        assert any(m["type"] == "execution_success" for m in msgs)
        await ws.close()
    run(go())
