"""TAESD preview decoders for sampler previews: chosen from ``vae_approx/`` (``taesd_decoder.*`` for SD1/2,
``taesdxl_decoder.*`` for SDXL) and loaded through the model store (kind 'taesd', see
``modelstore.kinds.taesd``): keyed by file identity, counted in its budget. A file that fails to load is logged
once per file identity (name and reason) and the preview falls back to latent2rgb: a broken preview file never
fails a sampling run, and never fails silently. No torch at import."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("loom.preview")

PREFIX = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}

_reported: set = set()
_reported_lock = threading.Lock()


def find_decoder(env, arch: str) -> str | None:
    """The name (relative to ``vae_approx/``) of the TAESD decoder for ``arch``, or None when there is none."""
    prefix = PREFIX.get(arch, "taesd_decoder")
    for name in env.folders.list("vae_approx"):
        if name.rpartition("/")[2].startswith(prefix) and name.lower().endswith((".safetensors", ".sft")):
            return name
    return None


def preview_decoder(env, arch: str):
    """The store's TAESD decoder for ``arch`` (callable: model-space latent (B,4,h,w) -> image (B,3,8h,8w) in
    0..1), or None when the environment has no store, no decoder file, or the file failed to load (logged)."""
    if env is None or getattr(env, "model_store_factory", None) is None:
        return None
    name = find_decoder(env, arch)
    if name is None:
        return None
    ref = None
    try:
        ref = env.model_store().load("taesd", name)
        return ref.get()
    except Exception as err:  # reported once per file identity, then latent2rgb previews
        ident = ref.key.file if ref is not None else (name, str(err))
        with _reported_lock:
            first = ident not in _reported
            _reported.add(ident)
        if first:
            log.warning("TAESD preview decoder vae_approx/%s could not be loaded (%s: %s); previews use latent2rgb",
                        name, type(err).__name__, err)
        return None
