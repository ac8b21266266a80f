"""Build diffusers / transformers modules from inferred configs and checkpoint tensors, without a second copy
of the weights (empty meta parameters, then ``load_state_dict(assign=True)``). Libraries are imported lazily."""
from __future__ import annotations

from .convert import convert_clip, convert_openclip, convert_unet, convert_vae_any
from .plan import TextEncoderPlan
from .tensorfile import CheckpointError


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
    want = module.state_dict()
    wrong = [f"{k} {tuple(state_dict[k].shape)} (the config needs {tuple(v.shape)})" for k, v in want.items()
             if tuple(state_dict[k].shape) != tuple(v.shape)]
    if wrong:  # load_state_dict would fail with torch's own text, naming neither the file nor the config
        raise CheckpointError(f"{type(module).__name__}: tensors of the wrong shape for the inferred config: "
                              f"{', '.join(wrong[:4])}" + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""))
    ints = [f"{k} ({str(state_dict[k].dtype).replace('torch.', '')})" for k, _ in module.named_parameters()
            if k in state_dict and not (state_dict[k].is_floating_point() or state_dict[k].is_complex())]
    if ints:  # load_state_dict would fail with torch's own text ("Only Tensors of floating point ... gradients")
        raise CheckpointError(f"{type(module).__name__}: weights that are not floating point: {', '.join(ints[:4])}")
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

