"""The model store: load checkpoints/VAEs/LoRAs once, share them, keep them within a memory budget.

Nodes never hold modules in outputs: loaders return
``ModelRef`` objects (hashable, ~64 bytes) and call ``ref.get()`` when they run, or, when a node needs several
models at once on the device, ``with store.using(model_ref, vae_ref) as (unet, vae): ...`` (pinned: not
offloaded while the block runs). Modules handed out are shared: never mutate or ``.to()`` them.

What ``get()`` returns: MODEL -> ``diffusers.UNet2DConditionModel``; VAE -> ``diffusers.AutoencoderKL``;
CLIP -> ``TextEncoders`` (modules + tokenizers). ``ref.meta`` holds arch ('sd1'|'sd2'|'sdxl'),
``prediction_type`` ('epsilon'|'v_prediction'), ``scaling_factor`` (latent scale of the MODEL: LATENT values
stay unscaled like ComfyUI; the sampler multiplies by the MODEL's factor) and ``scheduler_config`` (diffusers
kwargs for ``SomeScheduler.from_config``).

The store is split by concept; every name below stays importable from here:
``modelstore.refs`` (FileId, ModelKey, ModelRef, TextEncoders, module_nbytes), ``modelstore.devices`` (device/dtype
policy, default budget, OutOfMemory), ``modelstore.residency`` (budget, offload/drop, free, OOM guard),
``modelstore.loading`` (headers -> modules, LoRA-patched copies), ``modelstore.lora`` (LoRA files and patching).
These are the engine's model-store modules, the only ones that may import torch at module level (``refs``
does not); ``modelstore.checkpoint`` and ``engine.folders`` stay torch-free.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .arch import scheduler_config
from .devices import OutOfMemory, choose_device_dtype, default_budget
from engine.folders import ModelFolders
from .loading import Loading
from .lora import apply_lora, load_lora_file, lora_delta, parse_lora
from .refs import FileId, ModelKey, ModelRef, TextEncoders, module_nbytes
from .residency import Residency, _Entry

TOKENIZER_DIR = Path(__file__).parent / "model_configs" / "clip_tokenizer"

__all__ = ["ModelStore", "TOKENIZER_DIR", "OutOfMemory", "choose_device_dtype", "default_budget", "FileId",
           "ModelKey", "ModelRef", "TextEncoders", "module_nbytes", "apply_lora", "load_lora_file", "lora_delta",
           "parse_lora"]


class ModelStore(Loading, Residency):
    """Loads and shares models, keyed by ``ModelKey``; thread-safe.

    ``budget_bytes``: models resident on the device; beyond it the least recently used unpinned entries are
    offloaded to CPU (CUDA stores; bounded by ``offload_budget_bytes``, default = budget) or dropped (CPU
    stores). ``allow_pickle``: accept .ckpt/.pt/.bin/.pth via ``torch.load(weights_only=True)``.
    ``channels_last``: put UNet/VAE conv weights in channels-last memory format."""

    def __init__(self, folders: ModelFolders, device: str | None = None, dtype: str | None = None,
                 budget_bytes: int | None = None, allow_pickle: bool = False, channels_last: bool = False,
                 offload_budget_bytes: int | None = None):
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
        self.folders = folders
        self.device, self.dtype = choose_device_dtype(cuda, bf16, device, dtype)
        self.budget = budget_bytes if budget_bytes is not None else default_budget(self.device)
        self.offload_to = "cpu" if self.device.startswith("cuda") else None
        self.offload_budget = offload_budget_bytes if offload_budget_bytes is not None else self.budget
        self.allow_pickle = allow_pickle
        self.channels_last = channels_last
        self._entries: OrderedDict[ModelKey, _Entry] = OrderedDict()
        self._sources: dict[FileId, tuple] = {}
        self._tokenizers: dict[tuple, Any] = {}
        self._lock = threading.RLock()
        self.stats = {"loads": 0, "hits": 0, "offloads": 0, "drops": 0, "load_seconds": 0.0}

    # -- public loaders: cheap, read headers only ---------------------------------------------------
    def load_checkpoint(self, name: str, dtype: str | None = None) -> tuple[ModelRef, ModelRef | None,
                                                                            ModelRef | None]:
        """(MODEL, CLIP, VAE) refs for ``checkpoints/<name>`` (single file or diffusers folder). Weights load
        on first ``get()``. CLIP/VAE are None if the file has none."""
        path = self.folders.resolve("checkpoints", name)
        fid, (kind, header, plan) = self._source(path, "checkpoint")
        dt = self._dtype(dtype)
        info = (("arch", plan.arch), ("name", name), ("prediction_type", plan.prediction_type),
                ("scaling_factor", plan.scaling_factor), ("inpaint", plan.inpaint),
                ("scheduler_config", tuple(sorted(scheduler_config(plan.prediction_type).items()))))
        mk = lambda comp, k: ModelRef(k, ModelKey(fid, comp, dt, self.device), info, store=self)
        clip = mk("clip", "CLIP") if plan.text_encoders else None
        vae = mk("vae", "VAE") if plan.vae else None
        return mk("unet", "MODEL"), clip, vae

    def load_vae(self, name: str, dtype: str | None = None) -> ModelRef:
        """VAE ref for ``vae/<name>`` (LDM or diffusers key layout)."""
        fid, _ = self._source(self.folders.resolve("vae", name), "vae")
        return ModelRef("VAE", ModelKey(fid, "vaefile", self._dtype(dtype), self.device), (("name", name),), store=self)

    def load_lora(self, model: ModelRef | None, clip: ModelRef | None, name: str, strength_model: float,
                  strength_clip: float) -> tuple[ModelRef | None, ModelRef | None]:
        """Refs to LoRA-patched copies of ``model``/``clip`` (``loras/<name>``); strength 0 returns the input."""
        fid = FileId.of(self.folders.resolve("loras", name))
        self._refuse_pickle(Path(fid.path))
        out = []
        for ref, s in ((model, strength_model), (clip, strength_clip)):
            if ref is None or float(s) == 0.0:
                out.append(ref)
            else:
                out.append(replace(ref, key=replace(ref.key, patches=ref.key.patches + ((fid, float(s)),))))
        return out[0], out[1]

    # -- access -------------------------------------------------------------------------------------
    def get(self, ref: ModelRef) -> Any:
        """The live object for ``ref`` on the store's device (loading, reloading or un-offloading it)."""
        with self._lock:
            e = self._entries.get(ref.key)
            if e is None:
                t0 = time.perf_counter()
                value = self._build(ref.key)
                nb = getattr(value, "_loom_own_bytes", None)
                nb = module_nbytes(value) if nb is None else nb
                e = self._entries[ref.key] = _Entry(value, nb, "device")
                self.stats["loads"] += 1
                self.stats["load_seconds"] += time.perf_counter() - t0
            else:
                self.stats["hits"] += 1
                if e.where == "offloaded":
                    self._move(e.value, self.device)
                    e.where = "device"
            self._entries.move_to_end(ref.key)
            e.last_used = time.monotonic()
            self._enforce_budget(keep=ref.key)
            return e.value

    @contextlib.contextmanager
    def using(self, *refs: ModelRef):
        """Pin ``refs`` while the block runs; yields their live objects (a tuple)."""
        values = []
        with self._lock:
            for r in refs:
                values.append(self.get(r))
                self._entries[r.key].pins += 1
        try:
            yield tuple(values)
        finally:
            with self._lock:
                for r in refs:
                    if r.key in self._entries:
                        self._entries[r.key].pins -= 1

    def tokenizer(self, pad_token: str = "<|endoftext|>", folder: str | None = None):
        """The CLIP BPE tokenizer (bundled files, or a diffusers folder's ``tokenizer*/``), cached."""
        from transformers import CLIPTokenizer

        key = (pad_token, folder)
        with self._lock:
            if key not in self._tokenizers:
                src = folder or TOKENIZER_DIR
                self._tokenizers[key] = CLIPTokenizer.from_pretrained(src, local_files_only=True, pad_token=pad_token)
            return self._tokenizers[key]
