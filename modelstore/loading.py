"""How a ``ModelStore`` turns a ``ModelKey`` into a live module: file headers (cached by file identity, pickle
refused unless allowed), component tensors, diffusers/transformers modules, LoRA-patched copies. A mixin of
``ModelStore``: it uses the store's ``_sources``, ``_lock``, ``device``, ``dtype``, ``allow_pickle``,
``channels_last``, ``tokenizer()`` and ``using()``."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ck
from .devices import choose_device_dtype
from .lora import apply_lora, load_lora_file
from .refs import FileId, ModelKey, ModelRef, TextEncoders


class Loading:
    """Header planning and module building of ``ModelStore`` (see the module docstring)."""

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
        if key.component in ("family_dm", "family_te"):  # split files of the transformer families
            from .families.store import build

            return build(self, key)
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
