"""ControlNets on the flow families (FLUX.1): the hook a ``FluxDenoiser`` calls inside its model call.

A ``FlowControl`` wraps one applied ControlNet chain (``nodes.controlnet.ControlApply``) and the sampling's model
sampling (for ``start_percent``/``end_percent`` in ComfyUI's sigma percentages). Called as
``control(den, kw, (H, W))`` with the transformer's keyword arguments for this call, it runs every active link's
``FluxControlNetModel`` on the same inputs plus the control latent and returns the summed
``controlnet_block_samples``/``controlnet_single_block_samples`` (x strength) for the transformer.

The control latent follows ComfyUI: the hint image is resized to the latent's pixel size (nearest-exact, centre
crop), encoded with the VAE given to the apply node, moved to model space ((z - shift) * scale), for AliMama's
inpainting ControlNets joined by the keep-mask (1 - mask; all ones without one) as one more channel, and packed into
2x2 patches like the latent. It is computed once per latent size and kept on the link.
"""
from __future__ import annotations

from typing import Any


class FlowControl:
    def __init__(self, link, ms, family: str):
        self.link = link
        self.ms = ms
        self.family = family

    def _active(self, link, sigma: float) -> bool:
        if link.start <= 0.0 and link.end >= 1.0:
            return True
        return self.ms.percent_to_sigma(link.end) <= sigma <= self.ms.percent_to_sigma(link.start)

    def __call__(self, den, kw: dict, hw) -> dict:
        import torch

        sigma = float(kw["timestep"].reshape(-1)[0])
        n = kw["hidden_states"].shape[0]
        blocks = singles = None
        for link in self.link.chain():
            if link.strength == 0.0 or not self._active(link, sigma):
                continue
            kind = link.net.meta.get("model", "controlnet")
            if kind != "flux_controlnet":
                raise ValueError(f"{self.family}: this ControlNet ({kind}, {link.net.meta.get('arch')}) is for SD "
                                 "UNets; the FLUX family takes FLUX ControlNets")
            cond = _control_latent(link, den, n, hw)
            with link.net.store.using(link.net) as (cn,):
                dt = next(cn.parameters()).dtype
                g = kw["guidance"]
                if cn.config.guidance_embeds and g is None:
                    g = torch.full((n,), 3.5, device=cond.device)
                with torch.no_grad():
                    d, s = cn(hidden_states=kw["hidden_states"].to(dt), controlnet_cond=cond.to(dt),
                              conditioning_scale=float(link.strength), timestep=kw["timestep"].to(dt),
                              guidance=g if cn.config.guidance_embeds else None,
                              pooled_projections=kw["pooled_projections"].to(dt),
                              encoder_hidden_states=kw["encoder_hidden_states"].to(dt), txt_ids=kw["txt_ids"],
                              img_ids=kw["img_ids"], return_dict=False)
            blocks = _add(blocks, d)
            singles = _add(singles, s)
        out = {}
        if blocks is not None:
            out["controlnet_block_samples"] = blocks
        if singles is not None:
            out["controlnet_single_block_samples"] = singles
        return out


def _add(acc, new):
    if new is None:
        return acc
    return list(new) if acc is None else [a + b for a, b in zip(acc, new)]


def _control_latent(link, den, n: int, hw) -> Any:
    """Packed control input (n, H/2*W/2, 4*(C + extra)) for latent size ``hw``, cached on the link."""
    import torch

    from modelstore.families.flux import pack

    from .latents import common_upscale
    from .vae import encode

    key = ("flow", n, tuple(hw), str(den.device), den.dtype)
    if link.feats is not None and link.feats[0] == key:
        return link.feats[1]
    if link.vae is None:
        raise ValueError("this ControlNet needs a VAE to encode its image: connect the vae input of the apply node")
    h, w = hw
    img = link.hint[..., :3].movedim(-1, 1).float()
    if img.shape[-2:] != (h * 8, w * 8):
        img = common_upscale(img, w * 8, h * 8, "nearest-exact", "center")
    z = encode(link.vae, img.movedim(1, -1))
    fmt = den.latent
    if z.shape[1] != fmt.channels:
        raise ValueError(f"the ControlNet's VAE gives {z.shape[1]}-channel latents; {den.family} takes {fmt.channels}")
    z = (z - fmt.shift) * fmt.scale
    if link.net.meta.get("concat_mask"):
        keep = link.mask if link.mask is not None else torch.ones(1, 1, h, w)
        keep = keep.reshape(-1, 1, *keep.shape[-2:]).float()
        if keep.shape[-2:] != (h, w):
            keep = common_upscale(keep, w, h, "nearest-exact", "center")
        if keep.shape[0] != z.shape[0]:
            keep = keep[:1].expand(z.shape[0], -1, -1, -1) if keep.shape[0] == 1 else \
                keep.repeat(-(-z.shape[0] // keep.shape[0]), 1, 1, 1)[:z.shape[0]]
        z = torch.cat([z, keep], 1)
    packed = pack(z)[0]
    if packed.shape[0] != n:
        packed = packed.repeat(-(-n // packed.shape[0]), 1, 1)[:n]
    packed = packed.to(den.device, den.dtype)
    link.feats = (key, packed)
    return packed
