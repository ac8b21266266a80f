"""ControlNet Union (xinsir's controlnet-union-sdxl-1.0 and promax; diffusers ``ControlNetUnionModel``): one
ControlNet for several control types, the type chosen with SetUnionControlNetType.

ComfyUI's type names map to the model's task indices in the order of the model card (0 openpose, 1 depth, 2 thick
lines: hed/pidi/scribble/ted, 3 thin lines: canny/lineart/anime_lineart/mlsd, 4 normal, 5 segment; promax adds
6 tile and 7 repaint), which is also the order of ComfyUI's list after 'auto'.

With a type, the model runs as diffusers defines it: a one-hot control-type embedding is added to the time
embedding and the hint features are fused with the latent's through the union transformer (the type's task
embedding, a per-channel offset). 'auto' (no type) is ComfyUI's: an all-zero control-type vector and the hint
features added as they are, as in an ordinary ControlNet - diffusers' forward with the fusion offset left out.
"""
from __future__ import annotations

UNION_TYPES = ["auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint"]


def is_union(cn) -> bool:
    return hasattr(cn.config, "num_control_type")


def run_union(cn, x, t, emb, hint, strength: float, added, union: int | None):
    """(down residuals, mid residual) of ``ControlNetUnionModel`` ``cn`` for control type index ``union`` (None =
    auto); ValueError for a type the model does not have."""
    import torch

    n_types = cn.config.num_control_type
    if union is not None and union >= n_types:
        raise ValueError(f"this ControlNet Union has {n_types} control types; '{UNION_TYPES[union + 1]}' is type "
                         f"{union} (promax files have tile and repaint)")
    ct = torch.zeros(x.shape[0], n_types, device=x.device, dtype=x.dtype)
    if union is not None:
        ct[:, union] = 1.0
    hook = None
    if union is None:  # auto: no task fusion offset (see the module docstring)
        hook = cn.spatial_ch_projs.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
    try:
        with torch.no_grad():
            return cn(x, t, encoder_hidden_states=emb, controlnet_cond=[hint], control_type=ct,
                      control_type_idx=[0 if union is None else union], conditioning_scale=float(strength),
                      added_cond_kwargs=added, return_dict=False)
    finally:
        if hook is not None:
            hook.remove()
