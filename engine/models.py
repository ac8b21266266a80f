"""The model store: load checkpoints/VAEs/LoRAs once, share them, keep them within a memory budget.

The only engine module that imports torch at module level. Nodes never hold modules in outputs: loaders return
``ModelRef`` objects (hashable, ~64 bytes) and call ``ref.get()`` when they run, or, when a node needs several
models at once on the device, ``with store.using(model_ref, vae_ref) as (unet, vae): ...`` (pinned: not
offloaded while the block runs). Modules handed out are shared: never mutate or ``.to()`` them.

What ``get()`` returns: MODEL -> ``diffusers.UNet2DConditionModel``; VAE -> ``diffusers.AutoencoderKL``;
CLIP -> ``TextEncoders`` (modules + tokenizers). ``ref.meta`` holds arch ('sd1'|'sd2'|'sdxl'),
``prediction_type`` ('epsilon'|'v_prediction'), ``scaling_factor`` (latent scale of the MODEL: LATENT values
stay unscaled like ComfyUI; the sampler multiplies by the MODEL's factor) and ``scheduler_config`` (diffusers
kwargs for ``SomeScheduler.from_config``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ck
from .folders import ModelFolders

log = logging.getLogger("loom.models")
TOKENIZER_DIR = Path(__file__).parent / "model_configs" / "clip_tokenizer"


# ------------------------------------------------------------------------------------- device policy
def choose_device_dtype(cuda_available: bool, bf16_supported: bool, device: str | None = None,
                        dtype: str | None = None) -> tuple[str, str]:
    """Pure policy: ('cuda'|'cpu'|given device, 'float16'|'bfloat16'|'float32').

    CUDA when present, fp16 by default there (bf16 if asked and supported, else ValueError); CPU otherwise,
    fp32 by default, bf16 opt-in (fp16 on CPU is refused: slow and lossy). ``dtype`` accepts 'fp16', 'bf16',
    'fp32', torch names, or None/'auto'."""
    names = {"fp16": "float16", "half": "float16", "float16": "float16", "bf16": "bfloat16",
             "bfloat16": "bfloat16", "fp32": "float32", "float": "float32", "float32": "float32"}
    dev = device or ("cuda" if cuda_available else "cpu")
    is_cuda = dev.startswith("cuda")
    if is_cuda and not cuda_available:
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if dtype in (None, "auto"):
        return dev, "float16" if is_cuda else "float32"
    dt = names.get(str(dtype).replace("torch.", "").lower())
    if dt is None:
        raise ValueError(f"unknown dtype {dtype!r} (use fp16, bf16 or fp32)")
    if is_cuda and dt == "bfloat16" and not bf16_supported:
        raise ValueError("bf16 requested but this GPU does not support it; use fp16")
    if not is_cuda and dt == "float16":
        raise ValueError("fp16 on CPU is not supported; use fp32 or bf16")
    return dev, dt


def default_budget(device: str) -> int:
    """Bytes of models kept resident on ``device``: 75% of GPU memory, or 50% of physical RAM on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.75)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


# ------------------------------------------------------------------------------------------ references
@dataclass(frozen=True)
class FileId:
    """Identity of a model file: resolved path, size (bytes) and mtime (ns). A changed file is a new model."""
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "FileId":
        p = Path(path).resolve()
        st = (p / "model_index.json").stat() if p.is_dir() else p.stat()
        return cls(str(p), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ModelKey:
    """Store key: file, component ('unet'|'vae'|'clip'|'vaefile' = standalone VAE file), dtype/device names and LoRA patches
    (tuple of (FileId, strength))."""
    file: FileId
    component: str
    dtype: str
    device: str
    patches: tuple = ()


@dataclass(frozen=True)
class ModelRef:
    """A cheap, hashable handle to a model in a store. ``kind`` is 'MODEL'|'CLIP'|'VAE'.
    ``meta``/``options`` are tuples of (name, value) pairs; the store is not part of equality."""
    kind: str
    key: ModelKey
    info: tuple = ()
    options: tuple = ()
    store: "ModelStore" = field(default=None, compare=False, hash=False, repr=False)

    def get(self) -> Any:
        """The live module (reloaded if it was dropped; moved back if it was offloaded)."""
        return self.store.get(self)

    @property
    def meta(self) -> dict:
        return dict(self.info)

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def with_options(self, **kw) -> "ModelRef":
        """A ref to the same module carrying extra options (e.g. ``clip_skip=-2``); options never change
        the loaded weights."""
        return replace(self, options=tuple(sorted({**dict(self.options), **kw}.items())))

    def __loom_nbytes__(self) -> int:
        return 64


@dataclass
class TextEncoders:
    """What a CLIP ref's ``get()`` returns. ``encoders[i]`` pairs with ``tokenizers[i]`` (77 tokens).
    sd1: one CLIPTextModel, use ``last_hidden_state``. sd2: one CLIPTextModel whose last layer was already
    dropped (penultimate of OpenCLIP-H), use ``last_hidden_state``. sdxl: CLIP-L CLIPTextModel +
    CLIPTextModelWithProjection (G); use ``hidden_states[-2]`` of both (no final norm), concatenated on the
    feature axis, and G's ``text_embeds`` as pooled output."""
    arch: str
    encoders: tuple
    tokenizers: tuple


@dataclass
class _Entry:
    value: Any
    nbytes: int
    where: str          # 'device' | 'offloaded'
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


def module_nbytes(value: Any) -> int:
    """Bytes of parameters+buffers (unique storages) of a module or TextEncoders."""
    mods = value.encoders if isinstance(value, TextEncoders) else (value,)
    seen, total = set(), 0
    for m in mods:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


class OutOfMemory(RuntimeError):
    """The device ran out of memory even after offloading idle models and retrying once."""


# ------------------------------------------------------------------------------------------ the store
class ModelStore:
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
                ("scheduler_config", tuple(sorted(ck.scheduler_config(plan.prediction_type).items()))))
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

    # -- memory -------------------------------------------------------------------------------------
    def resident_bytes(self, where: str = "device") -> int:
        return sum(e.nbytes for e in self._entries.values() if e.where == where)

    def loaded(self) -> list[tuple[ModelKey, str, int]]:
        """(key, 'device'|'offloaded', nbytes) for every entry, least recently used first."""
        with self._lock:
            return [(k, e.where, e.nbytes) for k, e in self._entries.items()]

    def free(self, keep_pinned: bool = True) -> None:
        """Offload (CUDA) or drop (CPU) every unpinned model, then release allocator caches."""
        with self._lock:
            for k, e in list(self._entries.items()):
                if not (keep_pinned and e.pins):
                    self._evict(k, e)
            self._empty_caches()

    def unload_all(self) -> None:
        """Drop every model (pinned ones too) and the cached file headers."""
        with self._lock:
            self._entries.clear()
            self._sources.clear()
            self._empty_caches()

    def _enforce_budget(self, keep: ModelKey) -> None:
        for k, e in list(self._entries.items()):
            if self.resident_bytes("device") <= self.budget:
                break
            if k != keep and e.pins == 0 and e.where == "device":
                self._evict(k, e)
        for k, e in list(self._entries.items()):
            if self.resident_bytes("offloaded") <= self.offload_budget:
                break
            if e.where == "offloaded" and e.pins == 0:
                del self._entries[k]
                self.stats["drops"] += 1

    def _evict(self, k: ModelKey, e: _Entry) -> None:
        if self.offload_to and e.where == "device":
            self._move(e.value, self.offload_to)
            e.where = "offloaded"
            self.stats["offloads"] += 1
        elif e.where == "device" or not self.offload_to:
            del self._entries[k]
            self.stats["drops"] += 1

    def _move(self, value: Any, device: str) -> None:
        for m in (value.encoders if isinstance(value, TextEncoders) else (value,)):
            m.to(device)

    def _empty_caches(self) -> None:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- OOM handling -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def oom_guard(self, what: str = "this step"):
        """On ``torch.cuda.OutOfMemoryError``: free caches and offload idle models, then raise ``OutOfMemory``
        with a clear message. Use ``retry_on_oom`` to retry once instead."""
        try:
            yield
        except torch.cuda.OutOfMemoryError as err:
            self.free()
            raise OutOfMemory(f"out of GPU memory in {what} (models resident: "
                              f"{self.resident_bytes() / 2**30:.2f} GiB, budget {self.budget / 2**30:.2f} GiB); "
                              "try a smaller batch/resolution or a lower budget") from err

    def retry_on_oom(self, fn: Callable, *args, what: str = "this step", **kwargs):
        """Call ``fn``; on CUDA OOM free + offload everything unpinned and call it once more, then raise
        ``OutOfMemory``. ``fn`` should fetch modules via refs inside, so the retry reloads what it needs."""
        try:
            return fn(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            log.warning("CUDA OOM in %s: offloading idle models and retrying once", what)
            self.free()
        with self.oom_guard(what):
            return fn(*args, **kwargs)

    # -- loading ------------------------------------------------------------------------------------
    def _dtype(self, dtype: str | None) -> str:
        if dtype is None:
            return self.dtype
        cuda = self.device.startswith("cuda")
        return choose_device_dtype(cuda, cuda and torch.cuda.is_bf16_supported(), self.device, dtype)[1]

    def _refuse_pickle(self, path: Path) -> None:
        if path.suffix.lower() in ck.PICKLE_SUFFIXES and not self.allow_pickle:
            raise ck.PickleRefused(f"{path.name}: pickle files can run arbitrary code when loaded; convert it to "
                                   ".safetensors, or construct ModelStore(allow_pickle=True) (then loaded with "
                                   "torch.load(weights_only=True))")

    def _source(self, path: Path, role: str) -> tuple[FileId, tuple]:
        """(FileId, (kind, header, plan)) for a file, cached by identity; reads headers only."""
        fid = FileId.of(path)
        with self._lock:
            if fid in self._sources:
                return fid, self._sources[fid]
            if path.is_dir():
                src = ("diffusers", None, ck.plan_diffusers_folder(path))
            else:
                self._refuse_pickle(path)
                if path.suffix.lower() in ck.PICKLE_SUFFIXES:
                    kind, header = "pickle", ck.header_from_state_dict(path, ck.load_pickle_state_dict(path))
                else:
                    kind, header = "safetensors", ck.read_header(path)
                src = (kind, header, ck.vae_file_plan(header) if role == "vae" else ck.plan_checkpoint(header))
            self._sources[fid] = src
            return fid, src

    def _tensors(self, kind: str, header: ck.Header, keys, dtype, device) -> dict:
        if kind == "pickle":
            sd = ck.load_pickle_state_dict(header.path)
            return {k: (sd[k].to(dtype) if sd[k].is_floating_point() else sd[k]).to(device) for k in keys}
        return ck.load_tensors(header, keys, dtype, device)

    def _build(self, key: ModelKey) -> Any:
        if key.patches:
            return self._build_patched(key)
        path = Path(key.file.path)
        if FileId.of(path) != key.file:
            raise ck.CheckpointError(f"{path.name} changed on disk since it was selected; load it again")
        kind, header, plan = self._source(path, "vae" if key.component == "vaefile" else "checkpoint")[1]
        dt, dev = getattr(torch, key.dtype), key.device
        if kind == "diffusers":
            return self._build_diffusers(path, plan, key.component, dt, dev)
        if isinstance(plan, tuple):  # standalone VAE file: (layout, config)
            m = ck.build_vae(plan[1], self._tensors(kind, header, list(header.tensors), dt, dev), dev)
        elif key.component == "unet":
            keys = ck.component_keys(header, plan, "unet")
            m = ck.build_unet(plan.unet, self._tensors(kind, header, keys, dt, dev), dev)
            m._loom_ldm_names = ck.ldm_unet_module_map(keys, plan.unet)
        elif key.component == "vae":
            m = ck.build_vae(plan.vae, self._tensors(kind, header, ck.component_keys(header, plan, "vae"), dt, dev), dev)
        else:
            encs = tuple(ck.build_text_encoder(tp, self._tensors(kind, header, ck.component_keys(header, plan, "clip", i),
                                                                 dt, dev), dev)
                         for i, tp in enumerate(plan.text_encoders))
            return TextEncoders(plan.arch, encs, tuple(self.tokenizer(tp.pad_token) for tp in plan.text_encoders))
        if self.channels_last:
            m.to(memory_format=torch.channels_last)
        return m

    def _build_diffusers(self, path: Path, plan: ck.CheckpointPlan, comp: str, dt, dev) -> Any:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        if comp in ("unet", "vae"):
            cls = UNet2DConditionModel if comp == "unet" else AutoencoderKL
            m = cls.from_pretrained(path, subfolder=comp, torch_dtype=dt, local_files_only=True).to(dev)
            ck.use_sdpa(m)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
            return m.requires_grad_(False).eval()
        encs, toks = [], []
        for tp in plan.text_encoders:
            cls = CLIPTextModelWithProjection if tp.projection else CLIPTextModel
            encs.append(cls.from_pretrained(path / tp.prefix, torch_dtype=dt, local_files_only=True)
                        .to(dev).requires_grad_(False).eval())
            tdir = path / tp.prefix.replace("text_encoder", "tokenizer")
            toks.append(self.tokenizer(folder=str(tdir)) if tdir.is_dir() else self.tokenizer(tp.pad_token))
        return TextEncoders(plan.arch, tuple(encs), tuple(toks))

    def _build_patched(self, key: ModelKey) -> Any:
        base_key = replace(key, patches=key.patches[:-1])
        lora_fid, strength = key.patches[-1]
        base_ref = ModelRef("base", base_key, store=self)
        with self.using(base_ref) as (base,):
            lora = load_lora_file(lora_fid.path, self.allow_pickle)
            if key.component == "unet":
                return apply_lora(base, lora, strength, "unet")
            encs = tuple(apply_lora(te, lora, strength, f"te{i + 1}") for i, te in enumerate(base.encoders))
            out = TextEncoders(base.arch, encs, base.tokenizers)
            out._loom_own_bytes = sum(e._loom_own_bytes for e in encs)
            return out


# ------------------------------------------------------------------------------------------------ LoRA
_LORA_SUFFIXES = ((".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_B.weight", "up"),
                  (".lora_A.weight", "down"), (".lora.up.weight", "up"), (".lora.down.weight", "down"),
                  (".alpha", "alpha"))
_LORA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te1"),
                  ("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te1"))


def load_lora_file(path: str | Path, allow_pickle: bool = False) -> dict:
    """A LoRA state dict (safetensors, or pickle via ``torch.load(weights_only=True)`` if allowed)."""
    path = Path(path)
    if path.suffix.lower() in ck.PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ck.PickleRefused(f"{path.name}: pickle LoRA refused (construct ModelStore(allow_pickle=True))")
        return ck.load_pickle_state_dict(path)
    header = ck.read_header(path)
    return ck.load_tensors(header, list(header.tensors))


def _norm(name: str) -> str:
    name = name.replace(".", "_")
    return name[len("text_model_"):] if name.startswith("text_model_") else name


def parse_lora(lora_state: dict) -> dict[tuple[str, str], dict]:
    """Group LoRA tensors: {(component 'unet'|'te1'|'te2', normalized target name): {'up','down','alpha'}}.
    Supports kohya/A1111 (``lora_unet_*``, ``lora_te[12]_*`` with lora_up/lora_down/alpha) and diffusers/peft
    (``unet.*``/``text_encoder[_2].*`` with lora_A/lora_B or lora.up/lora.down). Unknown keys -> ('?', key)."""
    groups: dict[tuple[str, str], dict] = {}
    for k, v in lora_state.items():
        suffix = next(((s, r) for s, r in _LORA_SUFFIXES if k.endswith(s)), None)
        prefix = next(((p, c) for p, c in _LORA_PREFIXES if k.startswith(p)), None)
        if suffix is None or prefix is None:
            groups.setdefault(("?", k), {})
            continue
        target = _norm(k[len(prefix[0]):-len(suffix[0])])
        groups.setdefault((prefix[1], target), {})[suffix[1]] = v
    return groups


def _component_of(module) -> str:
    name = type(module).__name__
    return "unet" if "UNet" in name else ("te2" if "WithProjection" in name else "te1")


def _shallow_clone(m: torch.nn.Module) -> torch.nn.Module:
    """A module tree sharing every tensor with ``m`` but with its own Parameter objects and dicts, so
    replacing (or ``.to()``-moving) a parameter in one never affects the other."""
    new = m.__class__.__new__(m.__class__)
    new.__dict__ = dict(m.__dict__)
    new._parameters = {k: (None if p is None else torch.nn.Parameter(p.data, requires_grad=False))
                       for k, p in m._parameters.items()}
    new._buffers = dict(m._buffers)
    new._modules = {k: (None if c is None else _shallow_clone(c)) for k, c in m._modules.items()}
    return new


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha, shape) -> torch.Tensor:
    """(alpha/rank) * up @ down in fp32, reshaped to the target weight ``shape`` (linear or conv)."""
    rank = down.shape[0]
    scale = float(alpha) / rank if alpha is not None else 1.0
    d = up.float().flatten(1) @ down.float().flatten(1)
    return (d * scale).reshape(shape)


def apply_lora(module, lora_state: dict, strength: float, component: str | None = None):
    """A patched copy of a UNet or CLIP text encoder: W' = W + strength * alpha/rank * up @ down for every
    matched Linear/Conv weight. The base module is not mutated; unchanged tensors are shared, so the extra
    memory is only the patched weights (``patched._loom_own_bytes``). Unmatched keys of this component are
    logged and listed in ``patched._loom_lora_unmatched``."""
    component = component or _component_of(module)
    index = {_norm(n): n for n, _ in module.named_modules() if n}
    ldm = getattr(module, "_loom_ldm_names", None) or {}
    targets, unmatched = {}, []
    for (comp, target), parts in parse_lora(lora_state).items():
        if comp != component:
            continue
        name = index.get(target) or ldm.get(target)
        if name is None or "up" not in parts or "down" not in parts:
            unmatched.append(target)
            continue
        targets[name] = parts
    patched = _shallow_clone(module)
    own = 0
    mods = dict(patched.named_modules())
    for name, p in targets.items():
        w = mods[name]._parameters["weight"]
        neww = (w.data.float() + strength * lora_delta(p["up"].to(w.device), p["down"].to(w.device), p.get("alpha"),
                                                       w.shape)).to(w.dtype)
        mods[name]._parameters["weight"] = torch.nn.Parameter(neww, requires_grad=False)
        own += neww.numel() * neww.element_size()
    if unmatched:
        log.warning("LoRA: %d %s keys not applied, e.g. %s", len(unmatched), component, unmatched[:3])
    patched._loom_own_bytes = own
    patched._loom_lora_unmatched = unmatched
    patched._loom_lora_applied = len(targets)
    return patched
