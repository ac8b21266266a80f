"""The model store: load checkpoints/VAEs/LoRAs/upscale models/TAESD decoders once, share them, keep them within
a memory budget.

Nodes never hold modules in outputs: loaders return ``ModelRef`` objects (hashable, ~64 bytes, keyed by file
identity) and call ``ref.get()`` when they run, or, when a node needs several models at once on the device,
``with store.using(model_ref, vae_ref) as (unet, vae): ...`` (pinned: not offloaded while the block runs). Values
handed out are shared: never mutate or ``.to()`` them.

What ``get()`` returns: MODEL -> ``diffusers.UNet2DConditionModel``; VAE -> ``diffusers.AutoencoderKL``;
CLIP -> ``TextEncoders`` (modules + tokenizers); UPSCALE_MODEL -> ``kinds.upscale.UpscaleModel``;
TAESD_DECODER -> ``kinds.taesd.TAESDDecoder``. ``ref.meta`` of checkpoint refs holds arch ('sd1'|'sd2'|'sdxl'),
``prediction_type`` ('epsilon'|'v_prediction'), ``scaling_factor`` (latent scale of the MODEL: LATENT values stay
unscaled like ComfyUI; the sampler multiplies by the MODEL's factor) and ``scheduler_config`` (diffusers kwargs).

Built by composition: ``ModelStore`` owns a ``Residency`` (entries, budget, offload/drop, pins, OOM guard, the
lock) and a ``Loader`` (file sources, the kind loaders and checkpoint families of ``modelstore.kinds``,
tokenizers). A new model kind or family is a module in ``modelstore/kinds/``; this file does not change.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from engine.folders import ModelFolders

from .devices import OutOfMemory, choose_device_dtype, default_budget
from .loader import TOKENIZER_DIR, Loader
from .lora import apply_lora, load_lora_file, lora_delta, parse_lora
from .refs import FileId, ModelKey, ModelRef, TextEncoders, module_nbytes
from .residency import Residency

log = logging.getLogger("loom.models")

__all__ = ["ModelStore", "TOKENIZER_DIR", "OutOfMemory", "choose_device_dtype", "default_budget", "FileId",
           "ModelKey", "ModelRef", "TextEncoders", "module_nbytes", "apply_lora", "load_lora_file", "lora_delta",
           "parse_lora"]


class ModelStore:
    """Loads and shares models, keyed by ``ModelKey``; thread-safe.

    ``budget_bytes``: models resident on the device; beyond it the least recently used unpinned entries are
    offloaded to CPU (CUDA stores; bounded by ``offload_budget_bytes``, default = budget) or dropped (CPU
    stores). ``allow_pickle``: accept .ckpt/.pt/.bin/.pth via ``torch.load(weights_only=True)``.
    ``channels_last``: put UNet/VAE conv weights in channels-last memory format."""

    def __init__(self, folders: ModelFolders, device: str | None = None, dtype: str | None = None,
                 budget_bytes: int | None = None, allow_pickle: bool = False, channels_last: bool = False,
                 offload_budget_bytes: int | None = None, component_dtypes: dict | None = None):
        import torch

        cuda = torch.cuda.is_available()
        self.folders = folders
        self.device, self.dtype = choose_device_dtype(cuda, cuda and torch.cuda.is_bf16_supported(), device, dtype)
        # per-socket precision ('MODEL'|'CLIP'|'VAE' -> dtype name), like ComfyUI's --bf16-unet / --fp32-vae
        self.component_dtypes = {k: self._dtype(v) for k, v in (component_dtypes or {}).items()}
        budget = budget_bytes if budget_bytes is not None else default_budget(self.device)
        self.residency = Residency(self.device, budget, "cpu" if self.device.startswith("cuda") else None,
                                   offload_budget_bytes)
        self.loader = Loader(self.device, allow_pickle, channels_last, pinned=self._pinned_key)

    # -- settings and counters, owned by the parts ------------------------------------------------------
    @property
    def budget(self) -> int:
        return self.residency.budget

    @property
    def offload_to(self) -> str | None:
        return self.residency.offload_to

    @offload_to.setter
    def offload_to(self, where: str | None) -> None:
        self.residency.offload_to = where

    @property
    def stats(self) -> dict:
        return self.residency.stats

    @property
    def allow_pickle(self) -> bool:
        return self.loader.allow_pickle

    # -- public loaders: cheap, read headers only -----------------------------------------------------
    def load_checkpoint(self, name: str, dtype: str | None = None) -> tuple[ModelRef, ModelRef | None,
                                                                            ModelRef | None]:
        """(MODEL, CLIP, VAE) refs for ``checkpoints/<name>`` (single file or diffusers folder). Weights load
        on first ``get()``. CLIP/VAE are None if the file has none."""
        src, _, plan = self.loader.checkpoint(self.folders.resolve("checkpoints", name))
        info = (("name", name),) + tuple(plan.info())
        comps = plan.components()
        dt = lambda kind: self._dtype(dtype) if dtype is not None else self.component_dtypes.get(kind, self.dtype)
        return tuple(ModelRef(kind, ModelKey(src.fid, comps[kind], dt(kind), self.device), info, store=self)
                     if kind in comps else None for kind in ("MODEL", "CLIP", "VAE"))

    def load_vae(self, name: str, dtype: str | None = None) -> ModelRef:
        """VAE ref for ``vae/<name>`` (LDM or diffusers key layout)."""
        return self.load("vaefile", name, dtype)

    def load(self, component: str, name: str, dtype: str | None = None) -> ModelRef:
        """A ref to ``<folder>/<name>`` built by the kind loader of ``component`` ('vaefile', 'upscale', 'taesd',
        ...; its ``folder`` and ``socket`` say where the file lives and which socket type the ref feeds). Reads
        the header now, so a file the kind cannot load fails here, in the loader node."""
        kind = self.loader.loader(component)
        src, info = self.loader.describe(component, self.folders.resolve(kind.folder, name))
        dt = self._dtype(dtype) if dtype is not None else self.component_dtypes.get(kind.socket, self.dtype)
        return ModelRef(kind.socket, ModelKey(src.fid, component, dt, self.device),
                        (("name", name),) + info, store=self)

    def load_lora(self, model: ModelRef | None, clip, name: str, strength_model: float, strength_clip: float,
                  warn: Callable[[str], None] | None = None) -> tuple:
        """Refs to LoRA-patched copies of ``model``/``clip`` (``loras/<name>``); strength 0 returns the input. The
        CLIP is a checkpoint's ref or the split loaders' ``FamilyClip`` (its CLIP-L/CLIP-G files are patched).
        On a transformer-family MODEL the LoRA's names are checked now against the model file's header: none
        matching is a ``LoraError`` naming the file and some keys; partly matching calls ``warn`` with a message."""
        from .families.store import FamilyClip
        from .kinds.families import TE_LORA_COMPONENT

        fid = FileId.of(self.folders.resolve("loras", name))
        self.loader.sources.refuse_pickle(Path(fid.path))

        def patched(ref):
            return replace(ref, key=replace(ref.key, patches=ref.key.patches + ((fid, float(strength)),)))

        out = []
        for ref, strength in ((model, strength_model), (clip, strength_clip)):
            if ref is None or float(strength) == 0.0:
                out.append(ref)
            elif isinstance(ref, FamilyClip):
                self._warn_te_lora(ref, Path(fid.path), warn)
                out.append(FamilyClip(ref.type, tuple((k, patched(r) if k in TE_LORA_COMPONENT else r)
                                                      for k, r in ref.encoders), ref.options, ref.store))
            else:
                if ref.key.component in ("family_dm", "unet"):
                    for msg in self._check_family_lora(ref, Path(fid.path)):
                        log.warning("%s", msg)
                        if warn is not None:
                            warn(msg)
                out.append(patched(ref))
        return out[0], out[1]

    def _warn_te_lora(self, clip, lora_path: Path, warn) -> None:
        from .families.lora import text_encoder_warnings
        from .tensorfile import read_header

        if lora_path.suffix.lower() != ".safetensors":
            return
        for msg in text_encoder_warnings(list(read_header(lora_path).tensors), clip.kinds(), lora_path.name):
            log.warning("%s", msg)
            if warn is not None:
                warn(msg)

    def _check_family_lora(self, ref: ModelRef, lora_path: Path) -> list[str]:
        """Header-only match of a LoRA file against a transformer-family diffusion model (see families.lora)."""
        from .families.lora import header_check, layout
        from .kinds.checkpoint import plan_of
        from .tensorfile import read_header

        if lora_path.suffix.lower() != ".safetensors":
            return []
        ctx = self.loader.context()
        src = self.loader.sources.open(Path(ref.key.file.path))
        if ref.key.component == "unet":
            fam, cplan = plan_of(src, ctx)
            if fam.name != "transformer":
                return []
            plan, prefix = cplan.dm, "model.diffusion_model."
        else:
            plan = self.loader.loader("family_dm").plan(src, ctx)
            prefix = plan.prefix
        shapes = {k[len(prefix):]: v for k, v in src.header.shapes.items() if k.startswith(prefix)}
        lay = self.loader.sources.plan(src, "family_lora_layout", lambda s: layout(plan.family, plan.config, shapes))
        return header_check(lay, plan.family, read_header(lora_path).tensors, lora_path.name)

    # -- access -----------------------------------------------------------------------------------------
    def get(self, ref: ModelRef) -> Any:
        """The live object for ``ref`` on the store's device (loading, reloading or un-offloading it)."""
        return self._get_key(ref.key)

    def _get_key(self, key: ModelKey) -> Any:
        with self.residency.lock:           # held across a miss: one key is built once
            value = self.residency.lookup(key)
            if value is None:
                t0 = time.perf_counter()
                value, nbytes = self.loader.build(key)
                self.residency.admit(key, value, nbytes, time.perf_counter() - t0)
            return value

    @contextlib.contextmanager
    def using(self, *refs: ModelRef):
        """Pin ``refs`` while the block runs; yields their live objects (a tuple)."""
        with contextlib.ExitStack() as stack:
            yield tuple(stack.enter_context(self._pinned_key(r.key)) for r in refs)

    @contextlib.contextmanager
    def _pinned_key(self, key: ModelKey):
        with self.residency.lock:
            value = self._get_key(key)
            self.residency.pin(key, +1)
        try:
            yield value
        finally:
            self.residency.pin(key, -1)

    def tokenizer(self, pad_token: str = "<|endoftext|>", folder: str | None = None):
        """The CLIP BPE tokenizer (bundled files, or a diffusers folder's ``tokenizer*/``), cached."""
        return self.loader.tokenizer(pad_token, folder)

    # -- memory -----------------------------------------------------------------------------------------
    def resident_bytes(self, where: str = "device") -> int:
        return self.residency.resident_bytes(where)

    def loaded(self) -> list[tuple[ModelKey, str, int]]:
        """(key, 'device'|'offloaded', nbytes) for every entry, least recently used first."""
        return self.residency.loaded()

    def free(self, keep_pinned: bool = True) -> None:
        """Offload (CUDA) or drop (CPU) every unpinned model, then release allocator caches."""
        self.residency.free(keep_pinned)

    def unload_all(self) -> None:
        """Drop every model (pinned ones too) and the cached file headers."""
        with self.residency.lock:
            self.residency.clear()
            self.loader.clear()

    def oom_guard(self, what: str = "this step"):
        """See ``Residency.oom_guard``."""
        return self.residency.oom_guard(what)

    def retry_on_oom(self, fn: Callable, *args, what: str = "this step", **kwargs):
        """See ``Residency.retry_on_oom``."""
        return self.residency.retry_on_oom(fn, *args, what=what, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------
    def _dtype(self, dtype: str | None) -> str:
        if dtype is None:
            return self.dtype
        import torch

        cuda = self.device.startswith("cuda")
        return choose_device_dtype(cuda, cuda and torch.cuda.is_bf16_supported(), self.device, dtype)[1]
