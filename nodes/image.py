"""Model-free image nodes with ComfyUI's names and inputs: EmptyImage, LoadImage, LoadImageMask,
ImageInvert, ImageScale, ImageScaleBy, SaveImage, PreviewImage.

IMAGE is a float32 tensor (B, H, W, 3) in 0..1 on the CPU; MASK is (B, H, W), 1 = masked. Every
file path a client names goes through ``engine.folders.confine`` (no '..', no absolute paths, no
symlink escapes).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

from engine.budget import tensor_bytes
from engine.folders import UnsafePathError, confine
from engine.node import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Result, Socket, String

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")


# --- folders --------------------------------------------------------------------------------------

def _dir(env, kind: str) -> Path:
    return Path(getattr(env, f"{kind}_dir", None) or kind)


def input_images(env) -> list[str]:
    """Top-level image files in the input folder, sorted (LoadImage's options)."""
    d = _dir(env, "input")
    try:
        return sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return []


def input_files(env) -> list[str]:
    d = _dir(env, "input")
    try:
        return sorted(f.name for f in d.iterdir() if f.is_file())
    except OSError:
        return []


def annotated_path(env, name: str) -> Path:
    """Resolve ``name``, ``sub/name`` or ``name [output]`` (ComfyUI's annotated names) safely."""
    kind = "input"
    m = _ANNOTATION.match(name)
    if m:
        name, kind = m.group(1), m.group(2)
    return confine(_dir(env, kind), name)


def _check_file(env, image: str) -> dict | None:
    try:
        p = annotated_path(env, image)
    except UnsafePathError as e:
        return {"image": f"Invalid image path: {e}"}
    if not p.is_file():
        return {"image": f"Invalid image file: {image}"}
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- conversions ----------------------------------------------------------------------------------

def pil_to_tensor(img) -> torch.Tensor:
    """PIL image → (1, H, W, C) float32 in 0..1."""
    import numpy as np

    import torch

    arr = np.asarray(img).astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.copy())[None]


def tensor_to_pil(image: torch.Tensor):
    """(H, W, C) float tensor in 0..1 → 8-bit PIL image."""
    import numpy as np

    from PIL import Image

    arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def _open_frames(path: Path):
    import numpy as np

    import torch

    from PIL import Image, ImageOps, ImageSequence

    img = Image.open(path)
    frames, masks, size = [], [], None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        elif rgb.size != size:  # frames of another size are skipped, like ComfyUI
            continue
        frames.append(pil_to_tensor(rgb))
        if "A" in frame.getbands():
            a = np.asarray(frame.getchannel("A")).astype(np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(a.copy()))
        elif frame.mode == "P" and "transparency" in frame.info:
            a = np.asarray(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(a.copy()))
        else:
            masks.append(torch.zeros((64, 64), dtype=torch.float32))
        if img.format == "MPO":  # multi-picture JPEGs: only the first picture
            break
    return frames, masks


def upscale(image: torch.Tensor, method: str, width: int, height: int, crop: str = "disabled") -> torch.Tensor:
    """Resize a (B, H, W, C) image like ComfyUI's common_upscale (0 keeps the aspect ratio)."""
    import torch

    b, h, w, c = image.shape
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    x = image.movedim(-1, 1)
    if crop == "center":
        old_aspect, new_aspect = w / h, width / height
        x0 = y0 = 0
        if old_aspect > new_aspect:
            x0 = round((w - w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y0 = round((h - h * (old_aspect / new_aspect)) / 2)
        x = x[:, :, y0:h - y0, x0:w - x0]
    if method == "lanczos":
        from PIL import Image

        out = [pil_to_tensor(tensor_to_pil(img.movedim(0, -1)).resize((width, height), Image.Resampling.LANCZOS))
               for img in x]
        return torch.cat(out).to(image.dtype)
    return torch.nn.functional.interpolate(x, size=(height, width), mode=method).movedim(1, -1)


# --- nodes ----------------------------------------------------------------------------------------

class EmptyImage(Node):
    """A batch of images filled with one colour (0xRRGGBB)."""
    category = "image"
    inputs = (Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("batch_size", 1, min=1, max=4096), Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color"))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, width, height, batch_size, **_):
        return tensor_bytes(batch_size, height, width, 3)

    def run(self, ctx, width, height, batch_size, color):
        import torch

        rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
        return (rgb.expand(batch_size, height, width, 3).clone(),)


class LoadImage(Node):
    """Loads an image from the input folder. Outputs the RGB image and a mask = 1 - alpha (64×64
    zeros when the image has no alpha). Animated files load as a batch."""
    display_name = "Load Image"
    category = "image"
    inputs = (Combo("image", input_images, check_options=False, image_upload=True),)
    outputs = (Output("IMAGE"), Output("MASK"))

    @classmethod
    def check(cls, env, image):
        return _check_file(env, image)

    @classmethod
    def fingerprint(cls, env, image):
        return _sha256(annotated_path(env, image))

    def run(self, ctx, image):
        import torch

        frames, masks = _open_frames(annotated_path(ctx.env, image))
        if len(masks) > 1 and any(m.shape != masks[0].shape for m in masks):
            masks = [m if m.shape == frames[0].shape[1:3] else torch.zeros(frames[0].shape[1:3]) for m in masks]
        return (torch.cat(frames), torch.stack(masks))


class LoadImageMask(Node):
    """Loads one channel of an image from the input folder as a mask (alpha is inverted)."""
    display_name = "Load Image (as Mask)"
    category = "mask"
    inputs = (Combo("image", input_files, check_options=False, image_upload=True),
              Combo("channel", ["alpha", "red", "green", "blue"]))
    outputs = (Output("MASK"),)

    @classmethod
    def check(cls, env, image, channel=None):
        return _check_file(env, image)

    @classmethod
    def fingerprint(cls, env, image, channel=None):
        return _sha256(annotated_path(env, image))

    def run(self, ctx, image, channel):
        import numpy as np

        import torch

        from PIL import Image, ImageOps

        img = ImageOps.exif_transpose(Image.open(annotated_path(ctx.env, image)))
        if img.mode == "I":
            img = img.point(lambda v: v * (1 / 255))
        if img.getbands() != ("R", "G", "B", "A"):
            img = img.convert("RGBA") if img.mode in ("P", "LA", "RGBa", "La") or "A" in img.getbands() or (
                img.mode == "P" and "transparency" in img.info) else img.convert("RGB")
        c = channel[0].upper()
        if c in img.getbands():
            m = torch.from_numpy(np.asarray(img.getchannel(c)).astype(np.float32) / 255.0)
            if c == "A":
                m = 1.0 - m
        else:
            m = torch.zeros((64, 64), dtype=torch.float32)
        return (m[None],)


class ImageInvert(Node):
    """Inverts an image: every channel becomes 1 - value."""
    display_name = "Invert Image"
    category = "image"
    inputs = (Socket("image", "IMAGE"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image):
        return (1.0 - image,)


class ImageScale(Node):
    """Resizes an image to width × height (0 keeps the aspect ratio); crop=center crops to the new
    aspect ratio first."""
    display_name = "Upscale Image"
    category = "image/upscaling"
    inputs = (Socket("image", "IMAGE"), Combo("upscale_method", UPSCALE_METHODS),
              Int("width", 512, min=0, max=MAX_RESOLUTION, step=1), Int("height", 512, min=0, max=MAX_RESOLUTION, step=1),
              Combo("crop", ["disabled", "center"]))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, width, height, **_):
        b, h, w, c = image.shape
        return tensor_bytes(b, height or h, width or w, c)

    def run(self, ctx, image, upscale_method, width, height, crop):
        return (upscale(image, upscale_method, width, height, crop),)


class ImageScaleBy(Node):
    """Resizes an image by a factor."""
    display_name = "Upscale Image By"
    category = "image/upscaling"
    inputs = (Socket("image", "IMAGE"), Combo("upscale_method", UPSCALE_METHODS),
              Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, scale_by, **_):
        b, h, w, c = image.shape
        return tensor_bytes(b, round(h * scale_by), round(w * scale_by), c)

    def run(self, ctx, image, upscale_method, scale_by):
        h, w = image.shape[1:3]
        return (upscale(image, upscale_method, max(1, round(w * scale_by)), max(1, round(h * scale_by))),)


def save_path(root: Path, prefix: str, width: int, height: int) -> tuple[Path, str, str, int]:
    """ComfyUI's naming: (folder, file stem, subfolder, next counter) for ``<prefix>_<00001>_.png``.

    ``%width%``, ``%height%``, ``%year%`` ... ``%second%`` are substituted; a '/' in the prefix makes a
    subfolder (confined to ``root``); the counter is one more than the largest existing one."""
    t = time.localtime()
    for k, v in {"%width%": width, "%height%": height, "%year%": t.tm_year, "%month%": f"{t.tm_mon:02}",
                 "%day%": f"{t.tm_mday:02}", "%hour%": f"{t.tm_hour:02}", "%minute%": f"{t.tm_min:02}",
                 "%second%": f"{t.tm_sec:02}"}.items():
        prefix = prefix.replace(k, str(v))
    prefix = prefix.replace("\\", "/")
    subfolder, _, stem = prefix.rpartition("/")
    if not stem:
        raise UnsafePathError(f"filename_prefix {prefix!r} names no file")
    folder = confine(root, subfolder) if subfolder else Path(root).resolve()
    confine(root, prefix)  # the file itself must stay inside too
    counter = 1
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    n = len(stem)
    for f in names:
        if f[:n] == stem and f[n:n + 1] == "_":
            digits = f[n + 1:].split("_")[0]
            if digits.isdigit():
                counter = max(counter, int(digits) + 1)
    return folder, stem, subfolder, counter


class SaveImage(Node):
    """Saves the input images to your ComfyUI output directory."""
    display_name = "Save Image"
    category = "image"
    output_node = True
    inputs = (Socket("images", "IMAGE", tooltip="The images to save."),
              String("filename_prefix", "ComfyUI", tooltip="The prefix for the file to save. This may include "
                     "formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include "
                     "values from nodes."))
    hidden = ("PROMPT", "EXTRA_PNGINFO")
    folder_type = "output"
    compress_level = 4
    write_manifest = True

    def _prefix(self, filename_prefix: str) -> str:
        return filename_prefix

    def run(self, ctx, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        from PIL.PngImagePlugin import PngInfo

        root = _dir(ctx.env, self.folder_type)
        folder, stem, subfolder, counter = save_path(root, self._prefix(filename_prefix),
                                                     images.shape[2], images.shape[1])
        folder.mkdir(parents=True, exist_ok=True)
        meta = None
        if prompt is not None or extra_pnginfo:
            meta = PngInfo()
            if prompt is not None:
                meta.add_text("prompt", json.dumps(prompt))
            for k, v in (extra_pnginfo or {}).items():
                meta.add_text(str(k), json.dumps(v))
        results = []
        for i, image in enumerate(images):
            ctx.check_cancelled()
            pil = tensor_to_pil(image)
            while True:  # create, never overwrite: another worker may be saving with the same prefix right now
                name = f"{stem.replace('%batch_num%', str(i))}_{counter:05}_.png"
                counter += 1
                try:
                    with open(folder / name, "xb") as fh:
                        pil.save(fh, format="PNG", pnginfo=meta, compress_level=self.compress_level)
                    break
                except FileExistsError:
                    continue
            results.append({"filename": name, "subfolder": subfolder, "type": self.folder_type})
        if self.write_manifest and prompt is not None and results:
            # Reproducibility record beside the images: model hashes, node versions, seeds, versions.
            from .manifest import build_manifest

            manifest = {**build_manifest(prompt, ctx.env), "files": [r["filename"] for r in results]}
            (folder / (results[0]["filename"][:-len(".png")] + ".manifest.json")).write_text(
                json.dumps(manifest, indent=1, default=str))
        return Result(ui={"images": results})


class PreviewImage(SaveImage):
    """Saves the input images as temporary previews (the temp folder is for the editor, not for keeping)."""
    class_type = "PreviewImage"
    display_name = "Preview Image"
    inputs = (Socket("images", "IMAGE"),)
    folder_type = "temp"
    compress_level = 1
    write_manifest = False

    def _prefix(self, filename_prefix: str) -> str:
        return "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))


NODES = [EmptyImage, LoadImage, LoadImageMask, ImageInvert, ImageScale, ImageScaleBy, SaveImage, PreviewImage]
