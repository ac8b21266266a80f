"""Standalone text-encoder files (models/text_encoders, models/clip): which encoder a file holds, its
transformers config from shapes, and where its tokenizer comes from without a network.

Kinds and the file layouts read (the HF transformers layouts ComfyUI's split files use):
- ``clip_l``: ``text_model.*`` (+ optional ``text_projection.weight``), fewer than 24 layers (CLIP ViT-L has 12);
- ``clip_g``: ``text_model.*`` + ``text_projection.weight`` with 24 or more layers (OpenCLIP bigG has 32);
- ``t5``: T5 v1.1 encoder, ``shared.weight`` + ``encoder.block.N.layer.*`` (gated GELU when ``wi_0``/``wi_1``);
- ``qwen3``: ``model.embed_tokens.weight`` + ``model.layers.N.self_attn.{q,k}_norm`` (Qwen3, Z-Image's encoder);
- ``qwen25vl``: the original Qwen2.5-VL checkpoint layout (``qwen_2.5_vl_7b.safetensors``): ``model.embed_tokens``,
  ``model.layers.N.*`` with q/k/v biases and no q/k norms, ``model.norm``; the vision tower ``visual.*`` and
  ``lm_head.weight`` may be present and are not loaded (Qwen-Image encodes text only).
A key prefix such as ``text_encoders.clip_l.transformer.`` is stripped first.

Tokenizers are model data. CLIP's BPE files ship with Loom (modelstore/model_configs/clip_tokenizer, MIT like
OpenAI CLIP). T5, Qwen3 and Qwen2.5-VL tokenizers are not shipped: a ``tokenizer.json`` (+ ``tokenizer_config.json``)
is read from ``<file stem>_tokenizer/`` beside the text-encoder file, or from ``models/tokenizers/<t5|qwen3|qwen25vl>/``;
otherwise
``MissingTokenizer`` names the folders looked in. Nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

from ..tensorfile import CheckpointError
from .common import UnknownModelFile, indices, need

KINDS = ("clip_l", "clip_g", "t5", "qwen3", "qwen25vl")
_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer.",
             "cond_stage_model.transformer.", "transformer.", "")
#: the model each tokenizer folder must come from (for error messages)
TOKENIZER_SOURCES = {"t5": "google/t5-v1_1-xxl", "qwen3": "Qwen/Qwen3-4B", "qwen25vl": "Qwen/Qwen2.5-VL-7B-Instruct"}


class MissingTokenizer(CheckpointError):
    """No tokenizer files for a text encoder; ``looked_in`` lists the folders searched."""

    def __init__(self, kind: str, file: str, looked_in: list[Path]):
        self.kind, self.file, self.looked_in = kind, file, looked_in
        where = " or ".join(str(p / "tokenizer.json") for p in looked_in)
        super().__init__(f"{file}: no {kind} tokenizer: put tokenizer.json and tokenizer_config.json of "
                         f"{TOKENIZER_SOURCES.get(kind, kind)} at {where} (Loom never downloads them)")


def strip(shapes) -> tuple[str, dict]:
    """(prefix, shapes without it) for the first known prefix present."""
    for p in _PREFIXES:
        if p and any(k.startswith(p) for k in shapes):
            return p, {k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    return "", dict(shapes)


def detect(shapes, name: str = "file") -> tuple[str, str]:
    """(kind, prefix) of a text-encoder file, or ``UnknownModelFile`` listing the known kinds."""
    prefix, s = strip(shapes)
    if "text_model.embeddings.token_embedding.weight" in s:
        n = len(indices(s, "text_model.encoder.layers."))
        return ("clip_g" if n >= 24 and "text_projection.weight" in s else "clip_l"), prefix
    if "shared.weight" in s and "encoder.block.0.layer.0.SelfAttention.q.weight" in s:
        return "t5", prefix
    if "model.embed_tokens.weight" in s and "model.layers.0.self_attn.q_norm.weight" in s:
        return "qwen3", prefix
    if "model.embed_tokens.weight" in s and "model.layers.0.self_attn.q_proj.bias" in s:
        return "qwen25vl", prefix
    raise UnknownModelFile(name, "text encoder", sorted(shapes)[:8],
                           ["clip_l (CLIP ViT-L text model)", "clip_g (OpenCLIP bigG text model)", "t5 (T5 v1.1 XXL encoder)",
                            "qwen3 (Qwen3, Z-Image)", "qwen25vl (Qwen2.5-VL, Qwen-Image)"])


def config(kind: str, s: dict) -> dict:
    """transformers config kwargs for ``kind`` from prefix-stripped shapes."""
    if kind in ("clip_l", "clip_g"):
        P = "text_model."
        tok = need(s, P + "embeddings.token_embedding.weight", kind)
        hidden = tok[1]
        head = 64 if hidden % 64 == 0 else 32 if hidden % 32 == 0 else hidden
        cfg = dict(vocab_size=tok[0], hidden_size=hidden, num_attention_heads=hidden // head,
                   intermediate_size=need(s, P + "encoder.layers.0.mlp.fc1.weight", kind)[0],
                   num_hidden_layers=len(indices(s, P + "encoder.layers.")),
                   max_position_embeddings=need(s, P + "embeddings.position_embedding.weight", kind)[0],
                   hidden_act="quick_gelu" if kind == "clip_l" else "gelu", bos_token_id=49406, eos_token_id=49407,
                   pad_token_id=49407 if kind == "clip_l" else 0)
        if "text_projection.weight" in s:
            cfg["projection_dim"] = s["text_projection.weight"][0]
        return cfg
    if kind == "t5":
        shared = need(s, "shared.weight", kind)
        heads = need(s, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", kind)
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in s
        ff = s["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else
               "encoder.block.0.layer.1.DenseReluDense.wi.weight"]
        return dict(vocab_size=shared[0], d_model=shared[1], num_heads=heads[1],
                    d_kv=need(s, "encoder.block.0.layer.0.SelfAttention.q.weight", kind)[0] // heads[1],
                    d_ff=ff[0], num_layers=len(indices(s, "encoder.block.")), relative_attention_num_buckets=heads[0],
                    feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False)
    if kind == "qwen3":
        emb = need(s, "model.embed_tokens.weight", kind)
        hd = need(s, "model.layers.0.self_attn.q_norm.weight", kind)[0]
        return dict(vocab_size=emb[0], hidden_size=emb[1], head_dim=hd,
                    num_attention_heads=need(s, "model.layers.0.self_attn.q_proj.weight", kind)[0] // hd,
                    num_key_value_heads=need(s, "model.layers.0.self_attn.k_proj.weight", kind)[0] // hd,
                    intermediate_size=need(s, "model.layers.0.mlp.gate_proj.weight", kind)[0],
                    num_hidden_layers=len(indices(s, "model.layers.")), rms_norm_eps=1e-6,
                    max_position_embeddings=40960, rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"},
                    tie_word_embeddings=False)
    if kind == "qwen25vl":
        emb = need(s, "model.embed_tokens.weight", kind)
        q = need(s, "model.layers.0.self_attn.q_proj.weight", kind)
        k = need(s, "model.layers.0.self_attn.k_proj.weight", kind)
        # head_dim is not in the shapes (q_proj is hidden x hidden): Qwen2.5-VL's is 128; narrower test models use 16
        hd = 128 if emb[1] % 128 == 0 else 16 if emb[1] % 16 == 0 else 8
        half = hd // 2  # mrope sections (t, h, w) over head_dim/2, 1/4 : 3/8 : 3/8 like the real (16, 24, 24)
        t = half // 4
        h = (half - t) // 2
        return dict(vocab_size=emb[0], hidden_size=emb[1], num_attention_heads=q[0] // hd, num_key_value_heads=k[0] // hd,
                    intermediate_size=need(s, "model.layers.0.mlp.gate_proj.weight", kind)[0],
                    num_hidden_layers=len(indices(s, "model.layers.")), rms_norm_eps=1e-6,
                    max_position_embeddings=128000,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                     "mrope_section": [t, h, half - t - h]})
    raise KeyError(kind)


def loads(kind: str, key: str) -> bool:
    """Whether a (prefix-stripped) tensor of a ``kind`` file is read: Qwen2.5-VL's vision tower and LM head are not."""
    return kind != "qwen25vl" or key.startswith("model.")


def build(kind: str, cfg: dict, sd: dict):
    """The transformers module for ``kind`` from prefix-stripped tensors (no second weight copy)."""
    from ..build import instantiate

    if kind in ("clip_l", "clip_g"):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        proj = "text_projection.weight" in sd
        cls = CLIPTextModelWithProjection if proj else CLIPTextModel
        conv = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()
                if not k.endswith("position_ids")}
        return instantiate(lambda: cls(CLIPTextConfig(**cfg)), conv)
    if kind == "t5":
        from transformers import T5Config, T5EncoderModel

        conv = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
        conv.setdefault("encoder.embed_tokens.weight", conv["shared.weight"])
        m = instantiate(lambda: T5EncoderModel(T5Config(**cfg)), conv)
        m.encoder.embed_tokens.weight = m.shared.weight  # tied, as in the file
        return m
    if kind == "qwen3":
        from transformers import Qwen3Config, Qwen3Model

        conv = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        return instantiate(lambda: Qwen3Model(Qwen3Config(**cfg)), conv)
    if kind == "qwen25vl":  # the language model only: text hidden states; visual.* and lm_head stay on disk
        from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

        conv = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        return instantiate(lambda: Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**cfg)), conv)
    raise KeyError(kind)


def tokenizer_dirs(kind: str, file: Path, models_root: Path | None) -> list[Path]:
    """Folders searched, in order, for the tokenizer of a ``kind`` encoder stored in ``file``."""
    out = [file.parent / f"{file.stem}_tokenizer"]
    if models_root is not None:
        out.append(models_root / "tokenizers" / kind)
    return out


def find_tokenizer(kind: str, file: Path, models_root: Path | None) -> Path:
    """The first folder holding ``tokenizer.json`` for a T5 / Qwen3 encoder file, or ``MissingTokenizer``."""
    dirs = tokenizer_dirs(kind, file, models_root)
    for d in dirs:
        if (d / "tokenizer.json").is_file():
            return d
    raise MissingTokenizer(kind, file.name, dirs)


def load_tokenizer(kind: str, file: Path, models_root: Path | None, folder: Path | None = None):
    """The tokenizer for a T5 / Qwen3 encoder file (``PreTrainedTokenizerFast``) from ``folder`` (or searched
    for), or ``MissingTokenizer``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    dirs = [folder] if folder is not None else tokenizer_dirs(kind, file, models_root)
    for d in dirs:
        if (d / "tokenizer.json").is_file():
            try:
                if (d / "tokenizer_config.json").is_file():
                    return AutoTokenizer.from_pretrained(d, local_files_only=True)
                return PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
            except Exception as e:  # corrupt JSON, a tokenizer of another kind: the library's text names no file
                detail = (str(e).strip().splitlines() or ["no detail"])[0][:200]
                raise CheckpointError(f"{file.name}: the {kind} tokenizer in {d} cannot be read "
                                      f"({type(e).__name__}: {detail})") from None
    raise MissingTokenizer(kind, file.name, dirs)
