"""Model patches on the UNet's forward pass (ComfyUI's names and semantics): FreeU, FreeU_V2 and Perturbed-Attention
Guidance. A patch node returns the MODEL ref with an option (``freeu``, ``pag_scale``); weights never change.

The sampler (nodes/sampler_core.py) asks this module for what a MODEL's options mean while it samples:
``unet_patches(net, model_ref)`` (a context manager around the sampling run) and ``post_cfg_patches(...)`` (hooks
after classifier-free guidance). The hooks live on the shared module permanently but act only for the thread that
switched them on, with that thread's parameters, so other prompts using the same UNet are unaffected.

- FreeU (Si et al. 2023): in the decoder, where the backbone feature ``h`` has 4x (b1, s1) or 2x (b2, s2) the
  model's base channels, the first half of ``h``'s channels is scaled by b (V2: by 1 + (b - 1) x the per-image
  min-max-normalised channel mean) and the skip feature's low frequencies (FFT, centre 2x2) are scaled by s.
- DifferentialDiffusion (Levin & Fried 2023): the inpainting mask is thresholded per step (``mask_patch``).
- SelfAttentionGuidance (Hong et al. 2023): nodes/self_attention_guidance.py, wired in by ``sag_patch``.
- PAG (Ahn et al. 2024): the conditional prediction is made again with the middle block's self-attention replaced
  by the identity (output = value), and ``scale x (cond - perturbed)`` is added to the guided estimate.
"""
from __future__ import annotations

import contextlib
import threading

from engine.node import Float, Node, Output, Socket

_ACTIVE = threading.local()


def _state() -> dict:
    st = getattr(_ACTIVE, "state", None)
    if st is None:
        st = _ACTIVE.state = {}
    return st


# ------------------------------------------------------------------------------------------------ FreeU
def fourier_filter(x, threshold: int, scale: float):
    """x with its centred (2 threshold)^2 lowest spatial frequencies multiplied by ``scale`` (float32 FFT)."""
    import torch

    dtype = x.dtype
    f = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    H, W = f.shape[-2:]
    mask = torch.ones_like(f.real)
    cr, cc = H // 2, W // 2
    mask[..., cr - threshold:cr + threshold, cc - threshold:cc + threshold] = scale
    f = torch.fft.ifftshift(f * mask, dim=(-2, -1))
    return torch.fft.ifftn(f, dim=(-2, -1)).real.to(dtype)


def _freeu_scale(h, b: float, v2: bool):
    half = h.shape[1] // 2
    if v2:
        mean = h.mean(1, keepdim=True)
        flat = mean.flatten(1)
        lo, hi = flat.min(-1).values.view(-1, 1, 1, 1), flat.max(-1).values.view(-1, 1, 1, 1)
        factor = (b - 1.0) * ((mean - lo) / (hi - lo)) + 1.0
    else:
        factor = b
    out = h.clone()
    out[:, :half] = out[:, :half] * factor
    return out


def _install_freeu(unet) -> None:
    """Pre-hooks on every decoder resnet: its input is cat(h, skip); split it, patch, re-join (once per module)."""
    if getattr(unet, "_loom_freeu", False):
        return
    import torch

    ch = unet.config.block_out_channels[-1]  # the middle block's output feeds the first decoder resnet
    for block in unet.up_blocks:
        for res in block.resnets:
            def hook(mod, args, h_ch=ch, key=id(unet)):
                params = _state().get(("freeu", key))
                if params is None:
                    return None
                b1, b2, s1, s2, v2, base = params
                x = args[0]
                scale = {base * 4: (b1, s1), base * 2: (b2, s2)}.get(h_ch)
                if scale is None:
                    return None
                h, skip = x[:, :h_ch], x[:, h_ch:]
                h = _freeu_scale(h, scale[0], v2)
                skip = fourier_filter(skip, 1, scale[1])
                return (torch.cat([h, skip], 1),) + tuple(args[1:])
            res.register_forward_pre_hook(hook)
            ch = res.out_channels
    unet._loom_freeu = True


# ------------------------------------------------------------------------------------------------ PAG
class _PerturbableAttention:
    """Wraps a self-attention processor: identity attention (output = out-projection of the values) while the
    calling thread perturbs this UNet, else the original processor."""

    def __init__(self, original, key):
        self.original, self.key = original, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if not _state().get(("pag", self.key)):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        v = attn.to_v(hidden_states)
        out = attn.to_out[1](attn.to_out[0](v))
        if getattr(attn, "residual_connection", False):
            out = out + hidden_states
        return out / getattr(attn, "rescale_output_factor", 1.0)


def _install_pag(unet) -> None:
    if getattr(unet, "_loom_pag", False):
        return
    mid = unet.mid_block
    attns = getattr(mid, "attentions", None)
    if not attns:
        raise ValueError("Perturbed-Attention Guidance needs a UNet whose middle block has attention")
    for tb in attns[0].transformer_blocks[:1]:
        tb.attn1.processor = _PerturbableAttention(tb.attn1.processor, id(unet))
    unet._loom_pag = True


@contextlib.contextmanager
def _flag(name, unet, value=True):
    st = _state()
    key = (name, id(unet))
    old = st.get(key)
    st[key] = value
    try:
        yield
    finally:
        if old is None:
            st.pop(key, None)
        else:
            st[key] = old


# ------------------------------------------------------------------------------------------------ sampler API
@contextlib.contextmanager
def unet_patches(net, model_ref):
    """Switches on the forward-pass patches named by ``model_ref``'s options for this thread while sampling."""
    from .hypernetwork import patches as hypernetworks

    with hypernetworks(net, model_ref):  # HypernetworkLoader (ref option ``hypernetworks``)
        freeu = model_ref.option("freeu")
        if freeu is None or not hasattr(net, "up_blocks"):
            yield
            return
        _install_freeu(net)
        with _flag("freeu", net, tuple(freeu) + (net.config.block_out_channels[0],)):
            yield


def post_cfg_patches(model_ref, net, denoiser, ms) -> tuple:
    """Post-CFG hooks (``hook(denoised, cond, uncond, cfg, x, sigma) -> denoised``) for ``model_ref``'s options."""
    scale = model_ref.option("pag_scale")
    if not scale:
        return ()
    _install_pag(net)

    def pag(denoised, cond, uncond, cfg, x, sigma):
        x_in = ms.calculate_input(sigma, x)
        with _flag("pag", net):
            _, c = denoiser.outputs(x_in, ms.timestep(sigma), sigma)
        return denoised + (cond - ms.calculate_denoised(sigma, c, x)) * float(scale)
    return (pag,)


def sag_patch(model_ref, net, denoiser, ms, predict):
    """(predict, post-CFG hooks) for Self-Attention Guidance (ref option ``sag`` = (scale, blur_sigma); see
    nodes/self_attention_guidance.py); unchanged and () without it or at scale 0."""
    sag = model_ref.option("sag")
    if sag is None or not float(sag[0]):
        return predict, ()
    from .self_attention_guidance import patch

    return patch(net, denoiser, ms, predict, float(sag[0]), float(sag[1]))


def mask_patch(model_ref, ms, sigmas):
    """DifferentialDiffusion's per-step inpainting mask, or None: at each model call the soft mask becomes binary
    with a threshold that falls linearly in the model's timesteps from 1 (first sigma) to 0 (last sigma), so a
    pixel of mask value m is repainted only during the last m of the schedule; ``strength`` < 1 blends the binary
    mask with the soft one."""
    strength = model_ref.option("differential_diffusion")
    if strength is None:
        return None
    ts_from = float(ms.timestep(sigmas[0].reshape(1)).reshape(-1)[0])
    ts_to = float(ms.timestep(sigmas[-1].reshape(1)).reshape(-1)[0])

    def fn(sigma, mask):
        now = float(ms.timestep(sigma.reshape(-1)[:1]).reshape(-1)[0])
        threshold = (now - ts_to) / (ts_from - ts_to) if ts_from != ts_to else 0.0
        binary = (mask >= threshold).to(mask.dtype)
        return binary if strength >= 1.0 else binary * strength + mask * (1.0 - strength)
    return fn


# ------------------------------------------------------------------------------------------------ nodes
class FreeU(Node):
    """FreeU: re-weights the decoder's backbone (b1, b2 > 1 strengthen it) and damps the skip connections' low
    frequencies (s1, s2 < 1), for more detail without training."""
    category = "model_patches/unet"
    python_module = "comfy_extras.nodes_freelunch"
    version_2 = False
    inputs = (Socket("model", "MODEL"), Float("b1", 1.1, min=0.0, max=10.0, step=0.01),
              Float("b2", 1.2, min=0.0, max=10.0, step=0.01), Float("s1", 0.9, min=0.0, max=10.0, step=0.01),
              Float("s2", 0.2, min=0.0, max=10.0, step=0.01))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, b1, b2, s1, s2):
        return (model.with_options(freeu=(float(b1), float(b2), float(s1), float(s2), self.version_2)),)


class FreeU_V2(FreeU):
    """FreeU v2: the backbone scale follows each image's normalised mean feature (stronger where it is active)."""
    version_2 = True
    inputs = (Socket("model", "MODEL"), Float("b1", 1.3, min=0.0, max=10.0, step=0.01),
              Float("b2", 1.4, min=0.0, max=10.0, step=0.01), Float("s1", 0.9, min=0.0, max=10.0, step=0.01),
              Float("s2", 0.2, min=0.0, max=10.0, step=0.01))


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance: guides away from a prediction made with the middle block's self-attention
    switched off (identity), by ``scale`` (one extra model call per step)."""
    display_name = "PerturbedAttentionGuidance"
    category = "model_patches/unet"
    python_module = "comfy_extras.nodes_pag"
    inputs = (Socket("model", "MODEL"), Float("scale", 3.0, min=0.0, max=100.0, step=0.01, round=0.01))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, scale):
        return (model.with_options(pag_scale=float(scale)),)


class DifferentialDiffusion(Node):
    """Differential Diffusion: a soft inpainting mask says how much each pixel may change: pixels with mask m are
    repainted only during the last m of the schedule (instead of all blending the same way)."""
    display_name = "Differential Diffusion"
    category = "_for_testing"
    python_module = "comfy_extras.nodes_differential_diffusion"
    experimental = True
    inputs = (Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, strength=1.0):
        return (model.with_options(differential_diffusion=float(strength)),)


NODES = [FreeU, FreeU_V2, PerturbedAttentionGuidance, DifferentialDiffusion]
