"""Live models back to the original single-file layout, for the save nodes (CheckpointSave, ModelSave, VAESave).

A model loaded from a single file is written with that file's own key names and shapes: the loading converter is
run once on empty (meta) tensors named by the file's keys, which tells, for every module tensor, the file key it
came from (a reshaped view of it, or one chunk of it: OpenCLIP's fused q/k/v). Values come from the live module, so
LoRA and merge patches are saved; file tensors the module does not hold (a dropped last CLIP layer, position ids)
are copied from the file. Diffusers folders are not supported (they have no original layout to return to).
"""
from __future__ import annotations

from .tensorfile import CheckpointError


def _inverse(converted: dict, metas: dict) -> dict[str, tuple[str, int, int]]:
    """{module key: (file key, chunk index, chunk count)} from a converter's output on meta tensors."""
    by_id = {id(t): k for k, t in metas.items()}
    chunks: dict[str, list[str]] = {}
    out = {}
    for mk, t in converted.items():
        k = by_id.get(id(t))
        if k is None and getattr(t, "_base", None) is not None:
            k = by_id.get(id(t._base))
            if k is not None and t.numel() != t._base.numel():  # a chunk of a fused tensor
                chunks.setdefault(k, []).append(mk)
                continue
        if k is not None:
            out[mk] = (k, 0, 1)
    for k, mks in chunks.items():
        for i, mk in enumerate(mks):
            out[mk] = (k, i, len(mks))
    return out


def _metas(header, keys):
    import torch

    return {k: torch.empty(header.shapes[k], device="meta") for k in keys}


def _collect(live_sd: dict, inverse: dict, header, keys, src, sources) -> dict:
    """File key -> tensor (CPU) for ``keys``: from the live module where it holds the tensor, else from the file."""
    import torch

    parts: dict[str, list] = {}
    out = {}
    for mk, (fk, i, n) in inverse.items():
        v = live_sd.get(mk)
        if v is None:
            continue
        v = v.detach().to("cpu")
        if n == 1:
            out[fk] = v.reshape(header.shapes[fk]).contiguous()
        else:
            parts.setdefault(fk, [None] * n)[i] = v
    for fk, ps in parts.items():
        if all(p is not None for p in ps):
            out[fk] = torch.cat(ps, 0).reshape(header.shapes[fk]).contiguous()
    rest = [k for k in keys if k not in out]
    if rest:
        for k, v in sources.tensors(src, rest).items():
            out[k] = v.contiguous()
    return out


def export_unet(store, ref) -> dict:
    """``model.diffusion_model.*`` tensors of a MODEL ref loaded from a single-file checkpoint."""
    from .convert import convert_unet
    from .plan import component_keys

    src, plan = _checkpoint(store, ref)
    keys = component_keys(src.header, plan, "unet")
    metas = _metas(src.header, keys)
    inverse = _inverse(convert_unet(metas, plan.unet), metas)
    with store.using(ref) as (unet,):
        return _collect(unet.state_dict(), inverse, src.header, keys, src, store.loader.sources)


def export_vae(store, ref, prefix: str = "first_stage_model.") -> dict:
    """VAE tensors in the LDM layout under ``prefix`` (from a checkpoint's VAE or an LDM-layout VAE file)."""
    from .convert import convert_vae
    from .plan import component_keys, vae_file_plan

    src = store.loader.sources.current(ref.key.file)
    if src.header is None:
        raise CheckpointError(f"{src.path.name}: a diffusers folder has no single-file layout to save in")
    if ref.key.component == "vaefile":
        layout, config = vae_file_plan(src.header)
        if layout != "ldm":
            raise CheckpointError(f"{src.path.name}: saving a diffusers-layout VAE file is not supported")
        old = ""
        keys = [k for k in src.header.tensors if k.startswith(("encoder.", "decoder.", "quant_conv.",
                                                                "post_quant_conv."))]
    else:
        _, plan = _checkpoint(store, ref)
        config, old = plan.vae, plan.vae_prefix
        keys = component_keys(src.header, plan, "vae")
    metas = _metas(src.header, keys)
    inverse = _inverse(convert_vae(metas, config), metas)
    with store.using(ref) as (vae,):
        sd = _collect(vae.state_dict(), inverse, src.header, keys, src, store.loader.sources)
    return {prefix + k[len(old):]: v for k, v in sd.items()}


def export_clip(store, ref) -> dict:
    """Text-encoder tensors of a CLIP ref in its checkpoint's layout (HF or OpenCLIP, with the checkpoint's
    prefixes)."""
    from .convert import convert_clip, convert_openclip
    from .plan import component_keys

    src, plan = _checkpoint(store, ref)
    out = {}
    with store.using(ref) as (tenc,):
        for i, (tp, te) in enumerate(zip(plan.text_encoders, tenc.encoders)):
            keys = component_keys(src.header, plan, "clip", i)
            metas = _metas(src.header, keys)
            if tp.layout == "openclip":
                conv = convert_openclip(metas, tp.prefix, tp.config["num_hidden_layers"], tp.projection)
            else:
                conv = convert_clip(metas, tp.prefix)
            inverse = _inverse(conv, metas)
            live = {(k[len("text_model."):] if k.startswith("text_model.") else k): v
                    for k, v in te.state_dict().items()}
            sd = _collect(live, inverse, src.header, keys, src, store.loader.sources)
            proj = tp.prefix + "text_projection"
            if tp.layout == "openclip" and proj in src.header.tensors and "text_projection.weight" in live:
                sd[proj] = live["text_projection.weight"].detach().to("cpu").T.contiguous()
            out.update(sd)
    return out


def _checkpoint(store, ref):
    src = store.loader.sources.current(ref.key.file)
    if src.header is None:
        raise CheckpointError(f"{src.path.name}: a diffusers folder has no single-file layout to save in")
    try:
        _, fam, plan = store.loader.checkpoint(src.path)
    except CheckpointError:  # a diffusion-model-only file (UNETLoader): not a checkpoint at all
        plan = None
    if not hasattr(plan, "unet") or not hasattr(plan, "text_encoders"):
        raise CheckpointError(f"{src.path.name}: saving is supported for SD1/SD2/SDXL checkpoints")
    return src, plan


def modelspec(arch: str, title: str) -> dict:
    """The Stability AI model-spec metadata ComfyUI writes into saved checkpoints."""
    import datetime

    names = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": names.get(arch, arch),
            "modelspec.implementation": "sgm", "modelspec.title": title,
            "modelspec.date": datetime.date.today().isoformat()}
