"""Where and when a conditioning entry applies, read from its options (set by nodes/conditioning_ops.py and
ConditioningSetArea): the sampler's Denoiser calls these, so another sampler core can reuse them as they are.

- ``area``: (h, w, y, x) in latent pixels, or ("percentage", h, w, y, x) as fractions of the latent.
- ``mask`` (B,H,W) x ``mask_strength``: a per-pixel weight; ``set_area_to_bounds`` crops the model call to the
  mask's bounding box (at least 8 latent px, 8-px feather margin not added).
- ``start_percent``/``end_percent``: the part of the schedule where the entry is active, ComfyUI's percentages
  of the model's noise levels: percent p is timestep (1 - p) x (T - 1) of a T-step training schedule.

``entry_weight`` and ``RegionSum`` are ComfyUI's weighted averaging of the entries' predictions (every sampler core
uses them): each entry adds prediction x weight over its area and its weight to a per-pixel count; the result is
sum / count, 0 where no entry counted.
"""
from __future__ import annotations

FEATHER = 8  # latent pixels over which an area's inner edges fade in (ComfyUI's)



def resolve_area(opts: dict, h: int, w: int) -> tuple | None:
    """(ah, aw, ay, ax) latent pixels clipped to the (h, w) latent, or None for the whole latent."""
    area = opts.get("area")
    if area is not None and len(area) == 5 and area[0] == "percentage":
        _, ph, pw, py, px = area
        area = (round(ph * h), round(pw * w), round(py * h), round(px * w))
    mask = opts.get("mask")
    if opts.get("set_area_to_bounds") and mask is not None:
        m = _mask_at(mask, h, w)
        nz = (m[0, 0] > 0).nonzero()
        if len(nz):
            y0, x0 = int(nz[:, 0].min()), int(nz[:, 1].min())
            y1, x1 = int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1
            area = (max(8, y1 - y0), max(8, x1 - x0), y0, x0)
    if area is None:
        return None
    ah, aw, ay, ax = (int(v) for v in area)
    ay, ax = min(max(ay, 0), h - 1), min(max(ax, 0), w - 1)
    return max(1, min(ah, h - ay)), max(1, min(aw, w - ax)), ay, ax


def _mask_at(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    import torch.nn.functional as F

    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return m


def mask_weight(opts: dict, h: int, w: int, area: tuple | None, batch: int) -> torch.Tensor | None:
    """(B,1,ah,aw) weight from the entry's mask x mask_strength, cut to ``area``; None without a mask."""
    mask = opts.get("mask")
    if mask is None:
        return None
    m = _mask_at(mask, h, w) * float(opts.get("mask_strength", 1.0))
    if m.shape[0] != batch:
        m = m[:1].expand(batch, -1, -1, -1) if m.shape[0] == 1 else m.repeat(-(-batch // m.shape[0]), 1, 1, 1)[:batch]
    if area is not None:
        ah, aw, ay, ax = area
        m = m[:, :, ay:ay + ah, ax:ax + aw]
    return m


def percent_to_timestep(p: float, train_steps: int = 1000) -> float:
    return (1.0 - float(p)) * (train_steps - 1)


def active(start: float, end: float, t, train_steps: int = 1000) -> bool:
    """Whether an entry with range [start, end] (percent) applies at timestep ``t``."""
    if start <= 0.0 and end >= 1.0:
        return True
    tv = float(t.reshape(-1)[0]) if hasattr(t, "reshape") else float(t)  # the sampler passes one t per row
    return percent_to_timestep(end, train_steps) - 1e-4 <= tv <= percent_to_timestep(start, train_steps) + 1e-4


def entry_weight(area: tuple | None, strength: float, mask, h: int, w: int, device, dtype, memo: dict | None = None):
    """An entry's weight over its area, as ComfyUI computes it: ``mask`` (B,1,ah,aw, from ``mask_weight``) x
    strength when the entry has a mask (no feathering); else ``strength``, with the area's edges that are not on the
    latent border faded in linearly over 8 latent pixels: a (1,1,ah,aw) tensor, or the float itself for the whole
    latent. ``memo``: a dict kept across a sampler's steps, so a feathered area weight is built once, not per step
    (callers never write into the returned tensor)."""
    if mask is not None:
        return mask.to(device, dtype) * float(strength)
    if area is None:
        return float(strength)
    if memo is None:
        return _feathered(area, strength, h, w, device, dtype)
    key = (area, float(strength), h, w, device, dtype)
    if key not in memo:
        memo[key] = _feathered(area, strength, h, w, device, dtype)
    return memo[key]


def _feathered(area: tuple, strength: float, h: int, w: int, device, dtype):
    import torch

    ah, aw, ay, ax = area
    m = torch.full((1, 1, ah, aw), float(strength), device=device, dtype=dtype)
    for t in range(min(FEATHER, ah)):
        f = min(1.0, (t + 1) / FEATHER)
        if ay != 0:
            m[:, :, t:t + 1, :] *= f
        if ay + ah < h:
            m[:, :, ah - 1 - t:ah - t, :] *= f
    for t in range(min(FEATHER, aw)):
        f = min(1.0, (t + 1) / FEATHER)
        if ax != 0:
            m[:, :, :, t:t + 1] *= f
        if ax + aw < w:
            m[:, :, :, aw - 1 - t:aw - t] *= f
    return m


class RegionSum:
    """Per side (0 = uncond, 1 = cond, ...) weighted sums of predictions shaped like ``like`` (B,C,H,W) and their
    per-pixel weight counts. ``add`` an entry's prediction for its area; ``get`` the average (0 where nothing
    counted), or None for a side nothing was added to."""

    def __init__(self, like):
        self.like = like
        self.acc: dict = {}
        self.cnt: dict = {}

    def add(self, side: int, pred, area: tuple | None, weight) -> None:
        import torch

        if side not in self.acc:
            self.acc[side] = torch.zeros_like(self.like)
            self.cnt[side] = torch.zeros_like(self.like[:, :1])
        if area is None:
            self.acc[side] += pred * weight
            self.cnt[side] += weight
            return
        ah, aw, ay, ax = area
        self.acc[side][:, :, ay:ay + ah, ax:ax + aw] += pred * weight
        self.cnt[side][:, :, ay:ay + ah, ax:ax + aw] += weight

    def uncovered(self, side: int):
        """Where side ``side`` got no weight: a (B,1,H,W) bool tensor, None where every pixel got some, True where
        nothing was added for the side."""
        if side not in self.cnt:
            return True
        m = self.cnt[side] == 0
        return m if bool(m.any()) else None

    def get(self, side: int):
        import torch

        if side not in self.acc:
            return None
        c = self.cnt[side]
        return self.acc[side] / torch.where(c == 0, torch.ones_like(c), c)
