"""Style models (``models/style_models/``): turn a CLIP vision encoding into extra conditioning tokens.

Two key layouts are recognised:

- **T2I-Adapter style** (TencentARC's ``t2iadapter_style``, SD1): ``style_embedding`` (1, n_tokens, width),
  ``ln_pre.*``, ``transformer_layes.<i>.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}`` (CLIP residual attention blocks: x + attn(ln_1 x), then x + mlp(ln_2 x), QuickGELU), ``ln_post.*``,
  ``proj`` (width, context_dim). The learned style tokens are appended to the CLIP vision model's
  ``last_hidden_state`` (N, T, width), the sequence goes through ln_pre and the blocks, and the last n_tokens,
  after ln_post, times ``proj`` are the new context tokens (N, n_tokens, context_dim). The weights do not say the
  head count; it is 8, the released adapter's (width 1024, 3 blocks, 8 tokens, context 768).
- **FLUX.1 Redux** (diffusers' ``ReduxImageEncoder``): ``redux_up`` Linear(vision width, 3 x text width),
  ``redux_down`` Linear(3 x text width, text width); tokens = down(silu(up(last_hidden_state))), one per vision
  token (N, T, text width).

Files: ``.safetensors``; pickle (``.pt``/``.pth``/``.ckpt``/``.bin``) only where the store allows pickle
(``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .filecache import FileCache, is_pickle, unreadable
from .tensorfile import load_pickle_state_dict

STYLE_HEADS = 8
_CACHE: FileCache[torch.nn.Module] = FileCache(8)


class StyleModelError(ValueError):
    """A file that is not a style model in a layout Loom reads."""


class _Block(torch.nn.Module):
    """CLIP's residual attention block (sequence-first MultiheadAttention, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.ModuleDict({"c_fc": torch.nn.Linear(width, 4 * width),
                                        "c_proj": torch.nn.Linear(4 * width, width)})

    def forward(self, x):  # x: (L, N, width)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp["c_fc"](self.ln_2(x))
        return x + self.mlp["c_proj"](h * torch.sigmoid(1.702 * h))


class StyleAdapter(torch.nn.Module):
    kind = "t2i_style"

    def __init__(self, width: int, context_dim: int, n_layers: int, n_tokens: int, heads: int = STYLE_HEADS):
        super().__init__()
        self.style_embedding = torch.nn.Parameter(torch.zeros(1, n_tokens, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer_layes = torch.nn.Sequential(*[_Block(width, heads) for _ in range(n_layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.zeros(width, context_dim))
        self.in_width, self.out_width = width, context_dim

    def forward(self, hidden):  # (N, T, width) -> (N, n_tokens, context_dim)
        n = self.style_embedding.shape[1]
        x = torch.cat([hidden, self.style_embedding.expand(hidden.shape[0], -1, -1)], 1)
        x = self.transformer_layes(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, -n:]) @ self.proj


class Redux(torch.nn.Module):
    kind = "redux"

    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.redux_up = torch.nn.Linear(vision_width, 3 * text_width)
        self.redux_down = torch.nn.Linear(3 * text_width, text_width)
        self.in_width, self.out_width = vision_width, text_width

    def forward(self, hidden):  # (N, T, vision width) -> (N, T, text width)
        return self.redux_down(F.silu(self.redux_up(hidden)))


def build(sd: dict, name: str = "style model") -> torch.nn.Module:
    """The module for a state dict in one of the two layouts (StyleModelError naming what is missing, extra, of
    the wrong shape or dtype, or not finite). The module is laid out on the meta device and checked against the
    file before any weight is allocated, so dims declared by a few tiny tensors cannot make it allocate more than
    the file holds."""
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise StyleModelError(f"{name}: tensor {k} is {getattr(v, 'dtype', type(v).__name__)}, expected floating "
                                  "point weights")
    if "redux_up.weight" in sd:
        up, down = sd["redux_up.weight"], sd.get("redux_down.weight")
        if up.ndim != 2 or down is None or down.ndim != 2 or down.shape[1] != up.shape[0] \
                or up.shape[0] != 3 * down.shape[0]:
            raise StyleModelError(f"{name}: redux_up {tuple(up.shape)} and redux_down "
                                  f"{tuple(getattr(down, 'shape', ()))} do not form a Redux encoder")
        make = lambda: Redux(up.shape[1], down.shape[0])  # noqa: E731
    elif "style_embedding" in sd:
        emb, proj = sd["style_embedding"], sd.get("proj")
        if emb.ndim != 3 or proj is None or proj.ndim != 2 or proj.shape[0] != emb.shape[-1]:
            raise StyleModelError(f"{name}: style_embedding {tuple(emb.shape)} / proj "
                                  f"{tuple(getattr(proj, 'shape', ()))} are not a T2I style adapter's")
        n_layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
        width = emb.shape[-1]
        if width % STYLE_HEADS:
            raise StyleModelError(f"{name}: width {width} is not divisible by {STYLE_HEADS} heads")
        make = lambda: StyleAdapter(width, proj.shape[1], n_layers, emb.shape[1])  # noqa: E731
    else:
        raise StyleModelError(f"{name}: neither a T2I-Adapter style model (style_embedding, transformer_layes.*) "
                              "nor a FLUX.1 Redux model (redux_up, redux_down)")
    with torch.device("meta"):
        m = make()
    want = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise StyleModelError(f"{name}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in want if tuple(sd[k].shape) != want[k]]
    if wrong:
        raise StyleModelError(f"{name}: wrong shapes: {', '.join(wrong[:4])}")
    bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    if bad:
        raise StyleModelError(f"{name}: NaN or infinite values in {', '.join(sorted(bad)[:4])}")
    m.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    return m.eval().requires_grad_(False)


def load(path: str | Path, allow_pickle: bool = False) -> torch.nn.Module:
    """The style model in ``path`` (cached by path, size and mtime; the pickle policy is checked first)."""
    return _CACHE.get(path, allow_pickle, _load)


def _load(path: Path) -> torch.nn.Module:
    try:
        if is_pickle(path):
            sd = load_pickle_state_dict(path)
        else:
            from safetensors.torch import load_file

            sd = load_file(str(path))
    except Exception as e:  # truncated, empty, not safetensors / a pickle of something else
        raise StyleModelError(unreadable(path, e)) from None
    if not isinstance(sd, dict):
        raise StyleModelError(f"{path.name}: not a state dict")
    return build(sd, path.name)
