"""LDM / OpenCLIP state dicts -> diffusers / transformers key layouts (pure key renaming; torch-free at import)."""
from __future__ import annotations

from .arch import UNET_PREFIX


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



def ldm_unet_module_map(keys, config: dict) -> dict[str, str]:
    """{LDM module name with '_' for '.' (no 'model.diffusion_model.'): diffusers module name}, for kohya
    LoRAs named after LDM modules. Computed by running the key converter on the key names themselves."""
    conv = convert_unet({k: k for k in keys if k.startswith(UNET_PREFIX)}, config)
    out = {}
    for dk, lk in conv.items():
        out[lk[len(UNET_PREFIX):].rpartition(".")[0].replace(".", "_")] = dk.rpartition(".")[0]
    return out
