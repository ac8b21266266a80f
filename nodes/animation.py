"""Animated image output (ComfyUI's names and semantics): a batch of images saved as one animated WEBP or PNG in
the output folder, one frame per image at ``fps``; the prompt and workflow go into the file's metadata."""
from __future__ import annotations

import json

from engine.node import Boolean, Combo, Float, Int, Node, Result, Socket, String

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _frames(images):
    from .image import tensor_to_pil

    return [tensor_to_pil(im) for im in images]


class _SaveAnimated(Node):
    category = "image/animation"
    python_module = "comfy_extras.nodes_images"
    output_node = True
    outputs = ()
    hidden = ("PROMPT", "EXTRA_PNGINFO")
    ext = ""

    def _target(self, ctx, images, filename_prefix):
        from .image import save_path

        folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix, images.shape[2],
                                                     images.shape[1])
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{stem}_{counter:05}_.{self.ext}"
        return folder / name, {"filename": name, "subfolder": subfolder, "type": "output"}


class SaveAnimatedWEBP(_SaveAnimated):
    """Saves the batch as an animated WEBP (lossless or at ``quality``; ``method`` trades speed for size)."""
    ext = "webp"
    inputs = (Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI"),
              Float("fps", 6.0, min=0.01, max=1000.0, step=0.01), Boolean("lossless", True),
              Int("quality", 80, min=0, max=100), Combo("method", list(WEBP_METHODS)))

    def run(self, ctx, images, filename_prefix, fps, lossless, quality, method, prompt=None, extra_pnginfo=None):
        from PIL import Image

        frames = _frames(images)
        path, info = self._target(ctx, images, filename_prefix)
        exif = Image.Exif()
        if prompt is not None:
            exif[0x0110] = "prompt:" + json.dumps(prompt)  # Model tag, as ComfyUI stores it
        for i, (k, v) in enumerate((extra_pnginfo or {}).items()):
            exif[0x010F - i] = f"{k}:" + json.dumps(v)  # Make tag downwards
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000.0 / fps), loop=0,
                       lossless=lossless, quality=quality, method=WEBP_METHODS[method], exif=exif)
        return Result(ui={"images": [info], "animated": (True,)})


class SaveAnimatedPNG(_SaveAnimated):
    """Saves the batch as an animated PNG (APNG) with zlib ``compress_level``."""
    ext = "png"
    inputs = (Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI"),
              Float("fps", 6.0, min=0.01, max=1000.0, step=0.01), Int("compress_level", 4, min=0, max=9))

    def run(self, ctx, images, filename_prefix, fps, compress_level, prompt=None, extra_pnginfo=None):
        from PIL.PngImagePlugin import PngInfo

        frames = _frames(images)
        path, info = self._target(ctx, images, filename_prefix)
        meta = PngInfo()
        if prompt is not None:
            meta.add_text("prompt", json.dumps(prompt))
        for k, v in (extra_pnginfo or {}).items():
            meta.add_text(str(k), json.dumps(v))
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000.0 / fps), loop=0,
                       compress_level=compress_level, pnginfo=meta)
        return Result(ui={"images": [info], "animated": (True,)})


NODES = [SaveAnimatedWEBP, SaveAnimatedPNG]
