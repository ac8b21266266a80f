"""Hostile inputs: path confinement everywhere, Origin/Host rules, tokens, malformed and oversized bodies."""
from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
import websockets

from .conftest import IMAGE_WF, run


def _png(w=8, h=8, mode="RGBA", color=(10, 20, 30, 128)):
    from PIL import Image
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def secret(live):
    """A file outside every root, plus a symlink pointing at it from inside input/ and user/."""
    outside = live.config.base_dir.parent / f"secret-{os.getpid()}.txt"
    outside.write_text("TOP SECRET")
    (live.config.input_dir / "link.txt").symlink_to(outside)
    (live.config.input_dir / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    ud = live.config.user_dir / "default"
    ud.mkdir(parents=True, exist_ok=True)
    (ud / "evil.json").symlink_to(outside)
    yield outside
    outside.unlink(missing_ok=True)


HOSTILE_NAMES = ["../secret.txt", "..%2Fsecret.txt", "/etc/passwd", "..\\..\\secret.txt", "a/../../secret.txt",
                 "link.txt", "linkdir/" + "x", "\x00.png", "C:\\Windows\\win.ini", "....//....//etc/passwd"]


def test_view_confinement(live, secret):
    with live.client() as c:
        for name in HOSTILE_NAMES + [f"linkdir/{secret.name}"]:
            for type_ in ("input", "output", "temp"):
                r = c.get("/view", params={"filename": name, "type": type_})
                assert r.status_code in (400, 403, 404), (name, r.status_code)
                assert b"TOP SECRET" not in r.content
        for sub in ("..", "../..", "/etc", "linkdir", "a/../..", "%2e%2e", "..\\.."):
            r = c.get("/view", params={"filename": secret.name, "subfolder": sub, "type": "input"})
            assert r.status_code in (400, 403, 404), (sub, r.status_code)
            assert b"TOP SECRET" not in r.content
        assert c.get("/view", params={"filename": "x.png", "type": "../"}).status_code == 400
        assert c.get("/view").status_code == 400
        # raw encoded traversal in the URL itself
        r = c.get("/view?filename=..%2F..%2F" + secret.name + "&type=input")
        assert r.status_code in (400, 403, 404) and b"TOP SECRET" not in r.content
        # an html file is never served as html
        (live.config.output_dir / "x.html").write_text("<script>alert(1)</script>")
        r = c.get("/view", params={"filename": "x.html"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_upload_confinement_and_limits(live, secret):
    with live.client() as c:
        png = _png()
        r = c.post("/upload/image", files={"image": ("ok.png", png, "image/png")})
        assert r.status_code == 200 and r.json() == {"name": "ok.png", "subfolder": "", "type": "input"}
        # same content: same name; different content: renamed
        assert c.post("/upload/image", files={"image": ("ok.png", png)}).json()["name"] == "ok.png"
        assert c.post("/upload/image", files={"image": ("ok.png", _png(color=(1, 2, 3, 4)))}).json()["name"] == \
            "ok (1).png"
        for sub in ("..", "../x", "/tmp", "linkdir", "a/../../b"):
            r = c.post("/upload/image", files={"image": ("a.png", png)}, data={"subfolder": sub})
            assert r.status_code in (400, 403), sub
        # a hostile file name keeps only its last component, inside input/
        r = c.post("/upload/image", files={"image": ("../../evil.png", png)})
        assert r.status_code == 200 and r.json()["name"] == "evil.png"
        assert (live.config.input_dir / "evil.png").is_file()
        assert not (live.config.base_dir.parent / "evil.png").exists()
        for name in ("..", ".", ""):
            r = c.post("/upload/image", files={"image": (name, png)})
            assert r.status_code == 400, name
        # writing through a symlink that points outside is refused
        r = c.post("/upload/image", files={"image": ("link.txt", png)}, data={"overwrite": "true"})
        assert r.status_code in (400, 403)
        assert secret.read_text() == "TOP SECRET"
        assert c.post("/upload/image", files={"image": ("a.png", png)}, data={"type": "models"}).status_code == 400
        assert c.post("/upload/image", files={"image": ("a.png", b"not an image")}).status_code == 400
        assert c.post("/upload/image", data={"type": "input"}).status_code == 400
        assert c.post("/upload/image", content=b"garbage", headers={"content-type": "text/plain"}).status_code == 400
        # decompression bomb: a small file declaring a huge canvas
        bomb = _png(20000, 20000, "1", 0)
        assert len(bomb) < 200_000
        r = c.post("/upload/image", files={"image": ("bomb.png", bomb)})
        assert r.status_code == 413
        assert not (live.config.input_dir / "bomb.png").exists()


def test_upload_mask_merges_alpha(live):
    with live.client() as c:
        from PIL import Image
        buf = io.BytesIO()
        from PIL.PngImagePlugin import PngInfo
        info = PngInfo()
        info.add_text("workflow", "{}")
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="PNG", pnginfo=info)
        assert c.post("/upload/image", files={"image": ("base.png", buf.getvalue())}).status_code == 200
        mask = _png(16, 16, "RGBA", (0, 0, 0, 77))
        r = c.post("/upload/mask", files={"image": ("clipspace-mask.png", mask)},
                   data={"original_ref": json.dumps({"filename": "base.png", "subfolder": "", "type": "input"})})
        assert r.status_code == 200, r.text
        im = Image.open(live.config.input_dir / r.json()["name"])
        assert im.mode == "RGBA" and im.getpixel((3, 3)) == (200, 100, 50, 77) and im.text.get("workflow") == "{}"
        r = c.post("/upload/mask", files={"image": ("m.png", mask)},
                   data={"original_ref": json.dumps({"filename": "../../etc/passwd"})})
        assert r.status_code in (400, 403, 404)
        r = c.post("/upload/mask", files={"image": ("m.png", mask)}, data={"original_ref": "{nope"})
        assert r.status_code == 400


def test_userdata_confinement_and_semantics(live, secret):
    with live.client() as c:
        assert c.get("/api/userdata", params={"dir": "workflows"}).status_code == 404
        r = c.post("/api/userdata/workflows%2Fa.json", content=b'{"a":1}')
        assert r.status_code == 200 and r.json() == "workflows/a.json"
        assert c.get("/api/userdata/workflows%2Fa.json").json() == {"a": 1}
        assert c.post("/api/userdata/workflows%2Fa.json?overwrite=false", content=b"{}").status_code == 409
        r = c.post("/api/userdata/workflows%2Fa.json?overwrite=true&full_info=true", content=b'{"a":2}')
        assert r.json()["path"] == "workflows/a.json" and r.json()["size"] == 7
        lst = c.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true",
                                             "split": "false"}).json()
        assert [x["path"] for x in lst] == ["a.json"]
        assert c.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json").json() == "workflows/b.json"
        assert c.get("/api/userdata/workflows%2Fa.json").status_code == 404
        assert c.delete("/api/userdata/workflows%2Fb.json").status_code == 204
        for enc in ("..%2F..%2Fsecret.txt", "%2E%2E%2Fx", "%2Fetc%2Fpasswd", "workflows%2F..%2F..%2Fx",
                    "evil.json", "..%5C..%5Cx", "%00"):
            for method in ("GET", "POST", "DELETE"):
                r = c.request(method, f"/api/userdata/{enc}", content=b"pwned")
                assert r.status_code in (400, 403, 404), (enc, method, r.status_code)
                assert b"TOP SECRET" not in r.content
        r = c.post("/api/userdata/x.json/move/..%2F..%2Fescaped.json")
        assert r.status_code in (403, 404)
        assert secret.read_text() == "TOP SECRET"
        assert c.get("/api/userdata", params={"dir": "../.."}).status_code == 403
        assert c.get("/api/userdata").status_code == 400
        # settings
        assert c.get("/api/settings").json() == {}
        assert c.post("/api/settings/Comfy.X", json={"v": 1}).status_code == 200
        assert c.post("/api/settings", json={"Comfy.Y": 2}).status_code == 200
        assert c.get("/api/settings").json() == {"Comfy.X": {"v": 1}, "Comfy.Y": 2}
        assert c.get("/api/settings/Comfy.X").json() == {"v": 1}
        assert c.get("/api/settings/nope").json() is None
        assert c.post("/api/settings", content=b"[1]").status_code == 400
        assert c.get("/api/users").json()["storage"] == "server"


def test_origin_and_host_rules(live):
    good = f"http://127.0.0.1:{live.port}"
    wf = {"prompt": IMAGE_WF}
    with live.client() as c:
        assert c.post("/prompt", json=wf, headers={"Origin": good}).status_code == 200
        assert c.post("/prompt", json=wf, headers={"Origin": f"http://localhost:{live.port}",
                                                   "Host": f"localhost:{live.port}"}).status_code == 200
        for origin in ("null", "http://evil.example", f"http://127.0.0.1:{live.port + 1}", "http://127.0.0.1",
                       f"https://127.0.0.1:{live.port}", "file://", "garbage", f"http://localhost:{live.port}",
                       f"http://127.0.0.1.evil.example:{live.port}"):
            for method, path in (("POST", "/prompt"), ("POST", "/api/interrupt"), ("POST", "/queue"),
                                 ("POST", "/upload/image"), ("POST", "/api/userdata/x.json"),
                                 ("DELETE", "/api/userdata/x.json"), ("GET", "/api/settings")):
                r = c.request(method, path, json={}, headers={"Origin": origin})
                assert r.status_code == 403, (origin, method, path, r.status_code)
        r = c.post("/prompt", json=wf, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        # DNS rebinding: a foreign Host name on a loopback-bound server
        assert c.get("/api/object_info", headers={"Host": f"evil.example:{live.port}"}).status_code == 403

    async def ws_checks():
        ws = await websockets.connect(live.ws_url, origin=good)
        assert json.loads(await ws.recv())["type"] == "status"
        await ws.close()
        for origin in ("null", "http://evil.example", f"http://127.0.0.1:{live.port + 1}"):
            with pytest.raises(websockets.exceptions.InvalidStatus) as ei:
                await websockets.connect(live.ws_url, origin=origin)
            assert ei.value.response.status_code == 403
    run(ws_checks())


def test_malformed_and_oversized_bodies_are_4xx(live):
    big = b"{" + b" " * (live.config.max_json_bytes + 10) + b"}"
    cases = [
        ("POST", "/prompt", b"{not json"), ("POST", "/prompt", b""), ("POST", "/prompt", b"[]"),
        ("POST", "/prompt", b"null"), ("POST", "/prompt", b'"str"'), ("POST", "/prompt", b'{"prompt": []}'),
        ("POST", "/prompt", b'{"prompt": {"1": 5}}'), ("POST", "/prompt", b'{"prompt": {"1": {"inputs": 3}}}'),
        ("POST", "/prompt", b'{"prompt": {"1": {"class_type": 7}}}'),
        ("POST", "/prompt", b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": [1, 0]}}}}'),
        ("POST", "/prompt", b'{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}}'),
        ("POST", "/prompt", json.dumps({"prompt": IMAGE_WF, "number": "x"}).encode()),
        ("POST", "/prompt", json.dumps({"prompt": IMAGE_WF, "number": 1e999}).encode().replace(b"inf", b"1e999")),
        ("POST", "/prompt", json.dumps({"prompt": IMAGE_WF, "prompt_id": 5}).encode()),
        ("POST", "/prompt", json.dumps({"prompt": IMAGE_WF, "partial_execution_targets": "3"}).encode()),
        ("POST", "/prompt", json.dumps({"prompt": IMAGE_WF, "client_id": ["a"]}).encode()),
        ("POST", "/prompt", b"[" * 100000 + b"]" * 100000),
        ("POST", "/prompt", json.dumps({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {
            "width": {"a": 1}, "height": [1, 2, 3], "batch_size": None, "color": 1e308}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 99]}}}}).encode()),
        ("POST", "/queue", b"{bad"), ("POST", "/queue", b"[1,2]"), ("POST", "/history", b"5"),
        ("POST", "/free", b"[]"), ("POST", "/api/settings", b"{"), ("POST", "/api/settings/x", b"nope"),
        ("GET", "/history?max_items=abc", b""), ("GET", "/api/jobs?limit=x", b""),
        ("POST", "/prompt", big), ("POST", "/upload/image", b"x" * 10),
    ]
    with live.client() as c:
        for method, path, body in cases:
            r = c.request(method, path, content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:60], r.status_code, r.text[:200])
        # chunked body without Content-Length, over the limit
        def gen():
            for _ in range(40):
                yield b" " * (1024 * 1024)
        r = c.post("/prompt", content=gen(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/object_info/NoSuchNode").json() == {}
        assert c.get("/api/models/not-a-folder").status_code == 404
        assert c.get("/view_metadata/checkpoints", params={"filename": "../../x.safetensors"}).status_code in (403, 404)
        assert c.get("/api/jobs/nope").status_code == 404
        assert c.get("/api/prompt/nope/events").status_code == 404
        # still healthy
        assert c.post("/prompt", json={"prompt": IMAGE_WF}).status_code == 200


def test_token_required_off_loopback(make_server, tmp_path):
    from service.config import Config
    with pytest.raises(SystemExit):
        Config(host="0.0.0.0", base_dir=tmp_path).check()
    srv = make_server(token="s3cret", base=tmp_path / "tok")
    with srv.client() as c:
        assert c.get("/api/object_info").status_code == 401
        assert c.get("/api/object_info", params={"token": "wrong"}).status_code == 401
        assert c.get("/api/object_info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/object_info", headers={"X-Loom-Token": "s3cret"}).status_code == 200
        assert c.get("/api/object_info", params={"token": "s3cret"}).status_code == 200
        r = c.get("/?token=s3cret", headers={"Accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303 and "loom_token=s3cret" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/api/settings", headers={"Cookie": "loom_token=s3cret"}).status_code == 200

    async def ws():
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await websockets.connect(srv.ws_url)
        w = await websockets.connect(srv.ws_url + "?token=s3cret")
        assert json.loads(await w.recv())["type"] == "status"
        await w.close()
    run(ws())


def test_image_inputs_are_confined(live, secret):
    """LoadImage names from a prompt cannot reach outside input/ (rejected at validation or at run)."""
    with live.client() as c:
        for name in ("../" + secret.name, "/etc/passwd", "link.txt", f"linkdir/{secret.name}", "..\\x.png",
                     secret.name + " [output]"):
            wf = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                  "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
            r = c.post("/prompt", json={"prompt": wf})
            assert r.status_code in (200, 400), (name, r.status_code)
            if r.status_code == 200:
                pid = r.json()["prompt_id"]
                import time
                t0 = time.time()
                while (h := c.get(f"/history/{pid}").json()) == {} and time.time() - t0 < 20:
                    time.sleep(0.05)
                assert h[pid]["status"]["status_str"] == "error", name
            assert b"TOP SECRET" not in r.content


def test_overlong_and_odd_paths_are_4xx(live):
    long = "a" * 300
    deep = "/".join(["b" * 200] * 30)
    cases = [("GET", f"/view?filename={long}.png"), ("GET", f"/view?filename=x.png&subfolder={deep}"),
             ("GET", f"/api/userdata/{long}"), ("POST", f"/api/userdata/{long}"), ("DELETE", f"/api/userdata/{long}"),
             ("GET", f"/api/userdata?dir={long}"), ("POST", f"/api/userdata/a.json/move/{long}"),
             ("GET", f"/view_metadata/checkpoints?filename={long}.safetensors"), ("GET", "/view?filename=%ff%fe"),
             ("GET", "/api/userdata/%ff%fe"), ("POST", "/api/userdata/%2e"), ("POST", "/api/userdata/"),
             ("GET", "/api/prompt/x/events?after=abc"), ("GET", "/internal/files/" + long),
             ("GET", "/api/experiment/models/" + long), ("POST", f"/api/userdata/{deep.replace('/', '%2F')}")]
    with live.client() as c:
        for m, p in cases:
            r = c.request(m, p, content=b'{"a": 1}')
            assert 400 <= r.status_code < 500, (m, p[:80], r.status_code)
        png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
        for data in ({"subfolder": deep}, {"subfolder": long}, {"type": long}):
            assert 400 <= c.post("/upload/image", files={"image": ("x.png", png)}, data=data).status_code < 500
        assert 400 <= c.post("/upload/image", files={"image": (long + ".png", png)}).status_code < 500
