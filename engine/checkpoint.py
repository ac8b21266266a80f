"""Single-file checkpoint reading, architecture detection and config inference from tensor shapes.

Reading works on the safetensors header alone (no weights touched), so detection and config inference are
cheap; ``load_tensors`` then reads only the tensors of one component, converting each to the target
dtype/device as it is read (no second full copy, no mmap). ``build_*`` turn those tensors into diffusers /
transformers modules (built with empty weights, then ``load_state_dict(assign=True)``).

torch/diffusers are imported lazily inside functions: only ``engine/models.py`` imports torch at module level.

Architecture rules (what shapes cannot tell):
- ``sd1``: UNet ``attention_head_dim=8`` (= 8 heads per level), CLIP heads = hidden/64, ``quick_gelu``.
- ``sd2``: UNet head dim 64 (heads = channels/64), OpenCLIP text encoder, ``gelu``, the last resblock is dropped
  (SD2 conditions on the penultimate layer; same as diffusers and ComfyUI's default).
- ``sdxl``: UNet head dim 64, ``text_time`` added embedding (time embed dim 256); CLIP-L (``quick_gelu``,
  penultimate layer used by the sampler) + OpenCLIP-G with projection (``gelu``).
- Prediction type: ``epsilon`` unless a hint says ``v``: a sidecar ``<name>.yaml`` with
  ``parameterization: "v"``, safetensors ``__metadata__`` (``modelspec.prediction_type``/``prediction_type`` =
  ``v``/``v_prediction``, or kohya's ``ss_v_parameterization`` = ``true``), or a ``v_pred`` key in the file.
- VAE scaling factor 0.18215 (sd1/sd2), 0.13025 (sdxl).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SCALING_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl")

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class CheckpointError(ValueError):
    """A file could not be read, or its architecture/config could not be determined."""


class PickleRefused(CheckpointError):
    """A pickle checkpoint was offered to a store that does not allow pickle."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor in a safetensors file: dtype name (torch attribute name), shape, byte range in the data."""
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class Header:
    """Parsed safetensors header. ``data_offset`` is the file offset of the data block (bytes)."""
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def read_header(path: str | Path) -> Header:
    """Parse the header of a ``.safetensors`` file (reads ~KB, not the weights)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path.name}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path.name}: not a safetensors file (header length {n})")
        try:
            hdr = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path.name}: corrupt safetensors header: {e}") from None
    meta = {str(k): str(v) for k, v in (hdr.pop("__metadata__", None) or {}).items()}
    tensors = {}
    for k, v in hdr.items():
        if v["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path.name}: unsupported dtype {v['dtype']} for {k}")
        s, e = v["data_offsets"]
        tensors[k] = TensorInfo(_ST_DTYPES[v["dtype"]], tuple(v["shape"]), s, e)
    return Header(path, tensors, meta, 8 + n)


def load_tensors(header: Header, names, dtype=None, device=None) -> dict:
    """Read the named tensors with plain file reads into fresh buffers, each cast to ``dtype`` (floating
    tensors only) and moved to ``device`` right after it is read, so peak memory is one copy of the selected
    weights plus one tensor. Returns ``{name: torch.Tensor}``."""
    import torch

    out = {}
    with open(header.path, "rb", buffering=0) as f:
        for name in names:
            ti = header.tensors[name]
            buf = torch.empty(ti.end - ti.start, dtype=torch.uint8)
            f.seek(header.data_offset + ti.start)
            view = memoryview(buf.numpy())
            got = 0
            while got < len(view):
                r = f.readinto(view[got:])
                if not r:
                    raise CheckpointError(f"{header.path.name}: truncated data for {name}")
                got += r
            t = buf.view(getattr(torch, ti.dtype)).reshape(ti.shape)
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            if device is not None and str(device) != "cpu":
                t = t.to(device)
            out[name] = t
    return out


def load_pickle_state_dict(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of a pickle checkpoint, unwrapping a ``state_dict`` entry."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{Path(path).name}: pickle does not hold a state dict")
    return {k: v for k, v in sd.items() if hasattr(v, "shape")}


def header_from_state_dict(path: str | Path, sd: dict) -> Header:
    """A Header describing an in-memory state dict (for pickle files); ``load_tensors`` can't read it."""
    tensors = {k: TensorInfo(str(v.dtype).replace("torch.", ""), tuple(v.shape), 0, 0) for k, v in sd.items()}
    return Header(Path(path), tensors, {}, -1)


# ---------------------------------------------------------------------------------------------- detection
def _indices(shapes, prefix: str) -> list[int]:
    """Sorted distinct integers that directly follow ``prefix`` in the keys."""
    out = set()
    for k in shapes:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return sorted(out)


def detect_arch(shapes) -> str:
    """'sd1' | 'sd2' | 'sdxl' from the keys: the text encoder layout first, then UNet hints."""
    if any(k.startswith(SDXL_CLIP_G_PREFIX) for k in shapes) or UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        return "sdxl"
    if SD2_CLIP_PREFIX + "token_embedding.weight" in shapes:
        return "sd2"
    if SD1_CLIP_PREFIX + "embeddings.token_embedding.weight" in shapes:
        return "sd1"
    proj = [v for k, v in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if not proj:
        raise CheckpointError("no Stable Diffusion UNet found (no model.diffusion_model.*proj_in keys)")
    return "sd2" if len(proj[0]) == 2 else "sd1"


def detect_prediction_type(header: Header) -> str:
    """'epsilon' or 'v_prediction' from a sidecar yaml, safetensors metadata or a ``v_pred`` key."""
    m = header.metadata
    for key in ("modelspec.prediction_type", "prediction_type"):
        if m.get(key, "").strip().lower() in ("v", "v_prediction", "v-prediction"):
            return "v_prediction"
    if m.get("ss_v_parameterization", "").strip().lower() == "true" or "v_pred" in header.tensors:
        return "v_prediction"
    yaml = header.path.with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text(errors="replace")
        if re.search(r"""^\s*parameterization\s*:\s*["']?v["']?\s*(#.*)?$""", text, re.M):
            return "v_prediction"
    return "epsilon"


# ----------------------------------------------------------------------------------------- config inference
def infer_unet_config(shapes, arch: str, prefix: str = UNET_PREFIX) -> dict:
    """diffusers ``UNet2DConditionModel`` config from LDM UNet key shapes (levels, channels, attention...)."""
    P = prefix

    def shp(k):
        if P + k not in shapes:
            raise CheckpointError(f"UNet key {P + k} missing: cannot infer the UNet config")
        return shapes[P + k]

    conv_in = shp("input_blocks.0.0.weight")
    n_in = len(_indices(shapes, P + "input_blocks."))
    n_down = sum(1 for i in range(n_in) if P + f"input_blocks.{i}.0.op.weight" in shapes)
    levels = n_down + 1
    lpb, rem = divmod(n_in - 1 - n_down, levels)
    if rem or lpb < 1:
        raise CheckpointError(f"UNet has {n_in} input blocks and {n_down} downsamplers: not an SD layout")
    chans, attn, depth = [], [], []
    for lvl in range(levels):
        first = 1 + lvl * (lpb + 1)
        chans.append(shp(f"input_blocks.{first}.0.out_layers.3.weight")[0])
        has = P + f"input_blocks.{first}.1.proj_in.weight" in shapes
        attn.append(has)
        depth.append(len(_indices(shapes, P + f"input_blocks.{first}.1.transformer_blocks.")) if has else 1)
    if P + "middle_block.1.proj_in.weight" not in shapes:
        raise CheckpointError("UNet middle block without attention is not supported")
    mid_depth = len(_indices(shapes, P + "middle_block.1.transformer_blocks."))
    if not attn[-1]:
        depth[-1] = mid_depth
    elif depth[-1] != mid_depth:
        raise CheckpointError(f"UNet mid transformer depth {mid_depth} != last level depth {depth[-1]}")
    proj_in = shp("middle_block.1.proj_in.weight")
    ctx = shp("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    temb = shp("time_embed.0.weight")[0]
    if temb != 4 * chans[0]:
        raise CheckpointError(f"UNet time embedding {temb} != 4 x {chans[0]} channels")
    if arch == "sd1":
        heads: int | list[int] = 8
    else:
        if any(c % 64 for c in chans):
            raise CheckpointError(f"{arch} UNet channels {chans} are not multiples of the head dim 64")
        heads = [c // 64 for c in chans]
    cfg = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[arch],
        "in_channels": conv_in[1],
        "out_channels": shp("out.2.weight")[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": chans,
        "layers_per_block": lpb,
        "cross_attention_dim": ctx,
        "attention_head_dim": heads,
        "use_linear_projection": len(proj_in) == 2,
        "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
    }
    if P + "label_emb.0.0.weight" in shapes:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=shp("label_emb.0.0.weight")[1])
    return cfg


def vae_prefix(shapes) -> str:
    """Key prefix of the LDM VAE in ``shapes`` ('first_stage_model.', 'vae.' or '' for standalone files)."""
    for p in VAE_PREFIXES + ("",):
        if p + "encoder.conv_in.weight" in shapes:
            return p
    raise CheckpointError("no VAE (encoder.conv_in.weight) found")


def infer_vae_config(shapes, prefix: str, scaling_factor: float) -> dict:
    """diffusers ``AutoencoderKL`` config from LDM VAE key shapes."""
    P = prefix
    levels = _indices(shapes, P + "encoder.down.")
    if not levels:
        raise CheckpointError("VAE has no encoder.down.* blocks")
    chans = [shapes[P + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    return {
        "in_channels": shapes[P + "encoder.conv_in.weight"][1],
        "out_channels": shapes[P + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * len(chans),
        "up_block_types": ["UpDecoderBlock2D"] * len(chans),
        "block_out_channels": chans,
        "layers_per_block": len(_indices(shapes, P + "encoder.down.0.block.")),
        "latent_channels": shapes[P + "decoder.conv_in.weight"][1],
        "sample_size": 512,
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": P + "encoder.mid.attn_1.q.weight" in shapes,
        "use_quant_conv": P + "quant_conv.weight" in shapes,
        "use_post_quant_conv": P + "post_quant_conv.weight" in shapes,
    }


def infer_clip_config(shapes, prefix: str, act: str = "quick_gelu") -> dict:
    """transformers ``CLIPTextConfig`` kwargs from HF-layout CLIP keys under ``prefix`` (ends 'text_model.')."""
    tok = shapes[prefix + "embeddings.token_embedding.weight"]
    hidden = tok[1]
    if hidden % 64:
        raise CheckpointError(f"CLIP hidden size {hidden} is not a multiple of the head dim 64")
    return dict(vocab_size=tok[0], hidden_size=hidden, num_attention_heads=hidden // 64,
                intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
                num_hidden_layers=len(_indices(shapes, prefix + "encoder.layers.")),
                max_position_embeddings=shapes[prefix + "embeddings.position_embedding.weight"][0],
                hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def infer_openclip_config(shapes, prefix: str, drop_last: bool) -> dict:
    """``CLIPTextConfig`` kwargs from OpenCLIP keys (``token_embedding``, ``transformer.resblocks.N``)."""
    tok = shapes[prefix + "token_embedding.weight"]
    hidden = tok[1]
    if hidden % 64:
        raise CheckpointError(f"OpenCLIP width {hidden} is not a multiple of the head dim 64")
    n = len(_indices(shapes, prefix + "transformer.resblocks."))
    proj = shapes.get(prefix + "text_projection")
    return dict(vocab_size=tok[0], hidden_size=hidden, num_attention_heads=hidden // 64,
                intermediate_size=shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
                num_hidden_layers=n - 1 if drop_last else n,
                max_position_embeddings=shapes[prefix + "positional_embedding"][0],
                projection_dim=proj[1] if proj is not None else hidden,
                hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0)


def scheduler_config(prediction_type: str) -> dict:
    """SD1/2/XL training scheduler: scaled_linear 0.00085..0.012, 1000 steps (diffusers kwargs)."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": prediction_type, "set_alpha_to_one": False,
            "steps_offset": 1, "clip_sample": False, "skip_prk_steps": True, "timestep_spacing": "leading"}


# ---------------------------------------------------------------------------------------------- plans
@dataclass
class TextEncoderPlan:
    """How to build one text encoder: ``layout`` 'clip' (HF keys) or 'openclip'; ``projection`` says
    CLIPTextModelWithProjection; ``pad_token`` is the tokenizer's pad ('<|endoftext|>' or '!')."""
    layout: str
    prefix: str
    config: dict
    projection: bool = False
    pad_token: str = "<|endoftext|>"


@dataclass
class CheckpointPlan:
    """Everything known about a checkpoint without reading weights."""
    arch: str
    prediction_type: str
    unet: dict
    vae: dict | None
    vae_prefix: str
    text_encoders: list[TextEncoderPlan] = field(default_factory=list)
    scaling_factor: float = 0.18215

    @property
    def inpaint(self) -> bool:
        return self.unet["in_channels"] == 9


def plan_checkpoint(header: Header) -> CheckpointPlan:
    """Detect the architecture and infer every component config from ``header`` shapes."""
    shapes = header.shapes
    arch = detect_arch(shapes)
    sf = SCALING_FACTOR[arch]
    unet = infer_unet_config(shapes, arch)
    try:
        vp = vae_prefix(shapes)
        vae = infer_vae_config(shapes, vp, sf)
    except CheckpointError:
        vp, vae = "", None
    tes = []
    if arch == "sd1" and SD1_CLIP_PREFIX + "embeddings.token_embedding.weight" in shapes:
        tes.append(TextEncoderPlan("clip", SD1_CLIP_PREFIX, infer_clip_config(shapes, SD1_CLIP_PREFIX)))
    elif arch == "sd2" and SD2_CLIP_PREFIX + "token_embedding.weight" in shapes:
        tes.append(TextEncoderPlan("openclip", SD2_CLIP_PREFIX, infer_openclip_config(shapes, SD2_CLIP_PREFIX, True),
                                   pad_token="!"))
    elif arch == "sdxl":
        if SDXL_CLIP_L_PREFIX + "embeddings.token_embedding.weight" in shapes:
            tes.append(TextEncoderPlan("clip", SDXL_CLIP_L_PREFIX, infer_clip_config(shapes, SDXL_CLIP_L_PREFIX)))
        if SDXL_CLIP_G_PREFIX + "token_embedding.weight" in shapes:
            tes.append(TextEncoderPlan("openclip", SDXL_CLIP_G_PREFIX,
                                       infer_openclip_config(shapes, SDXL_CLIP_G_PREFIX, False), True, "!"))
    return CheckpointPlan(arch, detect_prediction_type(header), unet, vae, vp, tes, sf)


def component_keys(header: Header, plan: CheckpointPlan, component: str, index: int = 0) -> list[str]:
    """The file keys one component needs: 'unet', 'vae' or 'clip' (text encoder ``index``)."""
    if component == "unet":
        p = UNET_PREFIX
    elif component == "vae":
        p = plan.vae_prefix
        return [k for k in header.tensors if k.startswith(p + "encoder.") or k.startswith(p + "decoder.")
                or k.startswith(p + "quant_conv.") or k.startswith(p + "post_quant_conv.")]
    else:
        p = plan.text_encoders[index].prefix
    return [k for k in header.tensors if k.startswith(p)]


# ------------------------------------------------------------------------------------ conversion + build
def convert_unet(sd: dict, config: dict) -> dict:
    """LDM UNet tensors (full ``model.diffusion_model.*`` keys) -> diffusers keys (diffusers' own helper)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(sd, config)


def convert_vae(sd: dict, config: dict) -> dict:
    """LDM VAE tensors (``first_stage_model.``/``vae.``/no prefix) -> diffusers ``AutoencoderKL`` keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(sd, config)


def convert_clip(sd: dict, prefix: str) -> dict:
    """HF-layout CLIP tensors under ``prefix`` (ending 'text_model.') -> bare transformers-5 keys
    (``embeddings.*``, ``encoder.*``, ``final_layer_norm.*``); drops the non-persistent ``position_ids``."""
    return {k[len(prefix):]: v for k, v in sd.items()
            if k.startswith(prefix) and not k.endswith("embeddings.position_ids")}


_OPENCLIP_RENAMES = ((".ln_1.", ".layer_norm1."), (".ln_2.", ".layer_norm2."), (".mlp.c_fc.", ".mlp.fc1."),
                     (".mlp.c_proj.", ".mlp.fc2."), (".attn.out_proj.", ".self_attn.out_proj."))


def convert_openclip(sd: dict, prefix: str, num_layers: int, projection: bool) -> dict:
    """OpenCLIP text tensors -> bare transformers-5 CLIP keys; ``in_proj`` is split into q/k/v views (no
    copy); resblocks >= ``num_layers`` are dropped; ``text_projection`` [hidden, proj] becomes
    ``text_projection.weight`` [proj, hidden] when ``projection``."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if name == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = v
        elif name == "positional_embedding":
            out["embeddings.position_embedding.weight"] = v
        elif name.startswith("ln_final."):
            out["final_layer_norm." + name.split(".", 1)[1]] = v
        elif name == "text_projection":
            if projection:
                out["text_projection.weight"] = v.T.contiguous()
        elif name.startswith("transformer.resblocks."):
            idx = int(name.split(".")[2])
            if idx >= num_layers:
                continue
            rest = "." + name.split(".", 3)[3]
            base = f"encoder.layers.{idx}"
            if rest in (".attn.in_proj_weight", ".attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for part, t in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{base}.self_attn.{part}.{kind}"] = t
                continue
            for old, new in _OPENCLIP_RENAMES:
                rest = rest.replace(old, new)
            out[base + rest] = v
    return out


def instantiate(factory, state_dict: dict, device=None):
    """Build ``factory()`` with empty (meta) parameters and adopt ``state_dict`` tensors as its parameters
    (``assign=True``: no copy). Buffers are built normally, then moved to ``device``. Every parameter must be
    provided; extra keys are an error. Returns the module in eval mode with ``requires_grad`` off."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = factory()
    expected = set(module.state_dict().keys())
    if not any(k.startswith("text_model.") for k in state_dict) and any(k.startswith("text_model.") for k in expected):
        state_dict = {"text_model." + k if not k.startswith("text_projection") else k: v
                      for k, v in state_dict.items()}
    missing, extra = expected - set(state_dict), set(state_dict) - expected
    if missing or extra:
        raise CheckpointError(f"{type(module).__name__}: inferred config does not match the weights: "
                              f"missing {sorted(missing)[:5]} ({len(missing)}), unexpected {sorted(extra)[:5]} "
                              f"({len(extra)})")
    module.load_state_dict(state_dict, strict=True, assign=True)
    if device is not None:
        module.to(device)
    return module.requires_grad_(False).eval()


def use_sdpa(module) -> None:
    """Make every diffusers attention layer in ``module`` use ``AttnProcessor2_0`` (torch SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(module, "set_attn_processor"):
        module.set_attn_processor(AttnProcessor2_0())


def build_unet(config: dict, sd: dict, device=None):
    """``UNet2DConditionModel`` from an inferred config and LDM UNet tensors."""
    from diffusers import UNet2DConditionModel

    m = instantiate(lambda: UNet2DConditionModel(**config), convert_unet(sd, config), device)
    use_sdpa(m)
    return m


def build_vae(config: dict, sd: dict, device=None):
    """``AutoencoderKL`` from an inferred config and LDM (or diffusers-layout, see ``convert_vae_any``) tensors."""
    from diffusers import AutoencoderKL

    m = instantiate(lambda: AutoencoderKL(**config), convert_vae_any(sd, config), device)
    use_sdpa(m)
    return m


def build_text_encoder(plan: TextEncoderPlan, sd: dict, device=None):
    """``CLIPTextModel`` (or ``...WithProjection``) from a plan and its checkpoint tensors."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**plan.config)
    cls = CLIPTextModelWithProjection if plan.projection else CLIPTextModel
    if plan.layout == "openclip":
        conv = convert_openclip(sd, plan.prefix, plan.config["num_hidden_layers"], plan.projection)
    else:
        conv = convert_clip(sd, plan.prefix)
    return instantiate(lambda: cls(cfg), conv, device)


# ----------------------------------------------------------------------------- standalone VAE files
def vae_file_plan(header: Header) -> tuple[str, dict]:
    """('ldm'|'diffusers', AutoencoderKL config) for a standalone VAE file (scaling factor 0.18215: shapes
    can't tell an SDXL VAE apart; latents are scaled by the MODEL's factor, see models.py)."""
    shapes = header.shapes
    if any(k.startswith("encoder.down_blocks.") for k in shapes):
        levels = _indices(shapes, "encoder.down_blocks.")
        mid_attn = any(k.startswith("encoder.mid_block.attentions.0.") for k in shapes)
        return "diffusers", {
            "in_channels": shapes["encoder.conv_in.weight"][1],
            "out_channels": shapes["decoder.conv_out.weight"][0],
            "down_block_types": ["DownEncoderBlock2D"] * len(levels),
            "up_block_types": ["UpDecoderBlock2D"] * len(levels),
            "block_out_channels": [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in levels],
            "layers_per_block": len(_indices(shapes, "encoder.down_blocks.0.resnets.")),
            "latent_channels": shapes["decoder.conv_in.weight"][1], "sample_size": 512,
            "scaling_factor": 0.18215, "mid_block_add_attention": mid_attn,
            "use_quant_conv": "quant_conv.weight" in shapes, "use_post_quant_conv": "post_quant_conv.weight" in shapes}
    return "ldm", infer_vae_config(shapes, vae_prefix(shapes), 0.18215)


_OLD_VAE_ATTN = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def convert_vae_any(sd: dict, config: dict) -> dict:
    """VAE tensors in LDM or diffusers layout (old ``query/key/value/proj_attn`` names too) -> diffusers."""
    if not any(".down_blocks." in k for k in sd):
        return convert_vae(sd, config)
    out = {}
    for k, v in sd.items():
        for old, new in _OLD_VAE_ATTN.items():
            k = k.replace(old, new)
        if ".attentions." in k and k.endswith(".weight") and v.ndim == 4:
            v = v[:, :, 0, 0]
        out[k] = v
    return out


# ------------------------------------------------------------------------------------- diffusers folders
def plan_diffusers_folder(path: str | Path) -> CheckpointPlan:
    """A CheckpointPlan for a diffusers folder (model_index.json); configs come from its json files.
    Text encoder plans use layout 'diffusers' with ``prefix`` = subfolder name."""
    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    ucfg = json.loads((path / "unet" / "config.json").read_text())
    if ucfg.get("addition_embed_type") == "text_time":
        arch = "sdxl"
    elif ucfg.get("use_linear_projection") or ucfg.get("cross_attention_dim") == 1024:
        arch = "sd2"
    else:
        arch = "sd1"
    sched = path / "scheduler" / "scheduler_config.json"
    pred = json.loads(sched.read_text()).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    vae_json = path / "vae" / "config.json"
    vae = json.loads(vae_json.read_text()) if vae_json.is_file() else None
    tes = [TextEncoderPlan("diffusers", sub, {}, projection=index[sub][1] == "CLIPTextModelWithProjection")
           for sub in ("text_encoder", "text_encoder_2") if (index.get(sub) or [None])[0]]
    sf = (vae or {}).get("scaling_factor", SCALING_FACTOR[arch])
    return CheckpointPlan(arch, pred, ucfg, vae, "vae", tes, sf)


def ldm_unet_module_map(keys, config: dict) -> dict[str, str]:
    """{LDM module name with '_' for '.' (no 'model.diffusion_model.'): diffusers module name}, for kohya
    LoRAs named after LDM modules. Computed by running the key converter on the key names themselves."""
    conv = convert_unet({k: k for k in keys if k.startswith(UNET_PREFIX)}, config)
    out = {}
    for dk, lk in conv.items():
        out[lk[len(UNET_PREFIX):].rpartition(".")[0].replace(".", "_")] = dk.rpartition(".")[0]
    return out
