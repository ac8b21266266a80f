"""Single-file checkpoints: the public face of reading, planning and building, split by concept into

- ``modelstore.tensorfile``: safetensors headers, per-tensor reads, pickle state dicts, ``CheckpointError``;
- ``modelstore.arch``: architecture detection and config inference from tensor shapes (key prefixes, rules);
- ``modelstore.plan``: ``CheckpointPlan``/``TextEncoderPlan`` for checkpoints, standalone VAEs, diffusers folders;
- ``modelstore.convert``: LDM/OpenCLIP -> diffusers/transformers key conversion;
- ``modelstore.build``: diffusers/transformers modules from configs + tensors, without a second weight copy.

Every name stays importable from here (``from modelstore import checkpoint as ck``). Like its parts, this module
does not import torch: torch/diffusers are imported lazily inside functions.
"""
from __future__ import annotations

from .arch import (SCALING_FACTOR, SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX,
                   UNET_PREFIX, VAE_PREFIXES, detect_arch, detect_prediction_type, infer_clip_config,
                   infer_openclip_config, infer_unet_config, infer_vae_config, scheduler_config, vae_prefix)
from .build import build_text_encoder, build_unet, build_vae, instantiate, use_sdpa
from .convert import (convert_clip, convert_openclip, convert_unet, convert_vae, convert_vae_any,
                      ldm_unet_module_map)
from .plan import (CheckpointPlan, TextEncoderPlan, component_keys, plan_checkpoint, plan_diffusers_folder,
                   vae_file_plan)
from .tensorfile import (PICKLE_SUFFIXES, CheckpointError, Header, PickleRefused, TensorInfo,
                         header_from_state_dict, load_pickle_state_dict, load_tensors, read_header)

__all__ = ["SCALING_FACTOR", "SD1_CLIP_PREFIX", "SD2_CLIP_PREFIX", "SDXL_CLIP_G_PREFIX", "SDXL_CLIP_L_PREFIX",
           "UNET_PREFIX", "VAE_PREFIXES", "detect_arch", "detect_prediction_type", "infer_clip_config",
           "infer_openclip_config", "infer_unet_config", "infer_vae_config", "scheduler_config", "vae_prefix",
           "build_text_encoder", "build_unet", "build_vae", "instantiate", "use_sdpa", "convert_clip",
           "convert_openclip", "convert_unet", "convert_vae", "convert_vae_any", "ldm_unet_module_map",
           "CheckpointPlan", "TextEncoderPlan", "component_keys", "plan_checkpoint", "plan_diffusers_folder",
           "vae_file_plan", "PICKLE_SUFFIXES", "CheckpointError", "Header", "PickleRefused", "TensorInfo",
           "header_from_state_dict", "load_pickle_state_dict", "load_tensors", "read_header"]
