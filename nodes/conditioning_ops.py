"""Conditioning arithmetic and regions (ComfyUI's names and semantics): average, concat, mask, timestep range,
area in percent, area strength. CONDITIONING is a list of ``[cond (B,L,D), options]``; these nodes only set
options, which the sampler honours (nodes/cond_regions.py): ``mask``/``mask_strength``/``set_area_to_bounds``,
``start_percent``/``end_percent``, ``area`` = (h, w, y, x) in latent pixels or ("percentage", h, w, y, x)."""
from __future__ import annotations

import logging

from engine.node import Combo, Float, Node, Output, Socket

log = logging.getLogger(__name__)


def _with(cond: list, **values) -> list:
    return [[c, {**o, **values}] for c, o in cond]


def _fit_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """(B,L,D) cut or zero-padded to ``length`` tokens."""
    import torch

    if t.shape[1] > length:
        return t[:, :length]
    if t.shape[1] < length:
        return torch.cat([t, torch.zeros(t.shape[0], length - t.shape[1], t.shape[2], dtype=t.dtype)], 1)
    return t


class ConditioningAverage(Node):
    """conditioning_to x strength + conditioning_from x (1 - strength), token-wise (``from`` is cut or
    zero-padded to ``to``'s length; pooled outputs are averaged the same way). Only the first entry of
    conditioning_from is used."""
    display_name = "ConditioningAverage"
    category = "conditioning"
    inputs = (Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"),
              Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_to, conditioning_from, conditioning_to_strength):
        if not conditioning_from:
            return (conditioning_to,)
        if len(conditioning_from) > 1:
            log.warning("ConditioningAverage: conditioning_from has %d entries; only the first is used",
                        len(conditioning_from))
        c_from, o_from = conditioning_from[0]
        p_from = o_from.get("pooled_output")
        s = float(conditioning_to_strength)
        out = []
        for c_to, o_to in conditioning_to:
            f = _fit_tokens(c_from, c_to.shape[1])
            opts = dict(o_to)
            p_to = o_to.get("pooled_output")
            if p_to is not None and p_from is not None:
                opts["pooled_output"] = p_to * s + p_from * (1.0 - s)
            elif p_from is not None:
                opts["pooled_output"] = p_from
            out.append([c_to * s + f * (1.0 - s), opts])
        return (out,)


class ConditioningConcat(Node):
    """Appends the tokens of conditioning_from (its first entry) after each entry of conditioning_to, so the
    model attends to both prompts at once."""
    display_name = "Conditioning (Concat)"
    category = "conditioning"
    inputs = (Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_to, conditioning_from):
        import torch

        if not conditioning_from:
            return (conditioning_to,)
        if len(conditioning_from) > 1:
            log.warning("ConditioningConcat: conditioning_from has %d entries; only the first is used",
                        len(conditioning_from))
        c_from = conditioning_from[0][0]
        return ([[torch.cat([c, c_from.to(c.dtype)], 1), dict(o)] for c, o in conditioning_to],)


class ConditioningSetMask(Node):
    """Restricts a conditioning to a mask (1 = applies) with a strength; 'mask bounds' also crops the model call
    to the mask's bounding box (sharper detail in small regions)."""
    display_name = "Conditioning (Set Mask)"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("mask", "MASK"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01), Combo("set_cond_area", ["default", "mask bounds"]))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, mask, strength, set_cond_area):
        m = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
        return (_with(conditioning, mask=m, set_area_to_bounds=set_cond_area != "default",
                      mask_strength=float(strength)),)


class ConditioningSetTimestepRange(Node):
    """Applies the conditioning only between ``start`` and ``end`` of the sampling schedule (0 = first step,
    1 = last; measured in the model's noise levels like ComfyUI's percentages)."""
    display_name = "ConditioningSetTimestepRange"
    category = "advanced/conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Float("start", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end", 1.0, min=0.0, max=1.0, step=0.001))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, start, end):
        return (_with(conditioning, start_percent=float(start), end_percent=float(end)),)


class ConditioningSetAreaPercentage(Node):
    """Restricts a conditioning to a rectangle given as fractions of the image (width, height, x, y in 0..1)."""
    display_name = "Conditioning (Set Area with Percentage)"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"),
              Float("width", 1.0, min=0, max=1.0, step=0.01), Float("height", 1.0, min=0, max=1.0, step=0.01),
              Float("x", 0, min=0, max=1.0, step=0.01), Float("y", 0, min=0, max=1.0, step=0.01),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, width, height, x, y, strength):
        return (_with(conditioning, area=("percentage", float(height), float(width), float(y), float(x)),
                      strength=float(strength), set_area_to_bounds=False),)


class ConditioningSetAreaStrength(Node):
    """Sets the weight of a conditioning when several are averaged (areas, masks, combined prompts)."""
    display_name = "ConditioningSetAreaStrength"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Float("strength", 1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, strength):
        return (_with(conditioning, strength=float(strength)),)


NODES = [ConditioningAverage, ConditioningConcat, ConditioningSetMask, ConditioningSetTimestepRange,
         ConditioningSetAreaPercentage, ConditioningSetAreaStrength]
