"""LoRA files: loading, key parsing (kohya/A1111 and diffusers/peft names) and patched module copies."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .tensorfile import PICKLE_SUFFIXES, CheckpointError, PickleRefused, load_pickle_state_dict, load_tensors, read_header

log = logging.getLogger("loom.models")

_LORA_SUFFIXES = ((".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_B.weight", "up"),
                  (".lora_A.weight", "down"), (".lora.up.weight", "up"), (".lora.down.weight", "down"),
                  (".alpha", "alpha"))
_LORA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te1"),
                  ("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te1"))


class LoraState(dict):
    """A LoRA state dict that knows its file's name (``name``), for messages."""
    name = "LoRA"


def load_lora_file(path: str | Path, allow_pickle: bool = False) -> dict:
    """A LoRA state dict (safetensors, or pickle via ``torch.load(weights_only=True)`` if allowed), as a
    ``LoraState`` named after the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefused(f"{path.name}: pickle LoRA refused (construct ModelStore(allow_pickle=True))")
        state = load_pickle_state_dict(path)
    else:
        header = read_header(path)
        state = load_tensors(header, list(header.tensors))
    check_lora(state, path.name)
    out = LoraState(state)
    out.name = path.name
    return out


class LoraError(CheckpointError):
    """A LoRA file whose tensors cannot form a low-rank update."""


def check_lora(lora_state: dict, fname: str = "LoRA") -> None:
    """Refuse LoRA groups that cannot be applied, naming the file and the key: ``up``/``down`` that are not
    matrices (scalars, vectors), rank 0 (an empty ``down``), ranks that disagree, a non-scalar or
    non-finite ``alpha``."""
    for (comp, target), parts in parse_lora(lora_state).items():
        if comp == "?":
            continue
        where = f"{fname}: LoRA {comp} {target[:200]}"
        up, down, alpha = parts.get("up"), parts.get("down"), parts.get("alpha")
        for role, t in (("up", up), ("down", down)):
            if t is not None and (not hasattr(t, "dim") or t.dim() < 2):
                raise LoraError(f"{where}: {role} weight has shape {tuple(getattr(t, 'shape', ()))}, expected a "
                                "matrix (or a conv kernel)")
        if up is not None and down is not None:
            if down.shape[0] == 0:
                raise LoraError(f"{where}: rank 0 (down weight {tuple(down.shape)})")
            if up.shape[1] != down.shape[0]:
                raise LoraError(f"{where}: up {tuple(up.shape)} and down {tuple(down.shape)} disagree on the rank")
        if alpha is not None:
            if not hasattr(alpha, "numel") or alpha.numel() != 1 or not torch.isfinite(alpha.float()).all():
                raise LoraError(f"{where}: alpha must be one finite number, got shape "
                                f"{tuple(getattr(alpha, 'shape', ()))}")


def _norm(name: str) -> str:
    name = name.replace(".", "_")
    return name[len("text_model_"):] if name.startswith("text_model_") else name


def parse_lora(lora_state: dict) -> dict[tuple[str, str], dict]:
    """Group LoRA tensors: {(component 'unet'|'te1'|'te2', normalized target name): {'up','down','alpha'}}.
    Supports kohya/A1111 (``lora_unet_*``, ``lora_te[12]_*`` with lora_up/lora_down/alpha) and diffusers/peft
    (``unet.*``/``text_encoder[_2].*`` with lora_A/lora_B or lora.up/lora.down). Unknown keys -> ('?', key)."""
    groups: dict[tuple[str, str], dict] = {}
    for k, v in lora_state.items():
        suffix = next(((s, r) for s, r in _LORA_SUFFIXES if k.endswith(s)), None)
        prefix = next(((p, c) for p, c in _LORA_PREFIXES if k.startswith(p)), None)
        if suffix is None or prefix is None:
            groups.setdefault(("?", k), {})
            continue
        target = _norm(k[len(prefix[0]):-len(suffix[0])])
        groups.setdefault((prefix[1], target), {})[suffix[1]] = v
    return groups


def _component_of(module) -> str:
    name = type(module).__name__
    return "unet" if "UNet" in name else ("te2" if "WithProjection" in name else "te1")


def _shallow_clone(m: torch.nn.Module) -> torch.nn.Module:
    """A module tree sharing every tensor with ``m`` but with its own Parameter objects and dicts, so
    replacing (or ``.to()``-moving) a parameter in one never affects the other."""
    new = m.__class__.__new__(m.__class__)
    new.__dict__ = dict(m.__dict__)
    new._parameters = {k: (None if p is None else torch.nn.Parameter(p.data, requires_grad=False))
                       for k, p in m._parameters.items()}
    new._buffers = dict(m._buffers)
    new._modules = {k: (None if c is None else _shallow_clone(c)) for k, c in m._modules.items()}
    return new


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha, shape) -> torch.Tensor:
    """(alpha/rank) * up @ down in fp32, reshaped to the target weight ``shape`` (linear or conv)."""
    rank = down.shape[0]
    scale = float(alpha) / rank if alpha is not None else 1.0
    d = up.float().flatten(1) @ down.float().flatten(1)
    return (d * scale).reshape(shape)


def apply_lora(module, lora_state: dict, strength: float, component: str | None = None):
    """A patched copy of a UNet or CLIP text encoder: W' = W + strength * alpha/rank * up @ down for every
    matched Linear/Conv weight. The base module is not mutated; unchanged tensors are shared, so the extra
    memory is only the patched weights (``patched._loom_own_bytes``). Unmatched keys of this component are
    logged and listed in ``patched._loom_lora_unmatched``; when the LoRA has keys for this component and none
    match, ``LoraError`` names the file and some keys (as the transformer families do, modelstore/families/lora.py)."""
    component = component or _component_of(module)
    index = {_norm(n): n for n, _ in module.named_modules() if n}
    ldm = getattr(module, "_loom_ldm_names", None) or {}
    targets, unmatched = {}, []
    for (comp, target), parts in parse_lora(lora_state).items():
        if comp != component:
            continue
        name = index.get(target) or ldm.get(target)
        if name is None or "up" not in parts or "down" not in parts:
            unmatched.append(target)
            continue
        targets[name] = parts
    if unmatched and not targets:  # keys for this component, none of them in it: a LoRA of another model
        raise LoraError(f"{getattr(lora_state, 'name', 'LoRA')}: none of its {len(unmatched)} {component} LoRA targets "
                        f"match this model (e.g. {', '.join(sorted(unmatched)[:4])}): a LoRA for another model family?")
    patched = _shallow_clone(module)
    own = 0
    mods = dict(patched.named_modules())
    for name, p in targets.items():
        w = mods[name]._parameters["weight"]
        rows, cols = p["up"].shape[0], p["down"].flatten(1).shape[1]
        if w is None or rows * cols != w.numel():
            raise LoraError(f"LoRA {component} {name}: update of {rows}x{cols} does not fit the weight "
                            f"{tuple(w.shape) if w is not None else None}")
        neww = (w.data.float() + strength * lora_delta(p["up"].to(w.device), p["down"].to(w.device), p.get("alpha"),
                                                       w.shape)).to(w.dtype)
        mods[name]._parameters["weight"] = torch.nn.Parameter(neww, requires_grad=False)
        own += neww.numel() * neww.element_size()
    if unmatched:
        log.warning("LoRA %s: %d %s keys not applied, e.g. %s", getattr(lora_state, "name", ""), len(unmatched),
                    component, unmatched[:3])
    patched._loom_own_bytes = own
    patched._loom_lora_unmatched = unmatched
    patched._loom_lora_applied = len(targets)
    return patched
