"""ControlNet files: plan (architecture and diffusers config from tensor shapes, no weights read) and build (a
diffusers ``ControlNetModel``). Layouts: the original single file (``control_model.*`` or bare LDM keys:
``input_blocks``, ``zero_convs``, ``input_hint_block``, ``middle_block_out``) and diffusers' own key layout
(``controlnet_cond_embedding``, ``controlnet_down_blocks`` ...), whose config is inferred the same way; a diffusers-layout
file with a ``task_embedding`` is a ControlNet Union (``ControlNetUnionModel``).
T2I-Adapters, which ComfyUI's ControlNet loader also reads, are planned and built by ``modelstore.t2i_adapter``,
FLUX.1 ControlNets (diffusers' layout) by ``modelstore.flux_controlnet``.

"Difference" ControlNets (a ``difference`` marker tensor; the UNet-copy weights are stored as the difference
from a base model) are merged with the base UNet's weights by ``merge_difference``.
Torch and diffusers are imported lazily."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from .arch import UNET_PREFIX, freeze_config, infer_unet_config, key_indices, thaw_config
from .flux_controlnet import build_flux_controlnet, is_flux_controlnet, plan_flux_controlnet
from .t2i_adapter import build_t2i_adapter, is_t2i_adapter, plan_t2i_adapter
from .tensorfile import CheckpointError

CONTROL_ONLY = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


@dataclass(frozen=True)
class ControlNetPlan:
    """``layout`` 'ldm' | 'diffusers'; ``prefix`` of the ControlNet keys in the file; ``arch`` sd1|sd2|sdxl;
    ``config`` diffusers ControlNetModel kwargs as sorted (name, value) pairs; ``difference`` marks diff files."""
    layout: str
    prefix: str
    arch: str
    config: tuple
    difference: bool = False
    model: str = "controlnet"

    @property
    def kwargs(self) -> dict:
        return thaw_config(self.config)


def _ldm_prefix(shapes) -> str | None:
    for p in ("control_model.", ""):
        if p + "input_hint_block.0.weight" in shapes and p + "zero_convs.0.0.weight" in shapes:
            return p
    return None


def plan_controlnet(shapes: dict):
    """Plan a ControlNet (``ControlNetPlan``) or a T2I-Adapter (``modelstore.t2i_adapter.T2IAdapterPlan``) from its
    tensor shapes; CheckpointError for anything else (with what was expected)."""
    diff = "difference" in shapes
    p = _ldm_prefix(shapes)
    if p is not None:
        return _plan_ldm(shapes, p, diff)
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return _plan_diffusers(shapes, diff)
    if is_flux_controlnet(shapes):
        return plan_flux_controlnet(shapes)
    if "pos_embed_input.proj.weight" in shapes and "controlnet_blocks.0.weight" in shapes:
        raise CheckpointError("this is an SD3 ControlNet (SD3ControlNetModel): not supported yet")
    if is_t2i_adapter(shapes):  # ComfyUI's ControlNet loader reads T2I-Adapters too
        return plan_t2i_adapter(shapes)
    raise CheckpointError("not a ControlNet: expected input_hint_block/zero_convs (original layout) or "
                          "controlnet_cond_embedding (diffusers layout) tensors, or a T2I-Adapter's "
                          "(adapter.body.* or conv_in/body.*)")


def _arch(ctx_dim: int, has_label: bool) -> str:
    if has_label:
        return "sdxl"
    return "sd2" if ctx_dim == 1024 else "sd1"


def _hint_channels(shapes, p: str) -> list[int]:
    idx = key_indices(shapes, p + "input_hint_block.")
    convs = [i for i in idx if shapes.get(f"{p}input_hint_block.{i}.weight", ()) and
             len(shapes[f"{p}input_hint_block.{i}.weight"]) == 4]
    outs = [shapes[f"{p}input_hint_block.{i}.weight"][0] for i in convs[:-1]]  # the last conv is the zero conv
    if len(outs) != 7:
        raise CheckpointError(f"ControlNet hint encoder has {len(outs) + 1} convolutions; expected 8")
    return outs[0::2]


def _plan_ldm(shapes, p: str, diff: bool) -> ControlNetPlan:
    # infer_unet_config reads a UNet's keys: present the ControlNet's copy of the encoder as one (no decoder)
    fake = {UNET_PREFIX + k[len(p):]: v for k, v in shapes.items() if k.startswith(p)}
    cin = shapes[p + "input_blocks.0.0.weight"]
    fake[UNET_PREFIX + "out.2.weight"] = (cin[1], cin[0], 3, 3)
    ctx = shapes[p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1]
    arch = _arch(ctx, p + "label_emb.0.0.weight" in shapes)
    ucfg = infer_unet_config(fake, arch)
    cfg = _controlnet_kwargs(ucfg)
    cfg["conditioning_channels"] = shapes[p + "input_hint_block.0.weight"][1]
    cfg["conditioning_embedding_out_channels"] = _hint_channels(shapes, p)
    return ControlNetPlan("ldm", p, arch, freeze_config(cfg), diff)


def _plan_diffusers(shapes, diff: bool) -> ControlNetPlan:
    """Config of a diffusers-layout ControlNet from shapes (no config.json needed)."""
    levels = key_indices(shapes, "down_blocks.")
    chans = [shapes[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in levels]
    attn = [f"down_blocks.{i}.attentions.0.proj_in.weight" in shapes for i in levels]
    lpb = len(key_indices(shapes, "down_blocks.0.resnets."))
    ctx = shapes["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"][1]
    has_add = "add_embedding.linear_1.weight" in shapes
    arch = _arch(ctx, has_add)
    depth = [len(key_indices(shapes, f"down_blocks.{i}.attentions.0.transformer_blocks.")) if a else 1
             for i, a in zip(levels, attn)]
    emb = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + \
          [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0]
           for i in key_indices(shapes, "controlnet_cond_embedding.blocks.")][1::2]
    cfg = {"in_channels": shapes["conv_in.weight"][1],
           "conditioning_channels": shapes["controlnet_cond_embedding.conv_in.weight"][1],
           "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
           "block_out_channels": chans, "layers_per_block": lpb, "cross_attention_dim": ctx,
           "attention_head_dim": 8 if arch == "sd1" else [c // 64 for c in chans],
           "use_linear_projection": len(shapes["mid_block.attentions.0.proj_in.weight"]) == 2,
           "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
           "conditioning_embedding_out_channels": emb}
    if has_add:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=shapes["add_embedding.linear_1.weight"][1])
    if "task_embedding" in shapes:  # ControlNet Union (xinsir's controlnet-union-sdxl-1.0 and its promax file)
        n_types, width = shapes["task_embedding"]
        cfg.update(num_control_type=n_types, num_trans_channel=width,
                   num_trans_layer=len(key_indices(shapes, "transformer_layes.")),
                   num_proj_channel=shapes["spatial_ch_projs.weight"][0],
                   # the attention head count is not in the tensors: 8 is the published models' (and diffusers' default)
                   num_trans_head=8,
                   addition_time_embed_dim=shapes["control_add_embedding.linear_1.weight"][1] // n_types)
    return ControlNetPlan("diffusers", "", arch, freeze_config(cfg), diff)


def _controlnet_kwargs(ucfg: dict) -> dict:
    from diffusers import ControlNetModel

    allowed = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    return {k: v for k, v in ucfg.items() if k in allowed}


def controlnet_keys(shapes, plan: ControlNetPlan) -> list[str]:
    return [k for k in shapes if k.startswith(plan.prefix) and k != "difference"]


def convert_controlnet(sd: dict, plan: ControlNetPlan) -> dict:
    """File tensors -> diffusers ControlNetModel keys."""
    if plan.layout == "diffusers":
        return {k: v for k, v in sd.items() if k != "difference"}
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    p = plan.prefix
    bare = {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and k != "difference"}
    cfg = plan.kwargs
    out = convert_controlnet_checkpoint(bare, cfg)
    for i, j in (("0", "1"), ("2", "2")):  # SDXL's added (pooled text + size) embedding, not mapped by diffusers
        for t in ("weight", "bias"):
            if f"label_emb.0.{i}.{t}" in bare:
                out[f"add_embedding.linear_{j}.{t}"] = bare[f"label_emb.0.{i}.{t}"]
    return {k: v for k, v in out.items() if v is not None}


def build_controlnet(plan, sd: dict, device=None):
    """A diffusers ``ControlNetModel`` (or ``T2IAdapter`` for an adapter plan) holding ``sd``'s tensors (adopted,
    not copied)."""
    if plan.model == "t2i_adapter":
        return build_t2i_adapter(plan, sd, device)
    if plan.model == "flux_controlnet":
        return build_flux_controlnet(plan, sd, device)
    from diffusers import ControlNetModel, ControlNetUnionModel

    from .build import instantiate, use_sdpa

    cls = ControlNetUnionModel if "num_control_type" in plan.kwargs else ControlNetModel
    m = instantiate(lambda: cls(**plan.kwargs), convert_controlnet(sd, plan), device)
    use_sdpa(m)
    return m


def merge_difference(controlnet, unet):
    """A difference ControlNet made whole: every tensor it shares with ``unet`` (the encoder copy) gets the
    UNet's value added; ControlNet-only tensors (hint encoder, zero convs) are kept. Returns a new module."""
    import copy

    import torch

    base = unet.state_dict()
    out = copy.deepcopy(controlnet)
    with torch.no_grad():
        sd = out.state_dict()
        for k, v in sd.items():
            if k.startswith(CONTROL_ONLY) or k not in base or base[k].shape != v.shape:
                continue
            v.add_(base[k].to(v.dtype, copy=False).to(v.device))
    return out
