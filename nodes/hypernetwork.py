"""HypernetworkLoader (ComfyUI's name and declaration): an A1111-format hypernetwork from models/hypernetworks
(format and file rules: modelstore/hypernetwork.py) on the MODEL, as the ref option ``hypernetworks`` (a tuple of
(path, size, mtime, strength); chained loaders stack, applied in order). Weights never change.

While the sampler runs (``patches``, called from nodes/model_patches.unet_patches), pre-hooks on every attention
layer's ``to_k`` and ``to_v`` replace their input x (the cross-attention context, or the hidden states for
self-attention) by ``x + mlp_k(x) * strength`` (``mlp_v`` for ``to_v``) when the hypernetwork has MLPs for x's
width, as A1111 applies them. The hooks stay on the shared UNet but act only for the thread that switched them on.
"""
from __future__ import annotations

import contextlib
import threading

from engine.node import Combo, Float, Node, Output, Socket

from .loaders import file_fingerprint, model_list

_LOCAL = threading.local()


def _active() -> dict:
    d = getattr(_LOCAL, "active", None)
    if d is None:
        d = _LOCAL.active = {}
    return d


def _mlps(hn, width: int, which: int, device, dtype):
    """The hypernetwork's key (0) or value (1) MLP for ``width`` on device/dtype, or None (cached per place)."""
    pair = hn.layers.get(width)
    if pair is None:
        return None
    cache = hn.__dict__.setdefault("_placed", {})
    key = (width, which, str(device), dtype)
    if key not in cache:
        import copy

        cache[key] = copy.deepcopy(pair[which]).to(device=device, dtype=dtype)
    return cache[key]


def _install(unet) -> None:
    """Pre-hooks on every attention's to_k / to_v (once per module)."""
    if getattr(unet, "_loom_hypernetwork", False):
        return
    for name, mod in unet.named_modules():
        if name.endswith((".to_k", ".to_v")) and hasattr(mod, "in_features"):
            which = 0 if name.endswith(".to_k") else 1

            def hook(m, args, which=which, key=id(unet)):
                active = _active().get(key)
                if not active:
                    return None
                x = args[0]
                for hn, strength in active:
                    mlp = _mlps(hn, x.shape[-1], which, x.device, x.dtype)
                    if mlp is not None:
                        x = x + mlp(x) * strength
                return (x,) + tuple(args[1:])
            mod.register_forward_pre_hook(hook)
    unet._loom_hypernetwork = True


def load_all(option) -> list:
    """[(Hypernetwork, strength)] of a MODEL's ``hypernetworks`` option (files cached by identity)."""
    from modelstore.hypernetwork import load

    return [(load(path, allow_pickle=True), strength) for path, _size, _mtime, strength in option]


@contextlib.contextmanager
def patches(net, model_ref):
    """The ref's hypernetworks active on ``net`` for this thread for the duration (nothing without them)."""
    option = model_ref.option("hypernetworks")
    if not option:
        yield
        return
    _install(net)
    active = _active()
    key = id(net)
    old = active.get(key)
    # pickle files were allowed (or refused) when the loader node ran; they are cached from then
    active[key] = load_all(option)
    try:
        yield
    finally:
        if old is None:
            active.pop(key, None)
        else:
            active[key] = old


class HypernetworkLoader(Node):
    """Applies an A1111-format hypernetwork (small MLPs on the key and value inputs of the attention layers) from
    models/hypernetworks (.safetensors; .pt only where pickle files are allowed) to the model, by ``strength``."""
    display_name = "HypernetworkLoader"
    category = "loaders"
    python_module = "comfy_extras.nodes_hypernetwork"
    inputs = (Socket("model", "MODEL"), Combo("hypernetwork_name", model_list("hypernetworks")),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01))
    outputs = (Output("MODEL"),)

    @classmethod
    def fingerprint(cls, env, hypernetwork_name=None, **_):
        return file_fingerprint(env, "hypernetworks", hypernetwork_name)

    def run(self, ctx, model, hypernetwork_name, strength):
        from modelstore.hypernetwork import HypernetworkError, load
        from modelstore.tensorfile import PickleRefused

        path = ctx.env.folders.resolve("hypernetworks", hypernetwork_name)
        store = ctx.env.model_store()
        try:
            hn = load(path, allow_pickle=bool(getattr(store, "allow_pickle", False)))
        except (HypernetworkError, PickleRefused) as e:
            raise ValueError(f"HypernetworkLoader: {e}") from None
        if not hn.layers:
            raise ValueError(f"HypernetworkLoader: {hypernetwork_name} has no MLPs")
        if strength == 0:
            return (model,)
        st = path.stat()
        prev = tuple(model.option("hypernetworks") or ())
        return (model.with_options(hypernetworks=prev + ((str(path), st.st_size, st.st_mtime_ns, float(strength)),)),)


NODES = [HypernetworkLoader]
