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
scale 1, diffusers' and ComfyUI's rule). ``.diff`` (a whole tensor: a weight, or a norm scale by its full key) and
``.diff_b`` (a bias) add ``strength * tensor``. Text-encoder keys (``lora_te*_``, ``text_encoder*.``) are left to
the CLIP. DoRA magnitudes (``dora_scale``, PEFT's ``lora_magnitude_vector``) are applied (see ``dora_delta``).
LyCORIS LoHa (``hada_w*``) and LoKr (``lokr_w*``) updates are read too (not their Tucker conv forms).

How an original-layout update reaches the diffusers module: the loader already converts the file to diffusers'
layout with ``convert_state`` (a family's own small function: renames, q/k/v splits of fused tensors, the
shift/scale swap of final norms). All of those move whole rows of dim 0, so running the SAME converter on a probe
state dict whose values are row codes (tensor id << 32 | row) tells, for every diffusers weight, which rows of which
file tensor it holds (``Layout``). An update of a file tensor (say fused qkv, (3d, d), or its bias) is then added
row by row to the diffusers tensors holding those rows (to_q, to_k, to_v). No per-family LoRA table: a new family
plugs in its ``convert_state`` and gets LoRA. Updates in diffusers names apply directly to that module's tensors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..lora import LoraError, _shallow_clone, lora_delta

log = logging.getLogger("loom.models")

SUFFIXES = ((".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_B.weight", "up"),
            (".lora_A.weight", "down"), (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
            (".lora.up.weight", "up"), (".lora.down.weight", "down"), (".alpha", "alpha"), (".diff_b", "diff_b"),
            (".diff", "diff"), (".dora_scale", "dora"), (".lora_magnitude_vector", "dora"),
            *((f".{n}", n) for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a",
                                     "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")))
#: key prefix -> (space, separator): 'file' = original layout, 'diffusers' = diffusers module names, 'any' = both
MODEL_PREFIXES = (("model.diffusion_model.", "file", "."), ("diffusion_model.", "file", "."),
                  ("lora_unet_", "file", "_"), ("transformer.", "diffusers", "."),
                  ("base_model.model.", "diffusers", "."), ("lora_transformer_", "diffusers", "_"))
TE_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
               "text_encoder_3.", "text_encoders.")
_BITS = 32
#: text-encoder key prefix -> the text encoder it is for (kohya numbering = diffusers' text_encoder, _2, _3)
TE_TARGETS = (("lora_te1_", "clip_l"), ("lora_te_", "clip_l"), ("text_encoder.", "clip_l"), ("lora_te2_", "clip_g"),
              ("text_encoder_2.", "clip_g"), ("lora_te3_", "t5"), ("text_encoder_3.", "t5"))


@dataclass
class Layout:
    """Where each file tensor's rows live in the diffusers module. ``file``: {file tensor key: shape};
    ``diffusers``: {diffusers tensor key: shape}; ``rows``: {file tensor key: [(diffusers tensor key, dst rows,
    src rows)]} (slices or LongTensors; dst in the diffusers tensor, src in the file tensor)."""
    file: dict
    diffusers: dict
    rows: dict

    def index(self, space: str, sep: str) -> dict:
        """{module name with '.' -> sep: module name} of one layout (a module = a tensor key less its last part)."""
        names = {k.rpartition(".")[0] or k for k in (self.file if space == "file" else self.diffusers)}
        return {n.replace(".", sep): n for n in names}

    def tensors(self, space: str) -> dict:
        return self.file if space == "file" else self.diffusers


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
    diff, rows = {}, {}
    for dk, codes in conv.items():
        if codes.dim() != 1:
            continue
        ids, src = codes >> _BITS, codes & ((1 << _BITS) - 1)
        for i in ids.unique().tolist():
            if 0 <= i < len(names) and not shapes[names[i]]:
                continue
            fk = names[i] if 0 <= i < len(names) and codes.dtype == torch.int64 else None
            dst = (ids == i).nonzero().flatten()
            s_rows = _compact(src[dst])
            top = s_rows.stop if isinstance(s_rows, slice) else int(s_rows.max().item()) + 1
            if fk is None or top > shapes[fk][0]:
                raise LoraError(f"LoRA on {family}: its convert_state does more than move rows ({dk}); the LoRA "
                                "key map cannot be derived from it")
            rows.setdefault(fk, []).append((dk, _compact(dst), s_rows))
            diff[dk] = (codes.shape[0],) + tuple(shapes[fk][1:])
    return Layout({k: tuple(v) for k, v in shapes.items()}, diff, rows)


def _compact(idx: torch.Tensor):
    """A run of consecutive row indices as a ``slice`` (what renames and q/k/v splits give; ~no memory at full
    size), otherwise the LongTensor (a shift/scale swap)."""
    n = len(idx)
    if n and int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] - idx[:-1] == 1).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    return idx


def group(lora_state) -> tuple[dict, list[str]]:
    """({(prefix space, separator, target name): {'up','down','alpha','diff','diff_b'}}, other keys).
    Text-encoder keys are skipped (neither grouped nor returned)."""
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


#: what each part of a LoRA module updates: (role, tensor name candidates after the module name)
_PART_TARGETS = (("lora", (".weight",)), ("diff", (".weight", ".scale", "")), ("diff_b", (".bias",)))


def resolve(groups: dict, lay: Layout) -> tuple[list, list[str]]:
    """([(kind 'lora'|'diff'|'diff_b', space 'file'|'diffusers', tensor key, parts)], unmatched LoRA names). A name
    is looked up in the layout its prefix implies first, then in the other one (trainers mix them up); a LoRA pair
    (up + down) updates the module's 2-D+ ``weight``, ``diff`` a whole tensor, ``diff_b`` the bias."""
    idx: dict = {}
    targets, unmatched = [], []
    for (space, sep, name), parts in groups.items():
        order = ("diffusers", "file") if space == "diffusers" else ("file", "diffusers")
        attempted = False
        for role, cands in _PART_TARGETS:
            if not (_low_rank_kind(parts) is not None if role == "lora" else role in parts):
                continue
            attempted = True
            hit = None
            for sp in order:
                if (sp, sep) not in idx:
                    idx[(sp, sep)] = lay.index(sp, sep)
                module = idx[(sp, sep)].get(name) or (name if role == "diff" else None)
                if module is None:
                    continue
                tensors = lay.tensors(sp)
                key = next((module + c for c in cands if module + c in tensors), None)
                if key is not None and (role != "lora" or len(tensors[key]) >= 2):
                    hit = (role, sp, key, parts)
                    break
            if hit is None:
                unmatched.append(name if role == "lora" else f"{name}.{role}")
            else:
                targets.append(hit)
        if not attempted:  # an alpha alone, or only one of up/down
            unmatched.append(name)
    return targets, list(dict.fromkeys(unmatched))


def _low_rank_kind(parts: dict) -> str | None:
    """'lora' (up + down), 'loha' (LyCORIS Hadamard: hada_w1_a/b, hada_w2_a/b), 'lokr' (LyCORIS Kronecker: lokr_w1 or
    lokr_w1_a/b, lokr_w2 or lokr_w2_a/b), or None."""
    if "up" in parts and "down" in parts:
        return "lora"
    if all(f"hada_w{i}_{ab}" in parts for i in (1, 2) for ab in "ab"):
        return "loha"
    if all(f"lokr_w{i}" in parts or (f"lokr_w{i}_a" in parts and f"lokr_w{i}_b" in parts) for i in (1, 2)):
        return "lokr"
    return None


def _shape(v) -> tuple:
    return tuple(getattr(v, "shape", v))


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def update_shape(kind: str, parts: dict, name: str, fname: str) -> tuple[int, int]:
    """(rows, cols) of a low-rank update from its factors' shapes alone (tensors, or a header's TensorInfo), before
    any product is formed: a LoKr of two 1000x1000 factors (kron: 10^12 values) or a rank-1 pair 10^5 wide is refused
    by the caller's fit check, not computed. LoraError names the module when the factors do not chain."""
    def bad(why):
        return LoraError(f"{fname}: {kind} {name}: {why}")

    def pair(a_key, b_key):  # a @ b.flatten(1): a (m, r) and b (r, ...)
        a, b = _shape(parts[a_key]), _shape(parts[b_key])
        if len(a) < 2 or _prod(a[2:]) != 1 or len(b) < 2:
            raise bad(f"{a_key} {a} / {b_key} {b} are not a low-rank pair (expected matrices, (m, r) and (r, n))")
        if a[1] != b[0]:
            raise bad(f"{a_key} {a} and {b_key} {b} disagree on the rank")
        if a[1] == 0:
            raise bad(f"{a_key} {a}: rank 0")
        return a[0], _prod(b[1:])

    if kind == "lora":
        return pair("up", "down")
    if kind == "loha":
        one, two = pair("hada_w1_a", "hada_w1_b"), pair("hada_w2_a", "hada_w2_b")
        if one != two:
            raise bad(f"hada_w1 gives {one[0]}x{one[1]}, hada_w2 {two[0]}x{two[1]}")
        return one
    dims = []
    for i in (1, 2):
        if f"lokr_w{i}" in parts:
            w = _shape(parts[f"lokr_w{i}"])
            if len(w) < 2:
                raise bad(f"lokr_w{i} {w} is not a matrix")
            dims.append((w[0], _prod(w[1:])))
        else:
            dims.append(pair(f"lokr_w{i}_a", f"lokr_w{i}_b"))
    return dims[0][0] * dims[1][0], dims[0][1] * dims[1][1]


def check_fit(target, shape: tuple, fname: str) -> None:
    """LoraError unless the update of ``target`` (from its factors' shapes) fits the model tensor ``shape``."""
    role, _, key, parts = target
    if role != "lora":
        if _shape(parts[role]) != tuple(shape):
            raise LoraError(f"{fname}: LoRA {key} {role} has shape {_shape(parts[role])}, the model tensor "
                            f"{tuple(shape)}")
        return
    kind = _low_rank_kind(parts)
    name = key[:-len(".weight")] if key.endswith(".weight") else key
    rows, cols = update_shape(kind, parts, name, fname)
    if rows * cols != _numel(shape) or rows != shape[0]:
        raise LoraError(f"{fname}: {kind} {name}: update of {rows}x{cols} does not fit the model weight "
                        f"{tuple(shape)}")
    if "dora" in parts and _prod(_shape(parts["dora"])) not in (shape[0], _prod(shape[1:])):
        raise LoraError(f"{fname}: DoRA {name}: magnitude of shape {_shape(parts['dora'])} has neither one value per "
                        f"output row ({shape[0]}) nor per input column ({_prod(shape[1:])})")


def _lycoris_delta(kind: str, parts: dict, device) -> torch.Tensor:
    """LyCORIS updates (facts of the LyCORIS paper/library): LoHa (w1a w1b) * (w2a w2b) scaled by alpha / rank
    (rank = w1b rows); LoKr kron(w1, w2), a factor given as a @ b when decomposed, scaled by alpha / rank of the
    decomposed factor (1 when neither is)."""
    t = {k: v.to(device=device, dtype=torch.float32) for k, v in parts.items() if k != "alpha" and k != "dora"}
    alpha = parts.get("alpha")
    if kind == "loha":
        d = (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
        rank = t["hada_w1_b"].shape[0]
    else:
        rank, f = None, []
        for i in (1, 2):
            if f"lokr_w{i}" in t:
                f.append(t[f"lokr_w{i}"].flatten(1) if i == 1 else t[f"lokr_w{i}"])
            else:
                rank = t[f"lokr_w{i}_b"].shape[0]
                f.append(t[f"lokr_w{i}_a"] @ t[f"lokr_w{i}_b"].flatten(1))
        w1, w2 = f
        d = torch.kron(w1, w2.flatten(1))
    scale = float(alpha) / rank if alpha is not None and rank else 1.0
    return d * scale


def _delta(target, shape: tuple, fname: str, device=None) -> torch.Tensor:
    """The fp32 update of one target at strength 1, shaped ``shape`` (its tensor in its layout)."""
    role, _, key, parts = target
    if role != "lora":
        d = parts[role]
        if tuple(d.shape) != tuple(shape):
            raise LoraError(f"{fname}: LoRA {key} {role} has shape {tuple(d.shape)}, the model tensor {tuple(shape)}")
        return d.to(device=device, dtype=torch.float32)
    kind = _low_rank_kind(parts)
    check_fit(target, shape, fname)  # from the factors' shapes, before any product is formed
    if kind != "lora":
        return _lycoris_delta(kind, parts, device).reshape(shape)
    return lora_delta(parts["up"].to(device), parts["down"].to(device), parts.get("alpha"), shape)


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def dora_delta(target, d: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """DoRA (Liu et al. 2024): the weight becomes m * (W + delta) / ||W + delta|| with the norm taken per output row
    when the magnitude ``m`` (``dora_scale`` / PEFT's ``lora_magnitude_vector``) has one value per row, otherwise per
    input column; returns that weight minus W, so strength s gives W + s * (W_dora - W) (ComfyUI's rule).
    ``base``: W in the target's layout, fp32."""
    m = target[3]["dora"].to(device=d.device, dtype=torch.float32)
    wc = base + d
    if m.numel() == wc.shape[0] and (m.dim() <= 1 or m.shape[0] == wc.shape[0]):  # per output row
        norm = wc.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (wc.dim() - 1))
        m = m.reshape(norm.shape)
    else:  # per input column
        norm = wc.transpose(0, 1).flatten(1).norm(dim=1).reshape((1, -1) + (1,) * (wc.dim() - 2))
        m = m.reshape(norm.shape)
    return wc * (m / norm) - base


def _base_tensor(model, lay: Layout, target) -> torch.Tensor:
    """W of a target in its own layout (fp32), gathered from the base model's diffusers tensors."""
    _, space, key, _ = target
    if space == "diffusers":
        return model.module.get_parameter(key).data.float()
    out = torch.zeros(lay.file[key], dtype=torch.float32, device=model.device)
    for dk, dst, src in lay.rows.get(key, ()):
        w = model.module.get_parameter(dk).data
        out[src if isinstance(src, slice) else src.to(out.device)] = w[dst if isinstance(dst, slice) else
                                                                        dst.to(w.device)].float()
    return out


def updates(lora_state, lay: Layout, fname: str = "LoRA", family: str = ""):
    """(list of (target, [(diffusers tensor key, dst rows or None for all, src rows or None)]), unmatched names).
    Raises ``LoraError`` naming the file when nothing in it is for this model."""
    groups, other = group(lora_state)
    targets, unmatched = resolve(groups, lay)
    _refuse_no_match(targets, groups, other, fname, family)
    plan = []
    for t in targets:
        _, space, key, _ = t
        plan.append((t, [(key, None, None)] if space == "diffusers" else list(lay.rows.get(key, ()))))
    return plan, unmatched + other


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
    patched = _shallow_clone(model)
    plan, unmatched = updates(lora_state, lay, fname, model.family)
    left: dict = {}  # diffusers key -> contributions still to add (a weight is finished when it reaches 0)
    for _, parts in plan:
        for dk, _, _ in parts:
            left[dk] = left.get(dk, 0) + 1
    work: dict = {}  # diffusers key -> fp32 working copy (the base's tensor is never written)
    own = 0
    for target, parts in plan:
        d = _delta(target, lay.tensors(target[1])[target[2]], fname, model.device)
        if target[0] == "lora" and "dora" in target[3]:
            d = dora_delta(target, d, _base_tensor(model, lay, target))
        for dk, dst, src in parts:
            owner, _, pname = ("module." + dk).rpartition(".")
            mod = patched.get_submodule(owner)
            w = mod._parameters.get(pname)
            if w is None:
                raise LoraError(f"{fname}: LoRA target {dk} is not a parameter of the {model.family} model")
            rows = d if src is None else d[src if isinstance(src, slice) else src.to(d.device)]
            want = tuple(w.shape) if dst is None else tuple(w[dst].shape) if isinstance(dst, slice) else \
                (len(dst),) + tuple(w.shape[1:])
            if tuple(rows.shape) != want:
                raise LoraError(f"{fname}: LoRA update of {dk} has shape {tuple(rows.shape)}, the model weight "
                                f"{tuple(w.shape)}")
            if dk not in work:
                work[dk] = w.data.to(torch.float32, copy=True)
            if dst is None:
                work[dk].add_(rows, alpha=strength)
            elif isinstance(dst, slice):
                work[dk][dst].add_(rows, alpha=strength)
            else:
                work[dk].index_add_(0, dst.to(d.device), rows, alpha=strength)
            left[dk] -= 1
            if left[dk] == 0:
                new = work.pop(dk).to(w.dtype)
                mod._parameters[pname] = torch.nn.Parameter(new, requires_grad=False)
                own += new.numel() * new.element_size()
    applied = len(plan)
    if unmatched:
        log.warning("LoRA %s: %d keys not applied to the %s model, e.g. %s", fname, len(unmatched), model.family,
                    unmatched[:3])
    patched._loom_own_bytes = own
    patched._loom_lora_unmatched = unmatched
    patched._loom_lora_applied = applied
    return patched


def header_check(lay: Layout, family: str, lora_keys, fname: str) -> list[str]:
    """Header-only check of a LoRA against a model's Layout (no weights read). ``lora_keys``: tensor names, or
    {name: TensorInfo} (a safetensors header), whose dtypes and shapes are then checked too: every matched update
    must be floating point and fit its target. Raises ``LoraError`` when no target matches or one does not fit;
    returns warnings naming unmatched targets otherwise."""
    infos = lora_keys if isinstance(lora_keys, dict) else dict.fromkeys(lora_keys)
    groups, other = group(infos)
    targets, unmatched = resolve(groups, lay)
    _refuse_no_match(targets, groups, other, fname, family)
    if isinstance(lora_keys, dict):
        for t in targets:
            for part, info in t[3].items():
                dt = getattr(info, "dtype", "float")
                if "float" not in str(dt):
                    raise LoraError(f"{fname}: LoRA {t[2]} {part} is {dt}, expected floating point weights")
            check_fit(t, lay.tensors(t[1])[t[2]], fname)
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


def text_encoder_warnings(lora_keys, kinds, fname: str) -> list[str]:
    """Warnings for a LoRA's text-encoder keys that no encoder of this CLIP (``kinds``: 'clip_l', 'clip_g', 't5',
    'qwen3' ...) takes: T5 LoRAs and keys for an encoder the CLIP does not have are not applied."""
    missing: dict = {}
    for k in lora_keys:
        kind = next((t for p, t in TE_TARGETS if k.startswith(p)), None)
        if kind is not None and (kind not in kinds or kind not in ("clip_l", "clip_g")):
            missing.setdefault(kind, []).append(k)
    return [f"{fname}: {len(v)} LoRA keys for a {kind} text encoder are not applied (this CLIP has "
            f"{', '.join(kinds)}; LoRA patches CLIP-L and CLIP-G), e.g. {sorted(v)[0]}" for kind, v in missing.items()]
