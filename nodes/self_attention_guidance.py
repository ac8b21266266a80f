"""Self-Attention Guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using Self-Attention
Guidance"), ComfyUI's node name and declaration, written from the paper.

At every step, while the model makes its ordinary predictions, the UNet middle block's first self-attention records
how much attention each of its spatial positions receives (the attention probabilities averaged over heads and
summed over queries: 1 on average, since each query's row sums to 1). Positions receiving more than average
(> 1) form the attention mask. The unconditional pass's x0 estimate (the conditional one's when there is no
unconditional pass, cfg 1, or all its entries are area-limited) is Gaussian-blurred (``blur_sigma`` in latent pixels) where the mask is set, re-noised
to the current sigma with the same pass's noise estimate, and the model predicts again from that degraded input
with the same conditioning. The guidance is the paper's, on the noise estimate:

    eps_guided = eps_cfg + scale * (eps_pass - eps_degraded)

done in the sampler's x0 space with eps = (x - x0) / sigma, so it holds for eps- and v-prediction models alike. Cost:
one extra model call per step (batch B); a step whose conditionings are all area-limited is left unguided. The capture wrapper is put on the attention processor only for the sampling
run (``installed``) and the original processor is back afterwards; it records only for the thread that asked.
"""
from __future__ import annotations

import contextlib
import math
import threading

from engine.node import Float, Node, Output, Socket

_LOCAL = threading.local()
_INSTALL_LOCK = threading.Lock()


def _captures() -> dict:
    d = getattr(_LOCAL, "captures", None)
    if d is None:
        d = _LOCAL.captures = {}
    return d


class _CapturingAttention:
    """Self-attention processor computing softmax(q k^T / sqrt(d)) v explicitly, recording per call the attention
    each key position receives, (batch, tokens), when the calling thread captures for this UNet (else delegates)."""

    def __init__(self, original, key):
        self.original, self.key = original, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        calls = _captures().get(self.key)
        if calls is None or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        b, n, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        h = attn.heads
        split = lambda t: t.reshape(b, n, h, t.shape[-1] // h).transpose(1, 2)  # (B, heads, N, d)
        q, k, v = split(q), split(k), split(v)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        probs = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(-1)  # (B, heads, N, N)
        calls.append(probs.mean(1).sum(1))  # attention received by each key position, mean over heads: (B, N)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def _mid_attention(unet):
    attns = getattr(getattr(unet, "mid_block", None), "attentions", None)
    if not attns:
        raise ValueError("Self-Attention Guidance needs a UNet whose middle block has attention")
    return attns[0].transformer_blocks[0].attn1


@contextlib.contextmanager
def installed(unet):
    """The capturing processor on the middle block's first self-attention for the duration; the processor found
    there is restored afterwards (a count keeps it while other threads' runs still use it)."""
    attn = _mid_attention(unet)
    with _INSTALL_LOCK:
        if not isinstance(attn.processor, _CapturingAttention):
            attn.processor = _CapturingAttention(attn.processor, id(unet))
            attn.processor.users = 0
        attn.processor.users += 1
    try:
        yield
    finally:
        with _INSTALL_LOCK:
            attn.processor.users -= 1
            if attn.processor.users == 0:
                attn.processor = attn.processor.original


@contextlib.contextmanager
def capturing(unet, calls: list):
    st = _captures()
    st[id(unet)] = calls
    try:
        yield calls
    finally:
        st.pop(id(unet), None)


def gaussian_blur(x, sigma: float):
    """x (B, C, H, W) blurred by a separable Gaussian of std ``sigma`` pixels (kernel 2 ceil(3 sigma) + 1, at most
    the image's size; reflected borders)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return x
    H, W = x.shape[-2:]
    out = x
    for dim, size in ((-1, W), (-2, H)):
        r = min(math.ceil(3.0 * sigma), size - 1)
        if r <= 0:
            continue
        t = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).to(x.dtype)
        c = out.shape[1]
        if dim == -1:
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        else:
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out


def map_size(h: int, w: int, tokens: int) -> tuple[int, int]:
    """The middle block's (h, w) for a latent of (h, w): halved (rounding up) until h * w == tokens."""
    while h * w > tokens:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise ValueError(f"cannot place {tokens} attention tokens on the latent grid")
    return h, w


def attention_mask(received, latent_hw, channels: int):
    """(B, C, H, W) 0/1 mask: where the key position's received attention is above average, nearest-upsampled."""
    import torch.nn.functional as F

    b, n = received.shape
    mh, mw = map_size(latent_hw[0], latent_hw[1], n)
    m = (received > 1.0).to(received.dtype).reshape(b, 1, mh, mw)
    return F.interpolate(m, size=latent_hw, mode="nearest").expand(-1, channels, -1, -1)


def patch(net, den, ms, predict, scale: float, blur_sigma: float):
    """(predict wrapped to record the middle-block attention of its UNet calls, (the post-CFG hook,)) for the
    sampler (nodes/sampler_core.py); ``predict(x, sigma) -> (cond x0, uncond x0 or None)``, the hook
    ``hook(denoised, cond, uncond, cfg, x, sigma) -> denoised``."""
    _mid_attention(net)  # a UNet without middle-block attention is refused before sampling
    calls: list = []

    def recorded(x, sigma):
        calls.clear()
        with installed(net), capturing(net, calls):
            return predict(x, sigma)

    def hook(denoised, cond, uncond, cfg, x, sigma):
        sides = (0, 1) if den.has_uncond and den.cfg != 1.0 else (1,)
        t = ms.timestep(sigma)
        # the unconditional pass's map; the conditional one's when every unconditional entry has an area
        which, where = next(((w, r) for w in sides if (r := den.call_rows(w, t, sigma)) is not None), (1, None))
        if where is None or where[0] >= len(calls):  # only area-limited conditionings: no full attention map
            return denoised
        pass_x0 = uncond if which == 0 else cond
        B = x.shape[0]
        received = calls[where[0]][where[1] * B:(where[1] + 1) * B]
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        eps_pass = (x - pass_x0) / s
        mask = attention_mask(received.to(x.dtype), tuple(x.shape[-2:]), x.shape[1])
        degraded_x0 = gaussian_blur(pass_x0, blur_sigma) * mask + pass_x0 * (1 - mask)
        x_deg = degraded_x0 + eps_pass * s  # re-noised to sigma with the pass's own noise estimate
        _, out = den.only(which).outputs(ms.calculate_input(sigma, x_deg), ms.timestep(sigma), sigma)
        eps_deg = (x_deg - ms.calculate_denoised(sigma, out, x_deg)) / s
        # eps_guided = eps + scale (eps_pass - eps_deg)  <=>  x0_guided = x0 - sigma scale (eps_pass - eps_deg)
        return denoised - s * float(scale) * (eps_pass - eps_deg)
    return recorded, (hook,)


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance: blurs the predicted image where the model's middle-block self-attention is strongest,
    predicts again from that degraded input and guides away from it by ``scale`` (one extra model call per step);
    ``blur_sigma`` is the blur's standard deviation in latent pixels."""
    display_name = "Self-Attention Guidance"
    category = "_for_testing"
    python_module = "comfy_extras.nodes_sag"
    experimental = True
    inputs = (Socket("model", "MODEL"), Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
              Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, scale, blur_sigma):
        return (model.with_options(sag=(float(scale), float(blur_sigma))),)


NODES = [SelfAttentionGuidance]
