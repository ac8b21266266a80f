"""CLIP vision models (``models/clip_vision/``): one safetensors file in transformers' CLIPModel or
CLIPVisionModelWithProjection key layout, loaded into ``transformers`` modules.

Accepted key layouts (HF names, optionally under a ``clip_vision.`` prefix):
  - ``vision_model.*`` + ``visual_projection.weight``: a vision tower (what ComfyUI's CLIPVisionLoader reads);
  - plus ``text_model.*`` + ``text_projection.weight`` (+ ``logit_scale``): a full CLIPModel, whose text tower
    lets Loom score images against a text (``LoomCLIPRankImages``).
The config is read from tensor shapes: hidden sizes, layer counts, FFN widths, patch size (conv kernel), image size
(sqrt of position count - 1, times the patch), projection dim; heads = max(1, hidden // 64) (the OpenAI CLIP rule,
1 for the tiny models). Image preprocessing is CLIP's: bicubic resize to the model's image size (``crop="center"``
first cuts the central square, like ComfyUI), then the OpenAI mean/std.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .filecache import unreadable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVisionError(ValueError):
    """A file that is not a CLIP vision model in a layout Loom reads."""


MAX_LAYERS = 256  # ViT-bigG, the largest CLIP vision tower, has 48


def _layers(keys, prefix: str) -> int:
    """The number of encoder layers: indices 0..n-1, each present (a stray ``layers.99999`` would otherwise make
    the model build 100000 layers before any weight is checked)."""
    idx = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if not head.isdigit():
                raise ClipVisionError(f"tensor {k[:200]}: layer index {head[:20]!r} is not a number")
            idx.add(int(head))
    n = max(idx, default=-1) + 1
    if n > MAX_LAYERS or len(idx) != n:
        raise ClipVisionError(f"{prefix}* has layer indices {sorted(idx)[:3]}...{sorted(idx)[-2:]}: expected 0..n-1 "
                              f"with n at most {MAX_LAYERS}")
    return n


def infer_config(sd: dict[str, torch.Tensor]) -> dict:
    """transformers ``CLIPConfig`` kwargs (``text_config`` is None without a text tower) from HF-layout keys."""
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise ClipVisionError("no 'vision_model.embeddings.patch_embedding.weight': not a CLIP vision model in "
                              "transformers' CLIPModel / CLIPVisionModelWithProjection layout")
    pe = sd["vision_model.embeddings.patch_embedding.weight"]
    hidden, _, patch, _ = pe.shape
    npos = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = int(round((npos - 1) ** 0.5))
    vision = dict(hidden_size=hidden, patch_size=patch, image_size=grid * patch, num_channels=pe.shape[1],
                  num_hidden_layers=_layers(sd, "vision_model.encoder.layers."),
                  intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_attention_heads=max(1, hidden // 64), hidden_act="quick_gelu")
    proj = sd["visual_projection.weight"].shape[0] if "visual_projection.weight" in sd else hidden
    text = None
    if "text_model.embeddings.token_embedding.weight" in sd:
        vocab, th = sd["text_model.embeddings.token_embedding.weight"].shape
        text = dict(vocab_size=vocab, hidden_size=th,
                    max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
                    num_hidden_layers=_layers(sd, "text_model.encoder.layers."),
                    intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                    num_attention_heads=max(1, th // 64), hidden_act="quick_gelu",
                    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return dict(vision_config=vision, text_config=text, projection_dim=proj)


@dataclass
class ClipVision:
    """A loaded CLIP vision model. ``vision``: ``CLIPVisionModelWithProjection``; ``model``: the full
    ``CLIPModel`` when the file has a text tower (else None); ``image_size`` in pixels."""
    vision: Any
    model: Any
    image_size: int
    name: str

    @property
    def has_text(self) -> bool:
        return self.model is not None

    def preprocess(self, image: torch.Tensor, crop: str = "center") -> torch.Tensor:
        """IMAGE (B,H,W,C floats 0..1) -> pixel_values (B,3,S,S), CLIP-normalised."""
        x = image[..., :3].movedim(-1, 1).float()
        if crop == "center":
            h, w = x.shape[-2:]
            s = min(h, w)
            x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: str = "center") -> dict:
        """ComfyUI's CLIP_VISION_OUTPUT fields: image_embeds (B,P), last_hidden_state (B,T,H),
        penultimate_hidden_states (B,T,H)."""
        out = self.vision(pixel_values=self.preprocess(image, crop), output_hidden_states=True)
        return {"image_embeds": out.image_embeds, "last_hidden_state": out.last_hidden_state,
                "penultimate_hidden_states": out.hidden_states[-2]}

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N,P) projected text embeddings (needs a text tower)."""
        if self.model is None:
            raise ClipVisionError(f"{self.name} has no text tower (text_model.*); scoring against a text needs a "
                                  "full CLIPModel file")
        from .loader import TOKENIZER_DIR
        tok = _tokenizer(str(TOKENIZER_DIR))
        ids = tok(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pooled = self.model.text_model(input_ids=ids).pooler_output  # the first end token's state
        return self.model.text_projection(pooled)

    @torch.no_grad()
    def similarity(self, image: torch.Tensor, text: str, crop: str = "center") -> torch.Tensor:
        """(B,) cosine similarity of each image's embedding with the text's embedding."""
        img = self.encode_image(image, crop)["image_embeds"]
        txt = self.encode_text([text])
        return F.cosine_similarity(img, txt.expand_as(img), dim=-1)


_TOKS: dict[str, Any] = {}
_CACHE: dict[tuple, ClipVision] = {}
_LOCK = threading.Lock()


def _tokenizer(folder: str):
    if folder not in _TOKS:
        from transformers import CLIPTokenizer
        _TOKS[folder] = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return _TOKS[folder]


def build(sd: dict[str, torch.Tensor], name: str = "clip_vision") -> ClipVision:
    """Modules from a state dict in HF layout (weights copied in fp32, eval mode)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from .build import instantiate
    from .tensorfile import CheckpointError

    sd = {k[len("clip_vision."):] if k.startswith("clip_vision.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    ints = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in sd.items() if not v.is_floating_point()]
    if ints:
        raise ClipVisionError(f"{name}: tensors that are not floating point: {', '.join(sorted(ints)[:4])}")
    sd = {k: v.float() for k, v in sd.items()}
    try:
        cfg = infer_config(sd)
    except ClipVisionError as e:
        raise ClipVisionError(f"{name}: {e}") from None
    except KeyError as e:
        raise ClipVisionError(f"{name}: tensor {e} missing: cannot infer the CLIP vision config") from None
    except (ValueError, IndexError) as e:  # a tensor of another rank than the layout's
        raise ClipVisionError(f"{name}: tensors of unexpected rank: cannot infer the CLIP vision config "
                              f"({type(e).__name__}: {e})") from None
    model = None
    try:  # laid out on the meta device and checked (keys, shapes) before any weight is allocated
        if cfg["text_config"] is not None:
            model = instantiate(lambda: CLIPModel(CLIPConfig(
                text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                projection_dim=cfg["projection_dim"])), sd)
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):  # a shell: both of its parts are replaced below
                vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["vision_config"],
                                                                        projection_dim=cfg["projection_dim"]))
            vision.vision_model = model.vision_model  # shared modules, not copies
            vision.visual_projection = model.visual_projection
        else:
            if "visual_projection.weight" not in sd:
                raise ClipVisionError(f"{name}: no visual_projection.weight")
            keep = ("vision_model.", "visual_projection.")  # other tensors (a logit scale) are not the tower's
            vision = instantiate(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
                **cfg["vision_config"], projection_dim=cfg["projection_dim"])),
                {k: v for k, v in sd.items() if k.startswith(keep)})
    except CheckpointError as e:
        raise ClipVisionError(f"{name}: {e}") from None
    vision.eval()
    return ClipVision(vision, model, cfg["vision_config"]["image_size"], name)


def load(path: str | Path) -> ClipVision:
    """Load (and cache by path, size and mtime) a CLIP vision file. safetensors only."""
    from safetensors.torch import load_file

    p = Path(path).resolve()
    if p.suffix.lower() != ".safetensors":
        raise ClipVisionError(f"{p.name}: only .safetensors CLIP vision files are loaded")
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            try:
                sd = load_file(str(p))
            except Exception as e:  # truncated, empty, not safetensors
                raise ClipVisionError(unreadable(p, e)) from None
            _CACHE[key] = build(sd, p.name)
        return _CACHE[key]
