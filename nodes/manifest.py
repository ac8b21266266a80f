"""Run manifest: what it takes to reproduce an output.

``build_manifest(prompt, env)`` reads an API-format prompt (what SaveImage receives as its hidden PROMPT input) and
returns a JSON-ready dict:

- ``models``: every model file a loader node names (checkpoints, VAEs, LoRAs, upscale models) with its kind,
  size and sha256 (hashes are cached per path+size+mtime, so a 2 GiB checkpoint is hashed once per process);
- ``nodes``: class_type and node version of every node (versions enter the cache key; a changed version means a
  changed result);
- ``sampling``: the settings of every sampling node (seed, steps, cfg, sampler, scheduler, denoise, ranges ...),
  constants as given, links as ``[node_id, output_index]``;
- ``seeds`` and the noise rule: item i of a batch uses the i-th (1,C,H,W) CPU ``randn`` draw of
  ``torch.Generator('cpu').manual_seed(seed)`` (or its ``batch_index`` entry), so any item can be re-made alone;
- ``environment``: Python, torch, diffusers, transformers versions, the store's device and dtype, the platform.

``write_manifest(path, prompt, env)`` writes it as JSON next to an output. Nothing here writes images; SaveImage
(nodes/image.py) can call these functions.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import threading
from pathlib import Path
from typing import Any

LOADER_FILES = {  # class_type -> ((input name, folder kind), ...)
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoints"),),
    "VAELoader": (("vae_name", "vae"),),
    "LoraLoader": (("lora_name", "loras"),),
    "LoraLoaderModelOnly": (("lora_name", "loras"),),
    "UpscaleModelLoader": (("model_name", "upscale_models"),),
}
SAMPLING_NODES = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "RandomNoise",
                  "DisableNoise", "NoiseInterpolate", "KSamplerSelect", "BasicScheduler", "KarrasScheduler",
                  "SplitSigmas", "CFGGuider", "BasicGuider", "SchedulerStepRange", "DualCFGGuider",
                  "ExponentialScheduler", "PolyexponentialScheduler", "VPScheduler", "BetaSamplingScheduler",
                  "LaplaceScheduler", "SDTurboScheduler", "AlignYourStepsScheduler", "SplitSigmasDenoise",
                  "FlipSigmas", "SetFirstSigma", "ExtendIntermediateSigmas", "ModelSamplingDiscrete",
                  "ModelSamplingContinuousEDM", "ModelSamplingContinuousV", "ModelSamplingSD3",
                  "ModelSamplingAuraFlow", "ModelSamplingFlux", "RescaleCFG", "CFGNorm"}
SAMPLING_NODES |= {n for n in ("SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerLMS",
                               "SamplerDPMPP_3M_SDE", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE",
                               "SamplerDPMPP_2S_Ancestral", "SamplerDPMAdaptative", "SamplerER_SDE", "SamplerSASolver")}
SEED_INPUTS = ("seed", "noise_seed", "seed_a", "seed_b")
NOISE_RULE = ("ComfyUI's: torch.manual_seed(seed) then one CPU torch.randn of the latent's shape (with batch_index, "
              "max(index)+1 separate (1,C,H,W) draws picked by index); step noise from a CPU generator seeded with "
              "the seed (a torchsde Brownian tree for the dpmpp_*sde samplers)")

_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (or of a diffusers folder's files in sorted order), cached by path, size and mtime."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def _folders(env):
    """The environment's folder service (listing/resolving never creates the model store)."""
    folders = getattr(env, "folders", None)
    if folders is None:
        from engine.folders import ModelFolders

        folders = ModelFolders(getattr(env, "models_dir", "models"))
    return folders


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "diffusers", "transformers", "safetensors"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def _value(v: Any) -> Any:
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
        return {"link": v}
    return v


def build_manifest(prompt: dict, env: Any = None, registry: Any = None, hash_files: bool = True) -> dict:
    """The manifest dict for an API-format ``prompt`` run in ``env`` (see the module docstring)."""
    if registry is None:
        from nodes import default_registry

        registry = default_registry()
    folders = _folders(env) if env is not None else None
    models, nodes, sampling, seeds = [], {}, {}, []
    for nid, spec in sorted(prompt.items(), key=lambda kv: str(kv[0])):
        if not isinstance(spec, dict):
            continue
        ct = spec.get("class_type")
        inputs = spec.get("inputs") or {}
        cls = registry.get(ct) if registry is not None else None
        nodes[str(nid)] = {"class_type": ct, "version": getattr(cls, "version", None)}
        for name, kind in LOADER_FILES.get(ct, ()):
            fname = inputs.get(name)
            if not isinstance(fname, str):
                continue
            entry = {"node": str(nid), "kind": kind, "name": fname}
            if folders is not None:
                try:
                    p = folders.resolve(kind, fname)
                    entry["size"] = p.stat().st_size if p.is_file() else None
                    if hash_files:
                        entry["sha256"] = file_sha256(p)
                except Exception as e:  # a missing file is recorded, not fatal
                    entry["error"] = f"{type(e).__name__}: {e}"[:300]
            models.append(entry)
        if ct in SAMPLING_NODES:
            sampling[str(nid)] = {"class_type": ct, **{k: _value(v) for k, v in inputs.items()
                                                      if not (isinstance(v, list) and len(v) == 2
                                                              and isinstance(v[0], str) and k in
                                                              ("model", "positive", "negative", "latent_image",
                                                               "guider", "sampler", "sigmas", "noise", "conditioning",
                                                               "clip", "vae"))}}
            for k in SEED_INPUTS:
                if isinstance(inputs.get(k), int):
                    seeds.append({"node": str(nid), "input": k, "seed": inputs[k]})
    envinfo = _versions()
    if env is not None and getattr(env, "has_model_store", False):
        store = env.model_store()
        envinfo["device"], envinfo["dtype"] = store.device, store.dtype
    return {"format": "loom-manifest/1", "models": models, "nodes": nodes, "sampling": sampling, "seeds": seeds,
            "noise": NOISE_RULE, "environment": envinfo}


def manifest_json(prompt: dict, env: Any = None, **kw) -> str:
    return json.dumps(build_manifest(prompt, env, **kw), indent=1, sort_keys=True)


def write_manifest(path: str | Path, prompt: dict, env: Any = None, **kw) -> Path:
    """Write the manifest as JSON to ``path`` (e.g. ``<image>.json`` next to a saved PNG)."""
    path = Path(path)
    path.write_text(manifest_json(prompt, env, **kw))
    return path
