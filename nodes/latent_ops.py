"""Latent arithmetic, transforms and batches (ComfyUI's names and semantics): add/subtract/multiply/interpolate,
flip/rotate/crop, masked composite, batch joins and seed behaviour, concat/cut, save/load ``.latent`` files and
AddNoise. LATENT is ``{"samples": (B,4,h,w), "noise_mask"?, "batch_index"?}``, values unscaled (the MODEL's
scaling factor is applied by the sampler). Every node copies: inputs are shared, immutable values."""
from __future__ import annotations

import json

from engine.node import MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output, Result, Socket, String

from .latents import common_upscale


def _copy(latent: dict, samples: torch.Tensor, **kw) -> dict:
    out = dict(latent)
    out["samples"] = samples
    out.update(kw)
    return out


def _match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b`` resized to ``a``'s spatial size (bilinear, centre crop to the aspect), as ComfyUI's latent maths does."""
    if a.shape[-2:] != b.shape[-2:]:
        b = common_upscale(b, a.shape[-1], a.shape[-2], "bilinear", "center")
    return b


def _batch_to(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if b.shape[0] == a.shape[0] or b.shape[0] != 1:
        return b
    return b.expand(a.shape[0], *b.shape[1:])


class LatentAdd(Node):
    """samples1 + samples2 (samples2 resized to samples1's size)."""
    display_name = "LatentAdd"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2):
        a = samples1["samples"]
        return (_copy(samples1, a + _batch_to(a, _match(a, samples2["samples"]))),)


class LatentSubtract(Node):
    """samples1 - samples2 (samples2 resized to samples1's size)."""
    display_name = "LatentSubtract"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2):
        a = samples1["samples"]
        return (_copy(samples1, a - _batch_to(a, _match(a, samples2["samples"]))),)


class LatentMultiply(Node):
    """samples x multiplier."""
    display_name = "LatentMultiply"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples", "LATENT"), Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, multiplier):
        return (_copy(samples, samples["samples"] * multiplier),)


class LatentInterpolate(Node):
    """Interpolates the per-pixel channel vectors: directions are mixed ``ratio : 1-ratio`` and renormalised,
    magnitudes are mixed linearly (ratio 1 = samples1, 0 = samples2)."""
    display_name = "LatentInterpolate"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Float("ratio", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2, ratio):
        import torch

        a = samples1["samples"]
        b = _batch_to(a, _match(a, samples2["samples"]))
        na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
        ua = torch.nan_to_num(a / na, nan=0.0)
        ub = torch.nan_to_num(b / nb, nan=0.0)
        t = ua * ratio + ub * (1.0 - ratio)
        direction = torch.nan_to_num(t / t.norm(dim=1, keepdim=True), nan=0.0)
        return (_copy(samples1, direction * (na * ratio + nb * (1.0 - ratio))),)


class LatentFlip(Node):
    """Mirrors the latent: 'x-axis: vertically' flips top/bottom, 'y-axis: horizontally' flips left/right."""
    display_name = "Flip Latent"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"), Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, flip_method):
        import torch

        dim = 2 if flip_method.startswith("x") else 3
        return (_copy(samples, torch.flip(samples["samples"], dims=[dim])),)


ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


class LatentRotate(Node):
    """Rotates the latent clockwise by 90, 180 or 270 degrees."""
    display_name = "Rotate Latent"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"), Combo("rotation", ROTATIONS))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, rotation):
        import torch

        k = ROTATIONS.index(rotation)
        # dims (W, H): rotating from the width axis into the height axis turns the picture clockwise
        return (_copy(samples, torch.rot90(samples["samples"], k=k, dims=[3, 2]).contiguous()),)


class LatentCrop(Node):
    """Crops a rectangle (pixels, multiples of 8) out of the latent; the corner is clamped so that at least
    64x64 px remain."""
    display_name = "Crop Latent"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"),
              Int("width", 512, min=64, max=MAX_RESOLUTION, step=8), Int("height", 512, min=64, max=MAX_RESOLUTION, step=8),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, width, height, x, y):
        s = samples["samples"]
        x, y = x // 8, y // 8
        x = max(0, min(x, s.shape[3] - 8))
        y = max(0, min(y, s.shape[2] - 8))
        return (_copy(samples, s[:, :, y:y + height // 8, x:x + width // 8].clone()),)


class LatentCompositeMasked(Node):
    """Pastes ``source`` into ``destination`` at (x, y) pixels through ``mask`` (resized to the source; none =
    everywhere); ``resize_source`` first scales the source to the destination's size."""
    category = "latent"
    python_module = "comfy_extras.nodes_mask"
    inputs = (Socket("destination", "LATENT"), Socket("source", "LATENT"),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
              Boolean("resize_source", False), Socket("mask", "MASK", optional=True))
    outputs = (Output("LATENT"),)

    def run(self, ctx, destination, source, x, y, resize_source, mask=None):
        import torch.nn.functional as F

        from .masks import paste_masked, repeat_batch

        dest = destination["samples"].clone()
        src = source["samples"]
        if resize_source:
            src = F.interpolate(src, size=dest.shape[-2:], mode="bilinear", align_corners=False)
        paste_masked(dest, repeat_batch(src, dest.shape[0]), x // 8, y // 8, mask)  # x, y: pixels -> latent cells
        return (_copy(destination, dest),)


class LatentBatch(Node):
    """Joins two latent batches (samples2 resized to samples1's size); noise indices are concatenated."""
    display_name = "LatentBatch"
    category = "latent/batch"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2):
        import torch

        a, b = samples1["samples"], samples2["samples"]
        b = _match(a, b)
        out = {"samples": torch.cat([a, b], 0),
               "batch_index": list(samples1.get("batch_index") or range(a.shape[0]))
               + list(samples2.get("batch_index") or range(b.shape[0]))}
        return (out,)


class LatentBatchSeedBehavior(Node):
    """'random': every item gets its own noise (drops batch_index); 'fixed': every item gets the noise of the
    batch's first index, so the whole batch shares one noise."""
    display_name = "LatentBatchSeedBehavior"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples", "LATENT"), Combo("seed_behavior", ["random", "fixed"], "fixed"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, seed_behavior):
        out = dict(samples)
        if seed_behavior == "random":
            out.pop("batch_index", None)
        else:
            first = (samples.get("batch_index") or [0])[0]
            out["batch_index"] = [first] * samples["samples"].shape[0]
        return (out,)


_DIMS = {"x": -1, "y": -2, "t": -3}


class LatentConcat(Node):
    """Concatenates samples2 after samples1 along width (x), height (y) or time (t); a '-' puts it before."""
    display_name = "LatentConcat"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Combo("dim", ["x", "-x", "y", "-y", "t", "-t"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2, dim):
        import torch

        a, b = samples1["samples"], samples2["samples"]
        d = _DIMS[dim[-1]]
        if a.ndim < 5 and dim[-1] == "t":
            raise ValueError("LatentConcat: dim 't' needs video latents (B,C,T,H,W); these are images")
        pair = [b, a] if dim.startswith("-") else [a, b]
        return (_copy(samples1, torch.cat(pair, dim=d)),)


class LatentCut(Node):
    """Keeps ``amount`` rows/columns/frames starting at ``index`` (negative counts from the end)."""
    display_name = "LatentCut"
    category = "latent/advanced"
    python_module = "comfy_extras.nodes_latent"
    inputs = (Socket("samples", "LATENT"), Combo("dim", ["x", "y", "t"]),
              Int("index", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
              Int("amount", 1, min=1, max=MAX_RESOLUTION, step=1))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, dim, index, amount):
        s = samples["samples"]
        if s.ndim < 5 and dim == "t":
            raise ValueError("LatentCut: dim 't' needs video latents (B,C,T,H,W); these are images")
        d = s.ndim + _DIMS[dim]
        n = s.shape[d]
        start = index if index >= 0 else max(0, n + index)
        start = min(start, n - 1)
        return (_copy(samples, s.narrow(d, start, min(amount, n - start)).clone()),)


class SaveLatent(Node):
    """Saves latents as ``<prefix>_00001_.latent`` (safetensors: ``latent_tensor`` + the format marker, the
    prompt and workflow in the metadata) in the output folder."""
    category = "_for_testing"
    output_node = True
    inputs = (Socket("samples", "LATENT"), String("filename_prefix", "latents/ComfyUI"))
    outputs = ()
    hidden = ("PROMPT", "EXTRA_PNGINFO")

    def run(self, ctx, samples, filename_prefix, prompt=None, extra_pnginfo=None):
        import torch

        from safetensors.torch import save_file

        from .image import save_path

        s = samples["samples"]
        folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix, s.shape[-1] * 8,
                                                     s.shape[-2] * 8)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {}
        if prompt is not None:
            meta["prompt"] = json.dumps(prompt)
        for k, v in (extra_pnginfo or {}).items():
            meta[str(k)] = json.dumps(v)
        name = f"{stem}_{counter:05}_.latent"
        save_file({"latent_tensor": s.contiguous(), "latent_format_version_0": torch.tensor([])},
                  str(folder / name), metadata=meta)
        return Result(ui={"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


def _latent_files(env) -> list[str]:
    from .image import input_files

    return [f for f in input_files(env) if f.endswith(".latent")]


class LoadLatent(Node):
    """Loads a ``.latent`` file from the input folder (files without the format marker are old-style, scaled
    latents and are divided by 0.18215)."""
    category = "_for_testing"
    inputs = (Combo("latent", _latent_files),)
    outputs = (Output("LATENT"),)

    @classmethod
    def fingerprint(cls, env, latent=None, **_):
        from .image import annotated_path

        try:
            st = annotated_path(env, latent).stat()
            return (st.st_size, st.st_mtime_ns)
        except (OSError, TypeError, ValueError):
            return float("nan")

    def run(self, ctx, latent):
        from safetensors.torch import load_file

        from .image import annotated_path

        sd = load_file(str(annotated_path(ctx.env, latent)))
        mult = 1.0 if "latent_format_version_0" in sd else 1.0 / 0.18215
        return ({"samples": sd["latent_tensor"].float() * mult},)


class AddNoise(Node):
    """Adds the noise of ``noise`` to the latent at the noise level of the sigma range: latent + noise x
    (sigmas[0] - sigmas[-1]) in the model's scaled latent space (no sigmas: the latent unchanged)."""
    display_name = "AddNoise"
    category = "_for_testing/custom_sampling/noise"
    python_module = "comfy_extras.nodes_custom_sampler"
    experimental = True
    inputs = (Socket("model", "MODEL"), Socket("noise", "NOISE"), Socket("sigmas", "SIGMAS"),
              Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, model, noise, sigmas, latent_image):
        import torch

        from .sampler_core import model_sampling_of

        values = getattr(sigmas, "values", sigmas)
        if len(values) == 0 or getattr(noise, "seed", None) is None:
            return (latent_image,)
        s = latent_image["samples"].float()
        n = noise.make(s.shape, latent_image.get("batch_index"))
        sf = float(model.meta.get("scaling_factor", 0.18215))
        shift = float(model.meta.get("shift_factor", 0.0) or 0.0)
        if model.meta.get("latents_mean"):  # Qwen-Image: per-channel mean/std
            from .family_sampling import latent_affine

            sf, shift = latent_affine(model.meta)
        sigma = torch.tensor([float(values[0]) - float(values[-1])])
        ms = model_sampling_of(model)
        z = ms.noise_scaling(sigma, n, (s - shift) * sf)  # the model sampling's rule (VP: z + noise x sigma)
        z = ms.inverse_noise_scaling(sigma, z)
        return (_copy(latent_image, z / sf + shift),)


NODES = [LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentFlip, LatentRotate, LatentCrop,
         LatentCompositeMasked, LatentBatch, LatentBatchSeedBehavior, LatentConcat, LatentCut, SaveLatent,
         LoadLatent, AddNoise]
