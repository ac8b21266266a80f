"""CONDITIONING on the flow families (SD3, FLUX.1, Z-Image, Qwen-Image), evaluated as ComfyUI evaluates it for every
model: each entry is one model call per step, on the whole latent or on its area's crop, and the entries of a side
(0 = negative, 1 = positive, 2 = DualCFGGuider's cond2) are averaged per pixel with their weights in denoised (x0)
space (``nodes.cond_regions``: the same weighting as the SD sampler core).

- Timestep ranges (ConditioningSetTimestepRange): an entry takes part in a model call only while its sigma is within
  [percent_to_sigma(end_percent), percent_to_sigma(start_percent)] of the model's sampling. A side none of whose
  entries is active gets a zero x0 at that step, and every pixel no active entry of a side covers gets 0 too
  (ComfyUI's sum / count with an empty count).
- Areas (ConditioningSetArea, ...Percentage, ConditioningSetMask "mask bounds"): (h, w, y, x) in latent pixels
  (image pixels / 8, ComfyUI's rounding). The model runs on the crop as if it were the whole image. The flow
  transformers take whole 2x2 patches, so a crop of odd height or width is padded by one row/column wrapping around
  the crop (circular, as ComfyUI pads to the patch size) and the prediction cut back; the area is never moved or
  resized, so odd coordinates and sizes are honoured exactly.
- Masks (ConditioningSetMask): weight mask x strength, no feathering; an area without a mask fades its inner edges
  over 8 latent pixels; ConditioningSetAreaStrength's strength scales the entry's weight.
Entries that share an area, token shape and ControlNet chain run as one batched call (negative first, as before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cond_regions import RegionSum, entry_weight, mask_weight, resolve_area


@dataclass
class FlowEntry:
    side: int
    cond: dict            # the FlowDenoiser.velocity cond dict
    strength: float
    area: tuple | None    # (h, w, y, x) latent pixels, None = the whole latent
    mask: Any             # (B,1,ah,aw) weight (ConditioningSetMask) cut to the area, or None
    lo: float             # active while lo <= sigma <= hi
    hi: float
    always: bool          # no timestep range


def entry_cond(emb, opts: dict, family: str, batch: int, pooled_dim: int | None, controls: dict | None) -> dict:
    """The ``FlowDenoiser.velocity`` cond dict of one CONDITIONING entry. ``controls`` maps an applied ControlNet chain
    to its ``nodes.flow_control.FlowControl``; None: the caller has no ControlNet hook."""
    if opts.get("control") is not None and (family != "flux" or controls is None):
        raise ValueError(f"{family}: ControlNet is not supported for this family yet (remove the ControlNet "
                         "apply node)")
    c = {}
    if family == "zimage":
        if emb.shape[0] not in (1, batch):
            raise ValueError(f"conditioning batch {emb.shape[0]} does not match the latent batch {batch}")
        c["context"] = [emb[min(i, emb.shape[0] - 1)] for i in range(batch)]
    else:
        c["context"] = emb.expand(batch, -1, -1) if emb.shape[0] == 1 else emb
    pooled = opts.get("pooled_output")
    if family in ("sd3", "flux"):
        if pooled is None:
            raise ValueError(f"{family} conditioning has no pooled_output: encode the prompt with this family's "
                             "text encoders (DualCLIPLoader/TripleCLIPLoader)")
        c["pooled"] = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
        want = pooled_dim or c["pooled"].shape[-1]
        if c["pooled"].shape[-1] < want:  # SD3 without CLIP-G: its pooled half is zeros
            c["pooled"] = torch.nn.functional.pad(c["pooled"], (0, want - c["pooled"].shape[-1]))
    if opts.get("guidance") is not None:
        c["guidance"] = torch.full((batch,), float(opts["guidance"]))
    if opts.get("control") is not None:
        c["control"] = controls[id(opts["control"])]
    return c


def _batch_key(c: dict) -> tuple:
    ctx = c["context"]
    return ("ragged" if isinstance(ctx, list) else tuple(ctx.shape[1:]), tuple(sorted(c)), id(c.get("control")))


def _cat(cs: list[dict]) -> dict:
    if len(cs) == 1:
        return cs[0]
    out = {}
    for k, v in cs[0].items():
        if k == "control":
            out[k] = v
        else:
            out[k] = [t for c in cs for t in c[k]] if isinstance(v, list) else torch.cat([c[k] for c in cs], 0)
    return out


class FlowConds:
    """``conds(x, sigma) -> {side: x0}`` for a flow ``den`` (``FlowDenoiser``) and model sampling ``ms``; ``sides``
    maps side -> CONDITIONING list; ``x`` (B,C,H,W) model space, ``sigma`` (B,)."""

    def __init__(self, den, ms, sides: dict, batch: int, hw: tuple, controls: dict | None):
        self.den, self.ms = den, ms
        self.h, self.w = (int(v) for v in hw)
        self._weights: dict = {}  # feathered area weights, built once (cond_regions.entry_weight's memo)
        pdim = den.config.get("pooled_projection_dim")
        self.entries: list[FlowEntry] = []
        for side, conds in sides.items():
            if not conds:
                raise ValueError("conditioning is empty")
            for emb, opts in conds:
                self.entries.append(self._entry(side, entry_cond(emb, opts, den.family, batch, pdim, controls),
                                                opts, batch))
        self.sides = tuple(sides)

    def _entry(self, side, c, opts, batch) -> FlowEntry:
        strength = float(opts.get("strength", 1.0))
        area = resolve_area(opts, self.h, self.w)
        if area == (self.h, self.w, 0, 0):
            area = None  # the whole latent: no crop (a strength != 1 still weighs the entry)
        mask = mask_weight(opts, self.h, self.w, area, batch)
        start, end = float(opts.get("start_percent", 0.0)), float(opts.get("end_percent", 1.0))
        always = start <= 0.0 and end >= 1.0
        lo, hi = (0.0, float("inf")) if always else (self.ms.percent_to_sigma(end), self.ms.percent_to_sigma(start))
        return FlowEntry(side, c, strength, area, mask, lo, hi, always)

    def _velocity(self, x, sigma, c, area):
        H, W = x.shape[-2:]
        ph, pw = (H % 2, W % 2) if area is not None else (0, 0)
        if not (ph or pw):
            return self.den.velocity(x, sigma, c)
        xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="circular")
        return self.den.velocity(xp, sigma, c)[:, :, :H, :W]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> dict:
        s = float(sigma.reshape(-1)[0])
        groups: dict[tuple, list[FlowEntry]] = {}
        for e in self.entries:
            if e.always or e.lo <= s <= e.hi:
                groups.setdefault((e.area, _batch_key(e.cond)), []).append(e)
        acc = RegionSum(x)
        for (area, _), es in groups.items():
            n = len(es)
            xa = x if area is None else x[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
            xs = xa if n == 1 else torch.cat([xa] * n)
            sig = sigma if n == 1 else torch.cat([sigma] * n)
            x0 = self.ms.calculate_denoised(sig, self._velocity(xs, sig, _cat([e.cond for e in es]), area), xs)
            preds = x0.chunk(n) if n > 1 else (x0,)
            if len(groups) == 1 and area is None and all(e.mask is None for e in es) \
                    and sorted(e.side for e in es) == list(self.sides):  # the common case: one entry per side
                return {e.side: p for e, p in zip(es, preds)}
            for e, pred in zip(es, preds):
                acc.add(e.side, pred, e.area, entry_weight(e.area, e.strength, e.mask, self.h, self.w, x.device,
                                                           x.dtype, self._weights))
        out = {}
        for side in self.sides:
            got = acc.get(side)
            out[side] = torch.zeros_like(x) if got is None else got  # no entry active: ComfyUI's zero x0
        return out
