"""The procedural "shapes" world Loom's bundled model is trained on.

64x64 RGB images with one or two flat-coloured shapes on a flat background, plus captions in several phrasings.
Everything is generated from a seed; nothing is downloaded.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # render at 4x and box-downsample: anti-aliased edges

# Named colours. Chosen so every pair is > 100 apart in RGB distance (the scorer's mask threshold sits at half the
# smallest pairwise distance).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (20, 170, 50),
    "blue": (30, 70, 235),
    "yellow": (250, 230, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (130, 40, 180),
    "orange": (255, 130, 0),
}
COLORS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
# Shape centre per position (x, y), before jitter.
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (18.0, 32.0),
    "right": (46.0, 32.0),
    "top": (32.0, 18.0),
    "bottom": (32.0, 46.0),
    "center": (32.0, 32.0),
}
RADIUS = {"small": 9.0, "large": 16.0}  # half extent in pixels
JITTER = 2.0

POS_PHRASES = {
    "left": ["on the left", "at the left", "on the left side"],
    "right": ["on the right", "at the right", "on the right side"],
    "top": ["at the top", "on the top"],
    "bottom": ["at the bottom", "on the bottom"],
    "center": ["in the center", "in the middle", "at the center"],
}


@dataclass
class ShapeSpec:
    shape: str
    color: str
    size: str
    pos: str
    cx: float = 0.0
    cy: float = 0.0


@dataclass
class Scene:
    bg: str
    shapes: list[ShapeSpec] = field(default_factory=list)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_scene(rng: random.Random, two_shape_prob: float = 0.2) -> Scene:
    bg = rng.choice(COLORS)
    fg_colors = [c for c in COLORS if c != bg]
    if rng.random() < two_shape_prob:
        pair = rng.choice([("left", "right"), ("top", "bottom")])
        shapes = [ShapeSpec(rng.choice(SHAPES), rng.choice(fg_colors), "small", p) for p in pair]
    else:
        shapes = [ShapeSpec(rng.choice(SHAPES), rng.choice(fg_colors), rng.choice(SIZES), rng.choice(POSITIONS))]
    for s in shapes:
        ax, ay = ANCHORS[s.pos]
        s.cx = ax + rng.uniform(-JITTER, JITTER)
        s.cy = ay + rng.uniform(-JITTER, JITTER)
    return Scene(bg, shapes)


def _shape_polygon(s: ShapeSpec, k: float):
    r = RADIUS[s.size]
    cx, cy = s.cx * k, s.cy * k
    if s.shape == "circle":
        return ("ellipse", [cx - r * k, cy - r * k, cx + r * k, cy + r * k])
    if s.shape == "square":
        h = 0.9 * r * k
        return ("polygon", [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    if s.shape == "triangle":  # upright, bounding box 2r wide, 1.8r tall, centred
        return ("polygon", [(cx, cy - 0.9 * r * k), (cx + r * k, cy + 0.9 * r * k), (cx - r * k, cy + 0.9 * r * k)])
    raise ValueError(s.shape)


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a HxWx3 uint8 array."""
    k = SUPERSAMPLE
    im = Image.new("RGB", (SIZE * k, SIZE * k), PALETTE[scene.bg])
    d = ImageDraw.Draw(im)
    for s in scene.shapes:
        kind, geom = _shape_polygon(s, k)
        if kind == "ellipse":
            d.ellipse(geom, fill=PALETTE[s.color])
        else:
            d.polygon(geom, fill=PALETTE[s.color])
    im = im.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(im, dtype=np.uint8).copy()


def _one_shape_phrase(s: ShapeSpec, rng: random.Random, with_size: bool = True) -> str:
    words = ([s.size] if with_size else []) + [s.color, s.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption for a scene, in a randomly chosen phrasing. Always names every shape's colour, type and
    position and the background, except a 10% 'loose' phrasing that omits size and position (single shape)."""
    b = scene.bg
    if len(scene.shapes) == 1:
        s = scene.shapes[0]
        p = rng.choice(POS_PHRASES[s.pos])
        sz, c, t = s.size, s.color, s.shape
        art = _article(sz)
        templates = [
            f"{art} {sz} {c} {t} {p} on {_article(b)} {b} background",
            f"{b} background, {sz} {c} {t} {p}",
            f"{sz} {c} {t} {p}, {b} background",
            f"{art} {sz} {c} {t} on {_article(b)} {b} background, {p}",
            f"an image of {art} {sz} {c} {t} {p} on {b}",
            f"{c} {t}, {sz}, {p}, on {_article(b)} {b} background",
        ]
        if rng.random() < 0.1:
            return f"{_article(c)} {c} {t} on {_article(b)} {b} background"
        return rng.choice(templates)
    parts = [f"{_one_shape_phrase(s, rng, with_size=rng.random() < 0.5)} {rng.choice(POS_PHRASES[s.pos])}"
             for s in scene.shapes]
    if rng.random() < 0.5:
        parts = parts[::-1]
    both = " and ".join(parts)
    if rng.random() < 0.5:
        return f"{both} on {_article(b)} {b} background"
    return f"{b} background, {both}"


def eval_caption(scene: Scene, template: int = 0) -> str:
    """Deterministic, fully specified caption used by evaluators (single shape)."""
    s = scene.shapes[0]
    p = POS_PHRASES[s.pos][0]
    b = scene.bg
    if template == 0:
        return f"{_article(s.size)} {s.size} {s.color} {s.shape} {p} on {_article(b)} {b} background"
    return f"{b} background, {s.size} {s.color} {s.shape} {p}"


def make_dataset(n: int, seed: int, two_shape_prob: float = 0.2) -> tuple[np.ndarray, list[Scene]]:
    """n rendered images (N,64,64,3 uint8) and their scenes, fully determined by seed."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, two_shape_prob) for _ in range(n)]
    imgs = np.stack([render(sc) for sc in scenes]) if n else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return imgs, scenes


def eval_scenes(n: int, seed: int = 1234) -> list[Scene]:
    """A fixed, balanced list of single-shape scenes for evaluation (cycles through colours/positions/shapes)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        color = COLORS[i % len(COLORS)]
        bgs = [c for c in COLORS if c != color]
        bg = bgs[(i // len(COLORS)) % len(bgs)]
        s = ShapeSpec(SHAPES[i % 3], color, SIZES[(i // 3) % 2], POSITIONS[i % 5])
        s.cx, s.cy = ANCHORS[s.pos]
        out.append(Scene(bg, [s]))
    rng.shuffle(out)
    return out


def min_palette_distance() -> float:
    cols = np.array(list(PALETTE.values()), dtype=np.float64)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    return float(d[~np.eye(len(cols), dtype=bool)].min())


if __name__ == "__main__":
    print("min palette distance", min_palette_distance())
    r = random.Random(0)
    for _ in range(5):
        sc = sample_scene(r)
        print(caption(sc, r))
