"""Files: /view, /upload/image, /upload/mask, /view_metadata, /internal/files.

Every client-supplied name goes through ``engine.folders.confine`` (no absolute paths, no ``..``,
no symlinks out, no NUL). Uploads are limited in bytes (the body limit) and in pixels (images are
opened lazily and their declared size checked before any decode: decompression bombs fail).
"""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import re
import struct
import tempfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from engine.folders import UnsafePathError, confine

from .http import JSON, read_body, svc

UNSAFE_TYPES = ("text/html", "application/javascript", "text/javascript", "text/css", "application/xhtml+xml",
                "image/svg+xml", "text/xml", "application/xml")
ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


def _root(s, type_: str) -> Path:
    root = s.config.roots().get(type_)
    if root is None:
        raise HTTPException(400, f"unknown type {type_!r}; expected input, output or temp")
    return root


def _confined(root: Path, *parts: str) -> Path:
    rel = "/".join(p for p in parts if p)
    try:
        return confine(root, rel) if rel else Path(root).resolve()
    except UnsafePathError as e:
        raise HTTPException(403, str(e))


def _check_pixels(img, limit: int) -> None:
    w, h = img.size
    if w * h > limit:
        raise HTTPException(413, f"image has {w}x{h} pixels; the limit is {limit}")


async def view(request: Request) -> Response:
    s = svc(request)
    q = request.query_params
    filename = q.get("filename")
    if not filename:
        raise HTTPException(400, "filename is required")
    type_ = q.get("type") or "output"
    for suffix, t in ANNOTATIONS.items():
        if filename.endswith(suffix):
            filename, type_ = filename[: -len(suffix)], t
            break
    if filename.startswith(("/", "\\")) or ".." in filename or "\x00" in filename:
        raise HTTPException(400, "invalid filename")
    root = _root(s, type_)
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise HTTPException(400, "invalid filename")
    path = _confined(root, q.get("subfolder") or "", name)
    if not path.is_file():
        raise HTTPException(404, "file not found")
    preview, channel = q.get("preview"), (q.get("channel") or "rgba").lower()
    safe_name = re.sub(r'[^\w.\- ()\[\]]', "_", name)
    headers = {"Content-Disposition": f'filename="{safe_name}"', "X-Content-Type-Options": "nosniff",
               "Cache-Control": "max-age=86400"}
    if preview or channel in ("rgb", "a"):
        data, media = await run_in_threadpool(_reencode, path, preview, channel, s.config.max_image_pixels)
        return Response(data, media_type=media, headers=headers)
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media in UNSAFE_TYPES:
        media = "application/octet-stream"
    return FileResponse(path, media_type=media, headers=headers)


def _reencode(path: Path, preview: str | None, channel: str, limit: int) -> tuple[bytes, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError):
        raise HTTPException(400, "not an image")
    _check_pixels(img, limit)
    buf = io.BytesIO()
    if preview:
        fmt, _, qual = preview.partition(";")
        fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") else "webp"
        if "a" in channel and channel != "rgba":
            fmt = "webp"
        try:
            quality = max(1, min(100, int(qual))) if qual else 90
        except ValueError:
            quality = 90
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        img.save(buf, format=fmt.upper(), quality=quality)
        return buf.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        img.convert("RGB").save(buf, format="PNG")
    else:  # "a": the alpha channel as an image (opaque when there is none)
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        out = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        out.putalpha(alpha)
        out.save(buf, format="PNG")
    return buf.getvalue(), "image/png"


# -- multipart -----------------------------------------------------------------------------------
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Minimal, exact multipart/form-data parser: {field: (filename or None, bytes)}."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(400, "expected multipart/form-data")
    params = {k.lower(): (a or b) for k, a, b in _PARAM.findall(content_type)}
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise HTTPException(400, "multipart boundary missing")
    out: dict[str, tuple[str | None, bytes]] = {}
    delim = b"--" + boundary.encode("latin-1")
    parts = body.split(delim)
    if len(parts) < 3:
        raise HTTPException(400, "malformed multipart body")
    for p in parts[1:]:
        if p.startswith(b"--"):
            break
        if p.startswith(b"\r\n"):
            p = p[2:]
        head, sep, data = p.partition(b"\r\n\r\n")
        if not sep:
            raise HTTPException(400, "malformed multipart part")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-disposition":
                ps = {pk.lower(): (qa.replace('\\"', '"') if qa else ub) for pk, qa, ub in _PARAM.findall(v)}
                name, filename = ps.get("name"), ps.get("filename")
        if name is not None and name not in out:
            out[name] = (filename, data)
    return out


def _field(form, name: str, default: str = "") -> str:
    v = form.get(name)
    return v[1].decode("utf-8", "replace").strip() if v else default


def _safe_name(filename: str | None) -> str:
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or "\x00" in name or len(name) > 255:
        raise HTTPException(400, "invalid file name")
    return name


def _open_image(data: bytes, limit: int):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(400, "the upload is not an image")
    except Image.DecompressionBombError:
        raise HTTPException(413, "image too large")
    _check_pixels(img, limit)
    return img


def _place(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Pick the final name: reuse when identical content exists, else ``name (1).ext``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = confine(folder, name)
    if not overwrite and target.exists():
        digest = hashlib.sha256(data).digest()
        stem, ext = os.path.splitext(name)
        i = 0
        while target.exists():
            if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == digest:
                return target.name
            i += 1
            target = confine(folder, f"{stem} ({i}){ext}")
    atomic_write(target, data, prefix=".upload-")
    return target.name


def atomic_write(path: Path, data: bytes, prefix: str = ".tmp-") -> None:
    """Write ``data`` to ``path`` via a temp file (``prefix``) in the same folder and ``os.replace``, so readers
    never see a partial file; the folder is created if needed, the temp file removed on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def _upload(request: Request, mask: bool) -> Response:
    s = svc(request)
    body = await read_body(request, s.config.max_upload_bytes + 65536)
    form = parse_multipart(body, request.headers.get("content-type", ""))
    if "image" not in form or form["image"][0] is None:
        raise HTTPException(400, "no image file in the upload")
    filename, data = form["image"]
    name = _safe_name(filename)
    if len(data) > s.config.max_upload_bytes:
        raise HTTPException(413, "upload too large")
    type_ = _field(form, "type", "input") or "input"
    root = _root(s, type_)
    subfolder = _field(form, "subfolder")
    folder = _confined(root, subfolder)
    overwrite = _field(form, "overwrite").lower() in ("true", "1")
    limit = s.config.max_image_pixels
    if mask:
        try:
            ref = json.loads(_field(form, "original_ref") or "null")
        except ValueError:
            raise HTTPException(400, "original_ref must be JSON")
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            raise HTTPException(400, "original_ref needs a filename")
        ref_name = _safe_name(ref["filename"])
        ref_path = _confined(_root(s, str(ref.get("type") or "input")), str(ref.get("subfolder") or ""), ref_name)
        if not ref_path.is_file():
            raise HTTPException(404, "original image not found")
        data = await run_in_threadpool(_merge_mask, ref_path, data, limit)
    else:
        def verify():
            img = _open_image(data, limit)
            try:
                img.verify()
            except Exception:
                raise HTTPException(400, "the upload is not a valid image")
        await run_in_threadpool(verify)
    try:
        final = await run_in_threadpool(_place, folder, name, data, overwrite)
    except UnsafePathError as e:
        raise HTTPException(403, str(e))
    return JSON({"name": final, "subfolder": subfolder, "type": type_})


def _merge_mask(ref_path: Path, data: bytes, limit: int) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    up = _open_image(data, limit)
    try:
        original = Image.open(ref_path)
    except Exception:
        raise HTTPException(400, "original is not an image")
    _check_pixels(original, limit)
    info = PngInfo()
    for k, v in (getattr(original, "text", None) or {}).items():
        info.add_text(k, v)
    rgba = original.convert("RGBA")
    alpha = up.convert("RGBA").getchannel("A")
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size, Image.LANCZOS)
    rgba.putalpha(alpha)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


async def upload_image(request: Request) -> Response:
    return await _upload(request, False)


async def upload_mask(request: Request) -> Response:
    return await _upload(request, True)


async def view_metadata(request: Request) -> Response:
    from engine.folders import FOLDER_KINDS, ModelFolders, ModelNotFoundError

    s = svc(request)
    folder = request.path_params["folder"]
    filename = request.query_params.get("filename") or ""
    if folder not in FOLDER_KINDS:
        raise HTTPException(404, "unknown model folder")
    if not filename.lower().endswith(".safetensors"):
        raise HTTPException(404, "only .safetensors files carry metadata")
    try:
        path = ModelFolders(s.config.models_dir).resolve(folder, filename)
    except UnsafePathError as e:
        raise HTTPException(403, str(e))
    except ModelNotFoundError:
        raise HTTPException(404, "model not found")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 1024 * 1024:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        raise HTTPException(404, "unreadable safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not meta:
        raise HTTPException(404, "no metadata")
    return JSON(meta)


async def internal_files(request: Request) -> Response:
    s = svc(request)
    root = s.config.roots().get(request.path_params["type"])
    if root is None:
        raise HTTPException(400, "unknown type")
    try:
        entries = [e for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")]
    except OSError:
        entries = []
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    return JSON([e.name for e in entries])


ROUTES = [
    ("/view", view, ["GET"]),
    ("/upload/image", upload_image, ["POST"]),
    ("/upload/mask", upload_mask, ["POST"]),
    ("/view_metadata/{folder}", view_metadata, ["GET"]),
]
INTERNAL = [("/files/{type}", internal_files, ["GET"])]
