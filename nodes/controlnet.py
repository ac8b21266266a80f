"""ControlNet: loaders and apply nodes (ComfyUI's names and semantics) on diffusers' ``ControlNetModel``, and
T2I-Adapters (diffusers' ``T2IAdapter``) through the same loader and apply nodes, as ComfyUI does.

CONTROL_NET is a model-store ref (kind 'controlnet', modelstore/kinds/controlnet.py). Applying one attaches a
``ControlApply`` to every entry of the conditioning (option ``control``); applying another on top chains them (the
new one keeps the old as ``previous``). The sampler's Denoiser calls ``ControlApply.residuals`` inside its model
call: each active link of the chain runs its ControlNet on the call's noisy latent, timestep and text embedding with
its hint image, and the down/mid residuals (x strength) of all links are summed and added to the UNet's skips.
A T2I-Adapter link runs its adapter once on the hint and its features (x strength) are added inside the UNet's
down blocks (diffusers' ``down_intrablock_additional_residuals``), for cond and uncond alike.
``start_percent``/``end_percent`` gate a link by ComfyUI's schedule percentages (nodes/cond_regions.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.node import Combo, Float, Node, Output, Socket

from .cond_regions import active
from .controlnet_union import UNION_TYPES, is_union, run_union
from .loaders import model_list, store_of


_MERGED: dict = {}  # (controlnet key, base UNet key) -> merged difference ControlNet; one entry (see _module)


@dataclass(eq=False)
class ControlApply:
    """One applied ControlNet: ``net`` (CONTROL_NET ref), ``hint`` (B,H,W,3) image 0..1, ``strength``, active range
    in schedule percentages, and the link it was applied on top of (``previous``)."""
    net: Any
    hint: torch.Tensor
    strength: float
    start: float = 0.0
    end: float = 1.0
    previous: "ControlApply | None" = None
    vae: Any = None
    mask: Any = None  # keep-mask (B,H,W) 1 = keep, concatenated to the control latent (AliMama inpainting)
    feats: Any = field(default=None, repr=False)  # T2I-Adapter features: (key, [tensors]), see _features

    def chain(self):
        link = self
        while link is not None:
            yield link
            link = link.previous

    def residuals(self, x: torch.Tensor, t, emb: torch.Tensor, added: dict | None, area, latent_hw,
                  dtype) -> dict:
        """UNet keyword arguments for the model call on ``x`` (N,C,h,w; N = jobs x batch): ControlNets give
        ``down_block_additional_residuals``/``mid_block_additional_residual``, T2I-Adapters
        ``down_intrablock_additional_residuals`` (a fresh list: the UNet pops it); {} when no link is active at
        ``t``."""
        down, mid, intra = None, None, None
        for link in self.chain():
            if link.strength == 0.0 or not active(link.start, link.end, t):
                continue
            if link.net.meta.get("model") == "flux_controlnet":
                raise ValueError("a FLUX ControlNet cannot condition an SD UNet: use a ControlNet made for this model")
            if link.net.meta.get("model") == "t2i_adapter":
                f = [a * link.strength for a in link._features(x.shape[0], latent_hw, area, x.device, dtype)]
                intra = f if intra is None else [a + b for a, b in zip(intra, f)]
                continue
            d, m = link._run(x, t, emb, added, area, latent_hw, dtype)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        out = {}
        if down is not None:
            out.update(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        if intra is not None:
            out["down_intrablock_additional_residuals"] = intra
        return out

    def _hint(self, n: int, latent_hw, area, device, dtype, multiple: int = 8) -> torch.Tensor:
        """The hint as (n,3,H,W) at the latent's pixel size (rounded up to ``multiple``), cut to ``area``."""
        from .latents import common_upscale

        h, w = latent_hw
        H, W = -(-h * 8 // multiple) * multiple, -(-w * 8 // multiple) * multiple
        img = self.hint[..., :3].movedim(-1, 1).float()
        if img.shape[-2:] != (H, W):
            img = common_upscale(img, W, H, "nearest-exact", "center")
        if area is not None:
            ah, aw, ay, ax = area
            img = img[:, :, ay * 8:(ay + ah) * 8, ax * 8:(ax + aw) * 8]
        if img.shape[0] != n:
            img = img.repeat(-(-n // img.shape[0]), 1, 1, 1)[:n]
        return img.to(device, dtype)

    def _features(self, n: int, latent_hw, area, device, dtype) -> list:
        """A T2I-Adapter's features of the hint (unscaled), computed once per latent size/area/batch and kept on
        this link (one entry): the adapter does not depend on the timestep or the noisy latent. As ComfyUI does,
        the hint is resized to the latent's pixel size rounded up to the adapter's pixel-unshuffle factor, and a
        1-channel adapter gets the mean of the RGB channels."""
        import torch

        key = (n, tuple(latent_hw), area, str(device), dtype)
        cached = self.feats
        if cached is not None and cached[0] == key:
            return cached[1]
        with self.net.store.using(self.net) as (ad,):
            cdt = next(ad.parameters()).dtype
            b = self.hint.shape[0]
            img = self._hint(b, latent_hw, area, device, cdt, ad.downscale_factor)
            if ad.config.in_channels == 1:
                img = img.mean(1, keepdim=True)
            with torch.no_grad():
                feats = ad(img)
        feats = [f.to(dtype) for f in feats]
        if b != n:
            feats = [f.repeat(-(-n // b), 1, 1, 1)[:n] for f in feats]
        self.feats = (key, feats)
        return feats

    def _module(self, cn):
        base = self.net.option("diff_base")
        if base is None:
            return cn
        key = (self.net.key, base.key)
        if key not in _MERGED:
            from modelstore.controlnet import merge_difference

            with base.store.using(base) as (unet,):
                merged = merge_difference(cn, unet)
            _MERGED.clear()
            _MERGED[key] = merged
        return _MERGED[key]

    def _run(self, x, t, emb, added, area, latent_hw, dtype):
        import torch

        store = self.net.store
        with store.using(self.net) as (cn,):
            cn = self._module(cn)
            cdt = next(cn.parameters()).dtype
            hint = self._hint(x.shape[0], latent_hw, area, x.device, cdt)
            if is_union(cn):
                d, m = run_union(cn, x.to(cdt), t, emb.to(cdt), hint, self.strength, added,
                                 self.net.option("union_type"))
            else:
                with torch.no_grad():
                    d, m = cn(x.to(cdt), t, encoder_hidden_states=emb.to(cdt), controlnet_cond=hint,
                              conditioning_scale=float(self.strength), added_cond_kwargs=added, return_dict=False)
        return [r.to(dtype) for r in d], m.to(dtype)


def apply_control(conds: list, control: ControlApply, made: dict) -> list:
    """Each entry of ``conds`` with ``control`` chained onto its current one. ``made`` maps a previous chain to
    the new link, so entries that shared a chain (positive and negative) share the new one too."""
    out = []
    for c, opts in conds:
        prev = opts.get("control")
        link = made.get(id(prev))
        if link is None:
            link = made[id(prev)] = ControlApply(control.net, control.hint, control.strength, control.start,
                                                 control.end, prev, control.vae, control.mask)
        out.append([c, {**opts, "control": link}])
    return out


class ControlNetLoader(Node):
    """Loads a ControlNet from models/controlnet (.safetensors: the original single-file layout or diffusers')."""
    display_name = "Load ControlNet Model"
    category = "loaders"
    inputs = (Combo("control_net_name", model_list("controlnet")),)
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, control_net_name):
        return (store_of(ctx.env).load("controlnet", control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet; a "difference" ControlNet (stored relative to a base model) is made whole with the
    given model's UNet weights. An ordinary ControlNet loads as with Load ControlNet Model."""
    display_name = "Load ControlNet Model (diff)"
    category = "loaders"
    inputs = (Socket("model", "MODEL"), Combo("control_net_name", model_list("controlnet")))
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, model, control_net_name):
        ref = store_of(ctx.env).load("controlnet", control_net_name)
        if ref.meta.get("difference"):
            ref = ref.with_options(diff_base=model)
        return (ref,)


class ControlNetApply(Node):
    """Applies a ControlNet to one conditioning for the whole schedule (the old node: use Apply ControlNet,
    which conditions positive and negative together)."""
    display_name = "Apply ControlNet (OLD)"
    category = "conditioning/controlnet"
    deprecated = True
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        return (apply_control(conditioning, ControlApply(control_net, image, float(strength)), {}),)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning with a strength, between start_percent and
    end_percent of the schedule. The image is the control hint (an edge map, depth map, pose ...) and is resized
    to the latent's pixel size."""
    display_name = "Apply ControlNet"
    category = "conditioning/controlnet"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
              Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001), Socket("vae", "VAE", optional=True))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if strength == 0:
            return (positive, negative)
        c = ControlApply(control_net, image, float(strength), float(start_percent), float(end_percent), None, vae)
        made: dict = {}
        return (apply_control(positive, c, made), apply_control(negative, c, made))


class ControlNetInpaintingAliMamaApply(Node):
    """Applies an inpainting ControlNet (AliMama's FLUX.1 inpainting ControlNets) to the positive and negative
    conditioning: the image with the masked area blacked out is the control image, and the keep-mask (1 - mask)
    joins its latent as an extra channel. A ControlNet that takes no mask gets the image as it is, as with Apply
    ControlNet."""
    category = "conditioning/controlnet"
    python_module = "comfy_extras.nodes_controlnet"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("vae", "VAE"), Socket("image", "IMAGE"),
              Socket("mask", "MASK"), Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
              Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive, negative, control_net, vae, image, mask, strength, start_percent, end_percent):
        if strength == 0:
            return (positive, negative)
        keep = None
        if control_net.meta.get("concat_mask"):
            from .latents import common_upscale

            keep = 1.0 - mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
            apply = common_upscale(keep, image.shape[2], image.shape[1], "bilinear", "center").round()
            if apply.shape[0] != image.shape[0]:
                apply = apply.repeat(-(-image.shape[0] // apply.shape[0]), 1, 1, 1)[:image.shape[0]]
            image = image * apply.movedim(1, -1)
        c = ControlApply(control_net, image, float(strength), float(start_percent), float(end_percent), None, vae,
                         keep)
        made: dict = {}
        return (apply_control(positive, c, made), apply_control(negative, c, made))


class SetUnionControlNetType(Node):
    """Selects the control type of a ControlNet Union model (nodes/controlnet_union.py; 'auto': the hint is used
    without a type). Other ControlNets ignore it."""
    display_name = "SetUnionControlNetType"
    category = "conditioning/controlnet"
    python_module = "comfy_extras.nodes_controlnet"
    inputs = (Socket("control_net", "CONTROL_NET"), Combo("type", UNION_TYPES))
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, control_net, type):
        idx = UNION_TYPES.index(type) - 1
        return (control_net.with_options(union_type=None if idx < 0 else idx),)


NODES = [ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced, SetUnionControlNetType,
         ControlNetInpaintingAliMamaApply]
