"""Hypernetworks (``models/hypernetworks/``) in the A1111 format: small MLPs applied to the key and value inputs of
attention layers.

The A1111 file (a ``.pt`` pickle) is a dict: for each width ``d`` of an attention's key/value input (768 for SD1's
cross-attention context, 320/640/1280 for its self-attention, ...) an int key ``d`` -> ``[state_k, state_v]``, two
state dicts of one MLP each (``linear.<i>.weight`` / ``.bias``, the indices of an ``nn.Sequential`` that also holds
parameter-free activation and dropout modules); and the structure beside them:

- ``layer_structure``: width multipliers, e.g. [1, 2, 1] = Linear(d, 2d), Linear(2d, d) (default [1, 2, 1]);
- ``activation_func``: "linear" (none; also when missing) or an activation name (relu, leakyrelu, elu, swish =
  Hardswish, tanh, sigmoid, or any torch.nn activation class lowercased: gelu, mish, softsign, ...), applied after
  every Linear but the last, and after the last too when ``activate_output`` (default True when missing);
- ``is_layer_norm``: a LayerNorm after each Linear (after its activation); it has weights, so it shows in the keys;
- ``use_dropout`` / ``dropout_structure`` / ``last_layer_dropout``: dropout, which does nothing at inference;
- name, step, checkpoint hash and other bookkeeping, ignored.
The earliest files name the two Linear layers ``linear1`` / ``linear2`` (read as ``linear.0`` / ``linear.1``).

Applied as ``k_in = x + mlp_k(x) * strength`` (likewise v) for every attention layer whose key input width is ``d``.

Loom reads the same file as ``.safetensors``, its tensors flattened with the state-dict names:
``<d>.<0|1>.linear.<i>.weight`` / ``.bias`` (0 = key MLP, 1 = value MLP), the structure as JSON text in the
safetensors metadata under the same names (``layer_structure``, ``activation_func``, ``is_layer_norm``,
``activate_output``, ...). A ``.pt`` file is read only where the model store allows pickle files, with
``torch.load(weights_only=True)``. The layer sequence is read from the tensors (Linear = matrix, LayerNorm = vector
weight, in index order), so dropout modules need no guessing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .filecache import FileCache, is_pickle, unreadable

# A1111's names: these, plus every activation class of torch.nn.modules.activation by its lowercased class name
ACTIVATIONS = {"linear": None, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
               "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
ACTIVATIONS.update({name.lower(): cls for name, cls in vars(torch.nn.modules.activation).items()
                    if isinstance(cls, type) and issubclass(cls, torch.nn.Module)
                    and cls.__module__ == "torch.nn.modules.activation" and name.lower() not in ACTIVATIONS
                    and name not in ("PReLU", "MultiheadAttention", "Threshold")})  # weights / required arguments
OLD_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}  # the first files' names
META_KEYS = ("layer_structure", "activation_func", "is_layer_norm", "activate_output", "use_dropout",
             "dropout_structure", "last_layer_dropout", "weight_initialization", "name", "step")

_CACHE: FileCache = FileCache(16)


class HypernetworkError(ValueError):
    """A file that is not a hypernetwork Loom can apply."""


class MLP(torch.nn.Module):
    """One key or value MLP: Linear layers (each optionally followed by the activation and a LayerNorm);
    ``forward(x)`` is ``mlp(x)`` (without the residual)."""

    def __init__(self, steps: list, activation, activate_output: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList(m for m, _ in steps)
        self.kinds = [k for _, k in steps]
        self.act = activation() if activation is not None else None
        self.activate_output = activate_output

    def forward(self, x):
        n_lin = self.kinds.count("linear")
        seen = 0
        for m, kind in zip(self.layers, self.kinds):
            x = m(x)
            if kind == "linear":
                seen += 1
                if self.act is not None and (seen < n_lin or self.activate_output):
                    x = self.act(x)
        return x


@dataclass
class Hypernetwork:
    name: str
    layers: dict  # width -> (MLP for keys, MLP for values)
    structure: dict


_KEY = re.compile(r"linear\.(\d{1,6})\.(weight|bias)")


def _build_mlp(state: dict, where: str, activation, activate_output: bool) -> MLP:
    state = {OLD_NAMES.get(k, k): v for k, v in state.items()}
    for k, v in state.items():
        if not isinstance(k, str) or not _KEY.fullmatch(k):
            raise HypernetworkError(f"{where}: tensor {str(k)[:100]!r} is not linear.<i>.weight / linear.<i>.bias")
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise HypernetworkError(f"{where}: {k} is {getattr(v, 'dtype', type(v).__name__)}, expected floating "
                                    "point weights")
        if not torch.isfinite(v).all():
            raise HypernetworkError(f"{where}: {k} has NaN or infinite values")
    idx = sorted({int(_KEY.fullmatch(k)[1]) for k in state if k.endswith(".weight")})
    if not idx:
        raise HypernetworkError(f"{where}: no linear.<i>.weight tensors")
    lone = sorted(k for k in state if int(_KEY.fullmatch(k)[1]) not in idx)
    if lone:
        raise HypernetworkError(f"{where}: {lone[0]} has no weight beside it")
    steps = []
    for i in idx:
        w, b = state[f"linear.{i}.weight"], state.get(f"linear.{i}.bias")
        if w.ndim == 2:
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            kind = "linear"
        elif w.ndim == 1:
            m = torch.nn.LayerNorm(w.shape[0], elementwise_affine=True)
            kind = "norm"
        else:
            raise HypernetworkError(f"{where}: linear.{i}.weight has shape {tuple(w.shape)}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise HypernetworkError(f"{where}: linear.{i}.bias has shape {tuple(b.shape)}, its weight "
                                    f"{tuple(w.shape)} needs ({w.shape[0]},)")
        with torch.no_grad():
            m.weight.copy_(w.float())
            if b is not None:
                m.bias.copy_(b.float())
        steps.append((m, kind))
    if steps[0][1] != "linear":
        raise HypernetworkError(f"{where}: starts with a LayerNorm, expected a Linear")
    mlp = MLP(steps, activation, activate_output).eval().requires_grad_(False)
    width = steps[0][0].in_features
    last = [m for m, k in steps if k == "linear"][-1]
    if last.out_features != width:
        raise HypernetworkError(f"{where}: maps width {width} to {last.out_features}; a hypernetwork MLP must "
                                "keep the width (its output is added to its input)")
    return mlp


def _read(path: Path) -> tuple[dict, dict]:
    """(width -> [state_k, state_v], structure); HypernetworkError naming the file when it cannot be read."""
    try:
        return _read_file(path)
    except HypernetworkError:
        raise
    except Exception as e:  # truncated, empty, not that format
        raise HypernetworkError(unreadable(path, e)) from None


def _read_file(path: Path) -> tuple[dict, dict]:
    if is_pickle(path):
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(raw, dict):
            raise HypernetworkError(f"{path.name}: not a hypernetwork (a dict of width -> MLP state dicts)")
        states = {}
        for k, v in raw.items():
            if isinstance(k, int) or (isinstance(k, str) and k.isdigit()):
                if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, dict) for s in v)):
                    raise HypernetworkError(f"{path.name}: entry {k} is not a pair of state dicts")
                states[int(k)] = [dict(v[0]), dict(v[1])]
        return states, {k: raw[k] for k in META_KEYS if k in raw}
    from safetensors import safe_open

    states: dict = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            parts = key.split(".", 2)
            if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
                raise HypernetworkError(f"{path.name}: tensor {key!r} is not <width>.<0|1>.linear.<i>.<weight|bias>")
            states.setdefault(int(parts[0]), [{}, {}])[int(parts[1])][parts[2]] = f.get_tensor(key)
    structure = {}
    for k in META_KEYS:
        if k in meta:
            try:
                structure[k] = json.loads(meta[k])
            except ValueError:
                structure[k] = meta[k]  # plain text (an activation name)
    return states, structure


def load(path: str | Path, allow_pickle: bool = False) -> Hypernetwork:
    """The hypernetwork in ``path`` (cached by path, size and mtime); HypernetworkError / PickleRefused name it."""
    return _CACHE.get(path, allow_pickle, _load)


def _load(path: Path) -> Hypernetwork:
    states, structure = _read(path)
    if not states:
        raise HypernetworkError(f"{path.name}: no MLPs (expected width keys such as 768)")
    act_name = structure.get("activation_func") or "linear"
    if str(act_name).lower() not in ACTIVATIONS:
        raise HypernetworkError(f"{path.name}: activation_func {act_name!r} is not one Loom knows "
                                f"({', '.join(sorted(ACTIVATIONS))})")
    activation = ACTIVATIONS[str(act_name).lower()]
    try:
        activation is None or activation()
    except TypeError as e:  # an activation class that needs arguments A1111 never stores
        raise HypernetworkError(f"{path.name}: activation_func {act_name!r} cannot be built ({e})") from None
    activate_output = structure.get("activate_output", True)
    activate_output = activate_output.strip().lower() not in ("false", "0", "no", "") \
        if isinstance(activate_output, str) else bool(activate_output)  # metadata text "false" is False
    layers = {}
    for width, (sk, sv) in sorted(states.items()):
        pair = tuple(_build_mlp(s, f"{path.name}: width {width} {'kv'[j]}", activation, activate_output)
                     for j, s in enumerate((sk, sv)))
        for j, m in enumerate(pair):
            if m.layers[0].in_features != width:
                raise HypernetworkError(f"{path.name}: the width-{width} {'kv'[j]} MLP takes "
                                        f"{m.layers[0].in_features} features")
        layers[width] = pair
    return Hypernetwork(path.stem, layers, structure)
