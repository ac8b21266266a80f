"""Pixel-analysis scorer for the shapes world: reads background colour, shape colour, position, type and size
back out of a 64x64 RGB image. Used by the trainer's quick evals, by bench/quality.py and by the tests."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .world import ANCHORS, COLORS, PALETTE, Scene, min_palette_distance

_PAL = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)
MASK_THRESHOLD = 0.5 * min_palette_distance()
MIN_AREA = 20
# fill ratio (area / bounding-box area) of the ideal shapes: triangle 0.5, circle pi/4, square 1.0
_FILL = {"triangle": 0.5, "circle": 0.785, "square": 1.0}
SIZE_SPLIT = 24.0  # bounding-box extent (px) between small (~18) and large (~32)


def nearest_color(rgb) -> str:
    d = np.linalg.norm(_PAL - np.asarray(rgb, dtype=np.float32)[None], axis=1)
    return COLORS[int(d.argmin())]


def _classify_shape(fill: float) -> str:
    return min(_FILL, key=lambda k: abs(_FILL[k] - fill))


def shape_features(comp: np.ndarray) -> tuple[float, float]:
    """(top/bottom width ratio, corner fill) of a component mask. An upright triangle is narrow at the top
    (ratio ~0.25), a circle or square is not (~1); a square fills the corners of its bounding box (~1), a circle
    leaves them mostly empty. Both features survive soft / rounded edges better than the plain fill ratio."""
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = comp[y0:y1, x0:x1].astype(np.float32)
    h, w = box.shape
    widths = box.sum(1)
    top = widths[int(0.1 * h):max(int(0.1 * h) + 1, int(0.35 * h))].mean()
    bot = widths[int(0.65 * h):max(int(0.65 * h) + 1, int(0.9 * h))].mean()
    ratio = float(top / max(bot, 1e-6))
    ch, cw = max(1, round(0.2 * h)), max(1, round(0.2 * w))
    corners = [box[:ch, :cw], box[:ch, -cw:], box[-ch:, :cw], box[-ch:, -cw:]]
    corner_fill = float(np.mean([c.mean() for c in corners]))
    return ratio, corner_fill


TRI_RATIO = 0.7
SQUARE_CORNER = 0.4


def classify_shape(comp: np.ndarray) -> str:
    ratio, corner = shape_features(comp)
    if ratio < TRI_RATIO:
        return "triangle"
    return "square" if corner > SQUARE_CORNER else "circle"


def analyse(img: np.ndarray, n_shapes: int = 1) -> dict:
    """img: HxWx3 uint8. Returns {"bg": name, "shapes": [{"color","pos","shape","size","area"}...]} with up to
    n_shapes shapes, largest first (fewer if nothing stands out from the background)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, dtype=np.float32), 0, 255).astype(np.uint8)
    h, w, _ = img.shape
    f = img.astype(np.float32)
    ring = np.concatenate([f[:2].reshape(-1, 3), f[-2:].reshape(-1, 3), f[2:-2, :2].reshape(-1, 3),
                           f[2:-2, -2:].reshape(-1, 3)])
    bg_rgb = np.median(ring, axis=0)
    bg = nearest_color(bg_rgb)
    dist = np.linalg.norm(f - bg_rgb[None, None], axis=-1)
    mask = dist > MASK_THRESHOLD
    lab, n = ndimage.label(mask)
    shapes = []
    if n:
        areas = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
        order = np.argsort(-areas)
        for idx in order[:n_shapes]:
            if areas[idx] < MIN_AREA:
                break
            comp = lab == (idx + 1)
            core = ndimage.binary_erosion(comp)
            pix = f[core] if core.sum() >= 4 else f[comp]
            color = nearest_color(np.median(pix, axis=0))
            ys, xs = np.nonzero(comp)
            cy, cx = ys.mean(), xs.mean()
            # centroid of a triangle sits low in its box; use the box centre for position
            bx, by = (xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0
            pos = min(ANCHORS, key=lambda k: (ANCHORS[k][0] - bx) ** 2 + (ANCHORS[k][1] - by) ** 2)
            bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
            fill = float(comp.sum()) / float(bw * bh)
            shapes.append({
                "color": color, "pos": pos, "shape": classify_shape(comp),
                "size": "large" if max(bw, bh) > SIZE_SPLIT else "small",
                "area": int(comp.sum()), "fill": fill, "centroid": (float(cx), float(cy)),
            })
    return {"bg": bg, "shapes": shapes}


ATTRS = ("bg", "color", "pos", "shape", "size")


def score(img: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Per-attribute correctness of a single-shape image against the scene it was asked for."""
    a = analyse(img, 1)
    want = scene.shapes[0]
    got = a["shapes"][0] if a["shapes"] else None
    return {
        "bg": a["bg"] == scene.bg,
        "color": got is not None and got["color"] == want.color,
        "pos": got is not None and got["pos"] == want.pos,
        "shape": got is not None and got["shape"] == want.shape,
        "size": got is not None and got["size"] == want.size,
    }


def score_scene_multi(img: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Order-free check for one- or two-shape scenes: background plus, for each wanted shape, whether some found
    shape matches its colour+position (and type)."""
    a = analyse(img, len(scene.shapes))
    found = a["shapes"]
    res = {"bg": a["bg"] == scene.bg}
    res["color_pos"] = all(any(g["color"] == s.color and g["pos"] == s.pos for g in found) for s in scene.shapes)
    res["shape"] = all(any(g["shape"] == s.shape and g["pos"] == s.pos for g in found) for s in scene.shapes)
    return res


def accuracy(results: list[dict[str, bool]]) -> dict[str, float]:
    if not results:
        return {}
    keys = results[0].keys()
    out = {k: float(np.mean([r[k] for r in results])) for k in keys}
    out["all"] = float(np.mean([all(r.values()) for r in results]))
    return out
