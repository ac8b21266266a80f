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

from .http import JSON, svc

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

    _png_text_limit()
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


# -- multipart ---------------------------------------------------------------------------------------
MAX_PARTS = 16  # image, type, subfolder, overwrite, original_ref, and room for clients that send more
MAX_FIELD_BYTES = 64 * 1024  # a non-file field (subfolder, original_ref JSON)


async def read_multipart(request: Request, max_file_bytes: int) -> dict[str, tuple[str | None, bytes]]:
    """Stream a multipart/form-data body through python-multipart (the parser Starlette uses) with limits
    enforced while the bytes arrive: at most ``max_file_bytes`` per file part, MAX_FIELD_BYTES per other
    field, MAX_PARTS parts, and the whole body at most the file limit plus 64 KiB. Returns
    {field: (filename or None, bytes)}; the first part of a name wins. Faults are 400/413."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise HTTPException(400, "expected multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise HTTPException(400, "multipart boundary missing")
    out: dict[str, tuple[str | None, bytes]] = {}
    st = {"parts": 0, "field": b"", "value": b"", "headers": {}, "data": [], "size": 0, "limit": 0, "error": None}

    def fail(status: int, message: str) -> None:
        if st["error"] is None:
            st["error"] = (status, message)
        raise _Abort

    def on_part_begin():
        st["parts"] += 1
        if st["parts"] > MAX_PARTS:
            fail(413, f"more than {MAX_PARTS} parts")
        st["headers"], st["data"], st["size"] = {}, [], 0

    def on_header_field(data, start, end):
        st["field"] += data[start:end]

    def on_header_value(data, start, end):
        st["value"] += data[start:end]

    def on_header_end():
        st["headers"][st["field"].strip().lower()] = st["value"]
        st["field"], st["value"] = b"", b""
        if len(st["headers"]) > 16:
            fail(400, "too many part headers")

    def on_headers_finished():
        disp, opts = parse_options_header(st["headers"].get(b"content-disposition", b""))
        st["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        fn = opts.get(b"filename")
        st["filename"] = fn.decode("utf-8", "replace") if fn is not None else None
        st["limit"] = max_file_bytes if fn is not None else MAX_FIELD_BYTES

    def on_part_data(data, start, end):
        st["size"] += end - start
        if st["size"] > st["limit"]:
            fail(413, f"part {st['name']!r} larger than {st['limit']} bytes")
        st["data"].append(data[start:end])

    def on_part_end():
        if st["name"] and st["name"] not in out:
            out[st["name"]] = (st["filename"], b"".join(st["data"]))
        st["data"] = []

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished})
    total, cap = 0, max_file_bytes + 65536
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise HTTPException(413, f"body larger than {cap} bytes")
            parser.write(chunk)
        parser.finalize()
    except _Abort:
        raise HTTPException(*st["error"])
    except MultipartParseError as e:
        raise HTTPException(400, f"malformed multipart body: {str(e)[:200]}")
    if not out:
        raise HTTPException(400, "malformed multipart body: no parts")
    return out


class _Abort(Exception):
    """Raised from a parser callback to stop at a limit (the reason is kept beside it)."""


def _field(form, name: str, default: str = "") -> str:
    v = form.get(name)
    return v[1].decode("utf-8", "replace").strip() if v else default


def _safe_name(filename: str | None) -> str:
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or "\x00" in name or len(name) > 255:
        raise HTTPException(400, "invalid file name")
    return name


def _png_text_limit() -> None:
    """One limit for workflow text in PNGs, compressed or not. PIL caps a zTXt/iTXt chunk at 1 MiB
    decompressed but an uncompressed tEXt chunk only by its 64 MiB total, so a large workflow saved
    compressed was "not an image" while the same text uncompressed was fine. Raise the per-chunk cap to
    the total (engine.pnginfo.MAX_TEXT is the same 64 MiB); the total still bounds a zip bomb."""
    from PIL import PngImagePlugin

    if PngImagePlugin.MAX_TEXT_CHUNK < PngImagePlugin.MAX_TEXT_MEMORY:
        PngImagePlugin.MAX_TEXT_CHUNK = PngImagePlugin.MAX_TEXT_MEMORY


def _open_image(data: bytes, limit: int):
    from PIL import Image, UnidentifiedImageError

    _png_text_limit()

    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(400, "the upload is not an image")
    except Image.DecompressionBombError:
        raise HTTPException(413, "image too large")
    _check_pixels(img, limit)
    return img


def _place(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write ``data`` under ``name`` in ``folder`` and return the name used. Without ``overwrite`` an existing
    file keeps its bytes: identical content reuses its name, different content gets ``name (1).ext``,
    ``name (2).ext``... Choosing the name and creating the file is one atomic step (a hard link of the
    finished temp file, which fails when the name exists), so concurrent uploads of one name each get
    their own file, and a file is never visible half written."""
    folder.mkdir(parents=True, exist_ok=True)
    target = confine(folder, name)
    tmp = _temp_file(folder, data, ".upload-")
    try:
        if overwrite:
            os.replace(tmp, target)
            return target.name
        digest = None
        stem, ext = os.path.splitext(name)
        i = 0
        while True:
            try:
                _link_new(tmp, target, data)
                return target.name
            except FileExistsError:
                pass
            if digest is None:
                digest = hashlib.sha256(data).digest()
            try:
                if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == digest:
                    return target.name
            except OSError:
                pass
            i += 1
            target = confine(folder, f"{stem} ({i}){ext}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _link_new(tmp: str, target: Path, data: bytes) -> None:
    """Create ``target`` holding ``tmp``'s bytes; FileExistsError if the name is taken."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: exclusive create, then write
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_umask()  # what open() gives: uploads get the same mode as outputs (0644 usually)


def _temp_file(folder: Path, data: bytes, prefix: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix)  # mkstemp makes it 0600
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write(path: Path, data: bytes, prefix: str = ".tmp-") -> None:
    """Write ``data`` to ``path`` via a temp file (``prefix``) in the same folder and ``os.replace``, so readers
    never see a partial file; the folder is created if needed, the temp file removed on any failure. The
    file gets the ordinary mode for new files (as open() would make it), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path.parent, data, prefix)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def _upload(request: Request, mask: bool) -> Response:
    s = svc(request)
    form = await read_multipart(request, s.config.max_upload_bytes)
    if "image" not in form or form["image"][0] is None:
        raise HTTPException(400, "no image file in the upload")
    filename, data = form["image"]
    name = _safe_name(filename)
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
    except (OSError, ValueError, struct.error, RecursionError):  # RecursionError: a header nested 100,000 deep
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
