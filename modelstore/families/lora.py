"""LoRA for the transformer families (FLUX.1, SD3/3.5, Z-Image, and any family registered in ``registry``).

LoRA files in the wild name their targets in one of two layouts:
- the family's ORIGINAL single-file layout (the keys of the file UNETLoader reads, e.g. FLUX.1's fused
  ``double_blocks.0.img_attn.qkv``): ComfyUI's ``diffusion_model.<key>`` / ``model.diffusion_model.<key>`` / bare
  ``<key>``, and kohya's ``lora_unet_<key with '.' -> '_'>``;
- diffusers' module names (what ``FluxTransformer2DModel`` etc. call them, e.g. ``transformer_blocks.0.attn.to_q``):
  diffusers/PEFT ``transformer.<module>`` (``base_model.model.<module>`` from bare PEFT), and kohya-style
  ``lora_transformer_<module with '_'>`` (SimpleTuner, ai-toolkit).
Each tensor name ends in ``.lora_down.weight``/``.lora_up.weight``/``.alpha``, ``.lora_A.weight``/``.lora_B.weight``
or ``.lora.down.weight``/``.lora.up.weight``; the update is ``strength * (alpha / rank) * up @ down`` (alpha absent:
scale 1, diffusers' and ComfyUI's rule). Text-encoder keys (``lora_te*_``, ``text_encoder*.``) are left to the CLIP.

How an original-layout update reaches the diffusers module: the loader already converts the file to diffusers'
layout with ``convert_state`` (a family's own small function: renames, q/k/v splits of fused tensors, the
shift/scale swap of final norms). All of those move whole rows of dim 0, so running the SAME converter on a probe
state dict whose values are row codes (tensor id << 32 | row) tells, for every diffusers weight, which rows of which
file weight it holds (``Layout``). An update of a file weight (say fused qkv, (3d, d)) is then added row by row to
the diffusers weights holding those rows (to_q, to_k, to_v). No per-family LoRA table: a new family plugs in its
``convert_state`` and gets LoRA. Updates in diffusers names apply directly to that module's weight.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..lora import LoraError, _shallow_clone, lora_delta

log = logging.getLogger("loom.models")

SUFFIXES = ((".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_B.weight", "up"),
            (".lora_A.weight", "down"), (".lora.up.weight", "up"), (".lora.down.weight", "down"), (".alpha", "alpha"))
#: key prefix -> (space, separator): 'file' = original layout, 'diffusers' = diffusers module names, 'any' = both
MODEL_PREFIXES = (("model.diffusion_model.", "file", "."), ("diffusion_model.", "file", "."),
                  ("lora_unet_", "file", "_"), ("transformer.", "diffusers", "."),
                  ("base_model.model.", "diffusers", "."), ("lora_transformer_", "diffusers", "_"))
TE_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
               "text_encoder_3.", "text_encoders.")
_BITS = 32


@dataclass
class Layout:
    """Where each file weight's rows live in the diffusers module. ``file``: {file module name: weight shape};
    ``diffusers``: {diffusers module name: weight shape}; ``rows``: {file module name: [(diffusers weight key,
    dst rows, src rows)]} (LongTensors, dst in the diffusers weight, src in the file weight)."""
    file: dict
    diffusers: dict
    rows: dict

    def index(self, space: str, sep: str) -> dict:
        names = self.file if space == "file" else self.diffusers
        return {n.replace(".", sep): n for n in names}


def layout(family: str, config: dict, shapes: dict) -> Layout:
    """The Layout of a model of ``family`` with diffusers ``config`` read from a file of ``shapes`` (no prefix)."""
    from . import registry

    mod = registry.FAMILIES[family][0]
    if not hasattr(mod, "convert_state"):
        raise LoraError(f"LoRA on {family} models is not supported (its family module has no convert_state)")
    names = list(shapes)
    probe = {}
    for i, k in enumerate(names):
        s = shapes[k]
        probe[k] = (torch.tensor(i << _BITS) if not s else (i << _BITS) + torch.arange(s[0], dtype=torch.int64))
    conv = mod.convert_state(dict(config), probe)
    file = {k[:-len(".weight")]: tuple(shapes[k]) for k in names if k.endswith(".weight") and len(shapes[k]) >= 2}
    diff, rows = {}, {}
    for dk, codes in conv.items():
        if not dk.endswith(".weight") or codes.dim() != 1:
            continue
        ids, src = codes >> _BITS, codes & ((1 << _BITS) - 1)
        for i in ids.unique().tolist():
            fk = names[i] if 0 <= i < len(names) else None
            if fk is None or not fk.endswith(".weight") or len(shapes[fk]) < 2:
                continue
            dst = (ids == i).nonzero().flatten()
            rows.setdefault(fk[:-len(".weight")], []).append((dk, dst, src[dst]))
            diff[dk[:-len(".weight")]] = (codes.shape[0],) + tuple(shapes[fk][1:])
    return Layout(file, diff, rows)


def group(lora_state) -> tuple[dict, list[str]]:
    """({(prefix space, separator, target name): {'up','down','alpha'}}, other keys). Text-encoder keys are
    skipped (neither grouped nor returned)."""
    groups, other = {}, []
    for k in lora_state:
        if k.startswith(TE_PREFIXES):
            continue
        suffix = next(((s, r) for s, r in SUFFIXES if k.endswith(s)), None)
        if suffix is None:
            other.append(k)
            continue
        name = k[:-len(suffix[0])]
        space, sep = "any", "."
        for p, sp, se in MODEL_PREFIXES:
            if name.startswith(p):
                name, space, sep = name[len(p):], sp, se
                break
        groups.setdefault((space, sep, name), {})[suffix[1]] = lora_state[k]
    return groups, other


def resolve(groups: dict, lay: Layout) -> tuple[dict, list[str]]:
    """({('file'|'diffusers', module name): parts}, unmatched LoRA target names). A name is looked up in the
    layout its prefix implies first, then in the other one (trainers mix them up)."""
    idx: dict = {}
    targets, unmatched = {}, []
    for (space, sep, name), parts in groups.items():
        order = ("diffusers", "file") if space == "diffusers" else ("file", "diffusers")
        hit = None
        for sp in order:
            if (sp, sep) not in idx:
                idx[(sp, sep)] = lay.index(sp, sep)
            if name in idx[(sp, sep)]:
                hit = (sp, idx[(sp, sep)][name])
                break
        if hit is None or "up" not in parts or "down" not in parts:
            unmatched.append(name)
        else:
            targets[hit] = parts
    return targets, unmatched


def _delta(name: str, parts: dict, shape: tuple, fname: str) -> torch.Tensor:
    up, down = parts["up"], parts["down"]
    rows, cols = up.shape[0], down.flatten(1).shape[1]
    numel = 1
    for d in shape:
        numel *= d
    if rows * cols != numel or rows != shape[0]:
        raise LoraError(f"{fname}: LoRA {name}: update of {rows}x{cols} (up {tuple(up.shape)}, down "
                        f"{tuple(down.shape)}) does not fit the model weight {tuple(shape)}")
    return lora_delta(up, down, parts.get("alpha"), shape)


def deltas(lora_state, lay: Layout, fname: str = "LoRA", family: str = "") -> tuple[dict, list[str], int]:
    """({diffusers weight key: fp32 update at strength 1}, unmatched target names, targets applied). Raises
    ``LoraError`` naming the file when nothing in the file is for this model, or when an update's shape does not
    fit (naming the key and both shapes)."""
    groups, other = group(lora_state)
    targets, unmatched = resolve(groups, lay)
    _refuse_no_match(targets, groups, other, fname, family)
    out: dict = {}
    for (space, name), parts in targets.items():
        if space == "diffusers":
            d = _delta(name, parts, lay.diffusers[name], fname)
            key = name + ".weight"
            out[key] = d if key not in out else out[key] + d
            continue
        d = _delta(name, parts, lay.file[name], fname)
        for dk, dst, src in lay.rows.get(name, ()):
            full = out.get(dk)
            if full is None:
                full = out[dk] = torch.zeros((lay.diffusers[dk[:-len(".weight")]]), dtype=torch.float32)
            full[dst] += d[src]
    return out, unmatched + other, len(targets)


def model_layout(model) -> Layout:
    """The Layout of a built FlowDenoiser (cached on it; patched copies share it)."""
    lay = model.__dict__.get("_loom_lora_layout")
    if lay is None:
        shapes = getattr(model, "source_shapes", None)
        if shapes is None:
            raise LoraError(f"LoRA: this {model.family} model does not record its file layout")
        lay = layout(model.family, model.config, shapes)
        model.__dict__["_loom_lora_layout"] = lay
    return lay


def patch_model(model, lora_state, strength: float, fname: str = "LoRA"):
    """A patched copy of a FlowDenoiser: W' = W + strength * delta for every weight the LoRA reaches; the base is
    not mutated and unchanged tensors are shared (``_loom_own_bytes`` counts the new ones). Unmatched targets are
    logged and listed in ``_loom_lora_unmatched``."""
    lay = model_layout(model)
    upd, unmatched, applied = deltas(lora_state, lay, fname, model.family)
    patched = _shallow_clone(model)
    own = 0
    for key, d in upd.items():
        owner, _, pname = ("module." + key).rpartition(".")
        mod = patched.get_submodule(owner)
        w = mod._parameters[pname]
        if tuple(w.shape) != tuple(d.shape):
            raise LoraError(f"{fname}: LoRA update of {key} has shape {tuple(d.shape)}, the model weight "
                            f"{tuple(w.shape)}")
        new = (w.data.float() + strength * d.to(w.device)).to(w.dtype)
        mod._parameters[pname] = torch.nn.Parameter(new, requires_grad=False)
        own += new.numel() * new.element_size()
    if unmatched:
        log.warning("LoRA %s: %d keys not applied to the %s model, e.g. %s", fname, len(unmatched), model.family,
                    unmatched[:3])
    patched._loom_own_bytes = own
    patched._loom_lora_unmatched = unmatched
    patched._loom_lora_applied = applied
    return patched


def header_check(lay: Layout, family: str, lora_keys, fname: str) -> list[str]:
    """Header-only check of a LoRA's tensor names against a model's Layout (no weights read): raises
    ``LoraError`` when no target matches; returns warnings naming unmatched targets otherwise."""
    groups, other = group(dict.fromkeys(lora_keys))
    complete = {k: {"up": 1, "down": 1} for k in groups}
    targets, unmatched = resolve(complete, lay)
    _refuse_no_match(targets, groups, other, fname, family)
    miss = unmatched + other
    if not groups and not other:
        return [f"{fname}: no diffusion-model keys in this LoRA; the {family} model is unchanged"]
    if miss:
        return [f"{fname}: {len(miss)} LoRA targets match nothing in this {family} model and are not applied, e.g. "
                f"{', '.join(sorted(miss)[:4])}"]
    return []


def _refuse_no_match(targets, groups, other, fname: str, family: str) -> None:
    if not targets and (groups or other):
        keys = sorted(n for _, _, n in groups)[:4] or sorted(other)[:4]
        raise LoraError(f"{fname}: none of its {len(groups) + len(other)} LoRA targets match this {family} model's "
                        f"weights (e.g. {', '.join(keys)}): a LoRA for another model family?")
