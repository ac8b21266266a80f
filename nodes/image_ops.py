"""Image transforms, batches and post-processing (ComfyUI's names and semantics): batch/crop/flip/rotate/stitch,
blend/blur/sharpen/quantize, noise, sizes, morphology, YUV, alpha split/join. IMAGE is (B,H,W,C) float 0..1,
MASK (B,H,W). Every node copies: inputs are shared, immutable values."""
from __future__ import annotations

import math

from engine.budget import tensor_bytes
from engine.node import MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output, Seed, Socket

from .image import upscale

ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


def _resize_to(img: torch.Tensor, h: int, w: int, method: str = "bilinear", crop: str = "center") -> torch.Tensor:
    if img.shape[1:3] == (h, w):
        return img
    return upscale(img, method, w, h, crop)


class ImageBatch(Node):
    """Joins two image batches; image2 is resized (bilinear, centre crop) to image1's size."""
    display_name = "Batch Images"
    category = "image"
    inputs = (Socket("image1", "IMAGE"), Socket("image2", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image1, image2):
        import torch

        image2 = _resize_to(image2, image1.shape[1], image1.shape[2])
        c = min(image1.shape[-1], image2.shape[-1])
        return (torch.cat([image1[..., :c], image2[..., :c]], 0),)


class ImageCrop(Node):
    """Crops width x height pixels at (x, y); the corner is clamped inside the image."""
    display_name = "Image Crop"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"),
              Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, width, height, x, y):
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :].clone(),)


class ImageFlip(Node):
    """Mirrors the image: 'x-axis: vertically' flips top/bottom, 'y-axis: horizontally' flips left/right."""
    display_name = "ImageFlip"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, flip_method):
        import torch

        return (torch.flip(image, dims=[1 if flip_method.startswith("x") else 2]),)


class ImageRotate(Node):
    """Rotates the image clockwise by 90, 180 or 270 degrees."""
    display_name = "ImageRotate"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Combo("rotation", ROTATIONS))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, rotation):
        import torch

        return (torch.rot90(image, k=ROTATIONS.index(rotation), dims=[2, 1]).contiguous(),)


_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0),
           "blue": (0.0, 0.0, 1.0)}


class ImageStitch(Node):
    """Stitches image2 to image1 in the specified direction.
    If image2 is not provided, returns image1 unchanged.
    Optional spacing can be added between images."""
    display_name = "Image Stitch"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image1", "IMAGE"), Combo("direction", ["right", "down", "left", "up"], "right"),
              Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
              Combo("spacing_color", list(_COLORS), "white"), Socket("image2", "IMAGE", optional=True))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image1, direction, match_image_size, spacing_width, image2=None, **_):
        if image2 is None:
            return 0
        (n1, h1, w1, c1), (n2, h2, w2, c2) = image1.shape, image2.shape
        horizontal = direction in ("right", "left")
        if match_image_size:  # image2 is scaled to image1's height (horizontal) or width (vertical)
            h2, w2 = (h1, max(1, round(w2 * h1 / h2))) if horizontal else (max(1, round(h2 * w1 / w2)), w1)
        h, w = (max(h1, h2), w1 + w2 + spacing_width) if horizontal else (h1 + h2 + spacing_width, max(w1, w2))
        return tensor_bytes(max(n1, n2), h, w, max(c1, c2))

    def run(self, ctx, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        import torch

        if image2 is None:
            return (image1,)
        a, b = image1, image2
        n = max(a.shape[0], b.shape[0])
        a = a if a.shape[0] == n else a[-1:].expand(n, -1, -1, -1) if a.shape[0] == 1 else torch.cat([a, a[-1:].expand(n - a.shape[0], -1, -1, -1)])
        b = b if b.shape[0] == n else b[-1:].expand(n, -1, -1, -1) if b.shape[0] == 1 else torch.cat([b, b[-1:].expand(n - b.shape[0], -1, -1, -1)])
        c = max(a.shape[-1], b.shape[-1])
        pad_c = lambda t: t if t.shape[-1] == c else torch.cat([t, torch.ones_like(t[..., :1]).expand(
            -1, -1, -1, c - t.shape[-1])], -1)
        a, b = pad_c(a), pad_c(b)
        horizontal = direction in ("right", "left")
        if match_image_size:  # scale image2 to image1's height (horizontal) or width (vertical), keeping its aspect
            if horizontal:
                h = a.shape[1]
                w = max(1, round(b.shape[2] * h / b.shape[1]))
            else:
                w = a.shape[2]
                h = max(1, round(b.shape[1] * w / b.shape[2]))
            b = upscale(b, "bilinear", w, h)
        else:  # pad the smaller one (centred) with black
            a, b = _pad_to_common(a, b, horizontal)
        parts = [a, b] if direction in ("right", "down") else [b, a]
        if spacing_width > 0:
            col = torch.tensor(_COLORS[spacing_color] + (1.0,) * (c - 3))[:c]
            if horizontal:
                sp = col.expand(n, a.shape[1], spacing_width, c)
            else:
                sp = col.expand(n, spacing_width, a.shape[2], c)
            parts = [parts[0], sp, parts[1]]
        return (torch.cat(parts, dim=2 if horizontal else 1).contiguous(),)


def _pad_to_common(a, b, horizontal):
    import torch.nn.functional as F

    axis = 1 if horizontal else 2
    size = max(a.shape[axis], b.shape[axis])

    def pad(t):
        d = size - t.shape[axis]
        if d == 0:
            return t
        lo, hi = d // 2, d - d // 2
        p = (0, 0, lo, hi, 0, 0) if axis == 2 else (0, 0, 0, 0, lo, hi)
        return F.pad(t, p)
    return pad(a), pad(b)


class RepeatImageBatch(Node):
    """Repeats the batch ``amount`` times."""
    display_name = "RepeatImageBatch"
    category = "image/batch"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Int("amount", 1, min=1, max=4096))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, amount, **_):
        return amount * image.numel() * image.element_size()

    def run(self, ctx, image, amount):
        return (image.repeat((amount, 1, 1, 1)),)


class ImageFromBatch(Node):
    """Takes ``length`` images starting at ``batch_index`` (clamped to the batch)."""
    display_name = "ImageFromBatch"
    category = "image/batch"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Int("batch_index", 0, min=0, max=4095), Int("length", 1, min=1, max=4096))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, batch_index, length):
        i = min(image.shape[0] - 1, batch_index)
        n = min(image.shape[0] - i, length)
        return (image[i:i + n].clone(),)


class GetImageSize(Node):
    """Returns width and height of the image, and passes it through unchanged."""
    display_name = "Get Image Size"
    category = "image"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"),)
    hidden = ("UNIQUE_ID",)
    outputs = (Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size"))

    def run(self, ctx, image, unique_id=None):
        return (int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


class ImageAddNoise(Node):
    """Adds Gaussian noise (seeded, CPU) times ``strength`` and clamps to 0..1."""
    display_name = "ImageAddNoise"
    category = "image"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Seed("seed"), Float("strength", 0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, seed, strength):
        import torch

        g = torch.Generator("cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        noise = torch.randn(image.shape, generator=g, dtype=torch.float32)
        return ((image + strength * noise).clamp(0.0, 1.0),)


class ResizeAndPadImage(Node):
    """Scales the image to fit inside target_width x target_height (aspect kept), then pads it centred with
    white or black to exactly that size."""
    display_name = "ResizeAndPadImage"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"),
              Int("target_width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("target_height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Combo("padding_color", ["white", "black"]),
              Combo("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"]))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, target_width, target_height, **_):
        return tensor_bytes(image.shape[0], target_height, target_width, image.shape[3])

    def run(self, ctx, image, target_width, target_height, padding_color, interpolation):
        import torch

        h, w = image.shape[1], image.shape[2]
        s = min(target_width / w, target_height / h)
        nw, nh = max(1, int(w * s)), max(1, int(h * s))
        img = upscale(image, interpolation, nw, nh)
        fill = 1.0 if padding_color == "white" else 0.0
        out = torch.full((image.shape[0], target_height, target_width, image.shape[3]), fill)
        y, x = (target_height - nh) // 2, (target_width - nw) // 2
        out[:, y:y + nh, x:x + nw] = img
        return (out,)


class ImageScaleToMaxDimension(Node):
    """Scales the image so that its larger side is ``largest_size`` pixels (aspect kept)."""
    display_name = "ImageScaleToMaxDimension"
    category = "image/upscaling"
    python_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"),
              Combo("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
              Int("largest_size", 512, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"),)

    @classmethod
    def estimate_bytes(cls, image, largest_size, **_):  # at most largest_size on both sides
        side = largest_size if largest_size > 0 else max(image.shape[1], image.shape[2])
        return tensor_bytes(image.shape[0], side, side, image.shape[3])

    def run(self, ctx, image, upscale_method, largest_size):
        h, w = image.shape[1], image.shape[2]
        if largest_size <= 0:
            return (image,)
        if h > w:
            nh, nw = largest_size, max(1, round(w * largest_size / h))
        else:
            nw, nh = largest_size, max(1, round(h * largest_size / w))
        return (upscale(image, upscale_method, nw, nh),)


# --------------------------------------------------------------------------------------- post-processing
def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian on a [-1, 1] grid (sigma is relative to the kernel radius), summing to 1."""
    import torch

    r = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(r, r, indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return g / g.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise 2-D filter of (B,H,W,C) with reflect padding."""
    import torch.nn.functional as F

    c = image.shape[-1]
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    k = kernel.to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, k, groups=c).movedim(1, -1)


class ImageBlur(Node):
    """Gaussian blur with a (2 x blur_radius + 1)-pixel kernel; sigma is relative to the radius."""
    display_name = "ImageBlur"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    inputs = (Socket("image", "IMAGE"), Int("blur_radius", 1, min=1, max=31, step=1),
              Float("sigma", 1.0, min=0.1, max=10.0, step=0.1))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, blur_radius, sigma):
        if blur_radius == 0:
            return (image,)
        return (_filter(image, gaussian_kernel(2 * blur_radius + 1, sigma), blur_radius),)


class ImageSharpen(Node):
    """Unsharp mask: the image minus alpha x 10 times its Gaussian blur, renormalised (the kernel sums to 1),
    clamped to 0..1."""
    display_name = "ImageSharpen"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    inputs = (Socket("image", "IMAGE"), Int("sharpen_radius", 1, min=1, max=31, step=1),
              Float("sigma", 1.0, min=0.1, max=10.0, step=0.01), Float("alpha", 1.0, min=0.0, max=5.0, step=0.01))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, sharpen_radius, sigma, alpha):
        if sharpen_radius == 0:
            return (image,)
        size = 2 * sharpen_radius + 1
        k = gaussian_kernel(size, sigma) * -(alpha * 10)
        k[sharpen_radius, sharpen_radius] += 1.0 - k.sum()
        return (_filter(image, k, sharpen_radius).clamp(0, 1),)


def _bayer(n: int) -> torch.Tensor:
    import torch

    m = torch.zeros((1, 1))
    while m.shape[0] < n:
        m = torch.cat([torch.cat([4 * m, 4 * m + 2], 1), torch.cat([4 * m + 3, 4 * m + 1], 1)], 0)
    return m / (n * n)


class ImageQuantize(Node):
    """Reduces the image to ``colors`` colours (PIL's median-cut palette), with no dithering, Floyd-Steinberg
    error diffusion or an ordered Bayer matrix (2/4/8/16)."""
    display_name = "ImageQuantize"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    inputs = (Socket("image", "IMAGE"), Int("colors", 256, min=1, max=256, step=1),
              Combo("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, colors, dither):
        import torch

        from PIL import Image

        out = []
        for im in image[..., :3]:
            pil = Image.fromarray((im.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
            pal = pil.quantize(colors=colors)  # the palette
            if dither.startswith("bayer"):
                n = int(dither.split("-")[1])
                th = _bayer(n).repeat(math.ceil(im.shape[0] / n), math.ceil(im.shape[1] / n))[:im.shape[0], :im.shape[1]]
                spread = 255.0 / max(1, round(colors ** (1 / 3)))  # ~ the palette's step per channel
                arr = ((im * 255) + (th.unsqueeze(-1) - 0.5) * spread).clamp(0, 255).round().to(torch.uint8).numpy()
                q = Image.fromarray(arr).quantize(palette=pal, dither=Image.Dither.NONE)
            else:
                d = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
                q = pil.quantize(palette=pal, dither=d)
            import numpy as np

            out.append(torch.from_numpy(np.array(q.convert("RGB"))).float() / 255.0)
        return (torch.stack(out),)


def _overlay(a, b):
    import torch

    return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))


def _soft_light(a, b):
    import torch

    return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a),
                       a + (2 * b - 1) * (torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a)) - a))


_BLEND = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: _overlay(a, b),
    "soft_light": lambda a, b: _soft_light(a, b),
    "difference": lambda a, b: a - b,
}


class ImageBlend(Node):
    """image1 x (1 - blend_factor) + mode(image1, image2) x blend_factor, clamped (image2 resized to image1).
    Modes: normal (image2), multiply, screen, overlay, soft_light, difference (image1 - image2)."""
    display_name = "ImageBlend"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    inputs = (Socket("image1", "IMAGE"), Socket("image2", "IMAGE"),
              Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01), Combo("blend_mode", list(_BLEND)))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image1, image2, blend_factor, blend_mode):
        image2 = _resize_to(image2, image1.shape[1], image1.shape[2], "bicubic")
        if image2.shape[0] != image1.shape[0] and image2.shape[0] == 1:
            image2 = image2.expand(image1.shape[0], -1, -1, -1)
        blended = _BLEND[blend_mode](image1, image2[..., :image1.shape[-1]])
        return ((image1 * (1 - blend_factor) + blended * blend_factor).clamp(0, 1),)


MORPH_OPS = ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    import torch.nn.functional as F

    lo, hi = (k - 1) // 2, k // 2
    return F.max_pool2d(F.pad(x, (lo, hi, lo, hi), value=float("-inf")), k, stride=1)


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return -_dilate(-x, k)


class Morphology(Node):
    """Grey-scale morphology with a square kernel_size x kernel_size element: erode (min), dilate (max), open,
    close, gradient (dilate - erode), top_hat (image - open), bottom_hat (close - image)."""
    display_name = "ImageMorphology"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_morphology"
    inputs = (Socket("image", "IMAGE"), Combo("operation", MORPH_OPS), Int("kernel_size", 3, min=3, max=999, step=1))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, operation, kernel_size):
        x, k = image.movedim(-1, 1), kernel_size
        ops = {"erode": lambda: _erode(x, k), "dilate": lambda: _dilate(x, k),
               "open": lambda: _dilate(_erode(x, k), k), "close": lambda: _erode(_dilate(x, k), k),
               "gradient": lambda: _dilate(x, k) - _erode(x, k),
               "top_hat": lambda: x - _dilate(_erode(x, k), k),
               "bottom_hat": lambda: _erode(_dilate(x, k), k) - x}
        return (ops[operation]().movedim(1, -1).contiguous(),)


class ImageRGBToYUV(Node):
    """Splits RGB into Y, U (Cb) and V (Cr) planes (BT.601, chroma centred on 0.5), each as a grey image."""
    display_name = "ImageRGBToYUV"
    category = "image/batch"
    python_module = "comfy_extras.nodes_morphology"
    inputs = (Socket("image", "IMAGE"),)
    outputs = (Output("IMAGE", "Y"), Output("IMAGE", "U"), Output("IMAGE", "V"))

    def run(self, ctx, image):
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        u = (b - y) * 0.564 + 0.5
        v = (r - y) * 0.713 + 0.5
        grey = lambda t: t.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
        return (grey(y), grey(u), grey(v))


class ImageYUVToRGB(Node):
    """Joins Y, U (Cb) and V (Cr) planes (first channel of each) back into RGB (BT.601)."""
    display_name = "ImageYUVToRGB"
    category = "image/batch"
    python_module = "comfy_extras.nodes_morphology"
    inputs = (Socket("Y", "IMAGE"), Socket("U", "IMAGE"), Socket("V", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, Y, U, V):
        import torch

        y, cb, cr = Y[..., 0], U[..., 0] - 0.5, V[..., 0] - 0.5
        r = y + 1.403 * cr
        g = y - 0.714 * cr - 0.344 * cb
        b = y + 1.773 * cb
        return (torch.stack([r, g, b], -1).clamp(0, 1),)


class SplitImageWithAlpha(Node):
    """RGBA -> RGB image and a MASK of 1 - alpha (ComfyUI's convention: 1 = transparent); without an alpha
    channel the mask is 0 (opaque)."""
    display_name = "Split Image with Alpha"
    category = "mask/compositing"
    python_module = "comfy_extras.nodes_compositing"
    inputs = (Socket("image", "IMAGE"),)
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, image):
        import torch

        rgb = image[..., :3].clone()
        mask = 1.0 - image[..., 3] if image.shape[-1] > 3 else torch.zeros(image.shape[:3])
        return (rgb, mask)


class JoinImageWithAlpha(Node):
    """RGB image + MASK -> RGBA with alpha = 1 - mask (the mask resized to the image)."""
    display_name = "Join Image with Alpha"
    category = "mask/compositing"
    python_module = "comfy_extras.nodes_compositing"
    inputs = (Socket("image", "IMAGE"), Socket("alpha", "MASK"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, alpha):
        import torch
        import torch.nn.functional as F

        m = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]).float()
        m = F.interpolate(m, size=image.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        if m.shape[0] != image.shape[0]:
            m = m[:1].expand(image.shape[0], -1, -1)
        return (torch.cat([image[..., :3], (1.0 - m).unsqueeze(-1)], -1),)


NODES = [ImageBatch, ImageCrop, ImageFlip, ImageRotate, ImageStitch, RepeatImageBatch, ImageFromBatch, GetImageSize,
         ImageAddNoise, ResizeAndPadImage, ImageScaleToMaxDimension, ImageBlur, ImageSharpen, ImageQuantize,
         ImageBlend, Morphology, ImageRGBToYUV, ImageYUVToRGB, SplitImageWithAlpha, JoinImageWithAlpha]
