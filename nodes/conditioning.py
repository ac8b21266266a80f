"""Text conditioning: CLIPTextEncode with (word:1.2) weighting and prompts longer than 77 tokens, clip skip,
and the conditioning list operations.

CONDITIONING is ComfyUI's list of ``[cond (B, 77*k, D), {"pooled_output": (B, P), ...}]`` entries.
"""
from __future__ import annotations

from engine.node import Boolean, Float, Int, Node, Output, Socket, String

from .prompt_parse import CHUNK, MAX_WORD, _unescape, parse_weights, tokenize_weighted  # noqa: F401 (re-exported)


# ------------------------------------------------------------------------------------------ encoding
def _hidden(te, ids, layer: int, arch: str, index: int):
    """Token features of ``te`` for ``ids`` (n, 77): layer -1 = last_hidden_state; -k = final_layer_norm of the
    k-th hidden state from the end (clip skip). SDXL: penultimate layer, no final norm (index -2 or lower)."""
    if arch == "sdxl":
        o = te(ids, output_hidden_states=True)
        h = o.hidden_states[min(layer, -2)]
        pooled = o.text_embeds if hasattr(o, "text_embeds") else None
        return h, pooled
    if layer == -1:
        o = te(ids, attention_mask=None)
        return o[0], getattr(o, "pooler_output", None)
    o = te(ids, output_hidden_states=True)
    hs = o.hidden_states
    k = max(-len(hs) + 1, layer)
    h = getattr(te, "text_model", te).final_layer_norm(hs[k])
    return h, getattr(o, "pooler_output", None)


def encode_text(clip_ref, text, warn=None) -> list:
    """CONDITIONING for ``text`` with the CLIP ref's encoders (clip skip from ``clip_ref.option('clip_skip')``).
    ``text`` is one string, or one per encoder (CLIPTextEncodeSDXL: [text_l, text_g]). ``embedding:name`` words
    use models/embeddings (nodes/embeddings.py); problems go to ``warn(message)``. A split-loader CLIP
    (``FamilyClip``) is encoded by its family's rules (nodes/family_encode.py)."""
    from .family_encode import clip_type, encode

    if clip_type(clip_ref) is not None:
        return encode(clip_ref, text, warn=warn)
    import torch

    from .embeddings import inject, resolver

    layer = int(clip_ref.option("clip_skip", -1))
    with clip_ref.store.using(clip_ref) as (tenc,):
        feats, pooled_out, empties, empty_z = [], None, [], {}

        def empty_hidden(i, te, tok, dev):
            """Encoder ``i``'s features of the empty prompt's window (1, 77, width), encoded once per call: the
            reference of weights and the padding of a shorter text_l/text_g."""
            if i not in empty_z:
                empty = torch.tensor([[t for t, _ in tokenize_weighted(tok, "")[0]]], device=dev)
                with torch.no_grad():
                    empty_z[i] = _hidden(te, empty, layer, tenc.arch, i)[0].float().cpu()
            return empty_z[i]

        for i, (te, tok) in enumerate(zip(tenc.encoders, tenc.tokenizers)):
            t = text[i] if isinstance(text, (list, tuple)) else text
            windows = tokenize_weighted(tok, t, resolver(clip_ref, i, te, warn) if "embedding:" in t else None)
            dev = next(te.parameters()).device
            ids = torch.tensor([[t for t, _ in w] for w in windows], device=dev)
            weights = torch.tensor([[w for _, w in win] for win in windows], dtype=torch.float32)
            with torch.no_grad(), inject(te, ids, windows):
                z, pooled = _hidden(te, ids, layer, tenc.arch, i)
                z = z.float().cpu()
                if (weights != 1.0).any():
                    ze = empty_hidden(i, te, tok, dev)
                    z = (z - ze) * weights.unsqueeze(-1) + ze
            feats.append(z)  # (windows, 77, width)
            empties.append((te, tok, dev))
            if pooled is not None and (tenc.arch != "sdxl" or i == len(tenc.encoders) - 1):
                pooled_out = pooled[:1].float().cpu()
        n = max(f.shape[0] for f in feats)
        for i, f in enumerate(feats):  # CLIPTextEncodeSDXL: a shorter text_l/text_g gets empty-prompt windows
            if f.shape[0] < n:
                feats[i] = torch.cat([f, empty_hidden(i, *empties[i]).expand(n - f.shape[0], -1, -1)])
        feats = [f.reshape(1, -1, f.shape[-1]) for f in feats]
        cond = torch.cat(feats, -1) if len(feats) > 1 else feats[0]
    return [[cond.contiguous(), {"pooled_output": pooled_out}]]


# ------------------------------------------------------------------------------------------ nodes
class CLIPTextEncode(Node):
    """Encodes a text prompt with a CLIP model into conditioning for the diffusion model.
    (word:1.2) sets a word's weight, (word) multiplies it by 1.1; prompts longer than 75 tokens are encoded
    in 77-token windows and concatenated."""
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    inputs = (String("text", multiline=True, dynamicPrompts=True, tooltip="The text to be encoded."),
              Socket("clip", "CLIP", tooltip="The CLIP model used for encoding the text."))
    outputs = (Output("CONDITIONING", tooltip="A conditioning containing the embedded text used to guide the "
                                              "diffusion model."),)

    def run(self, ctx, text, clip):
        if clip is None:
            raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node "
                               "your checkpoint does not contain a valid clip or text encoder model.")
        return (encode_text(clip, text, warn=getattr(ctx, "warn", None)),)

    @classmethod
    def warnings(cls, env, text=None, **_):
        from .embeddings import validation_warnings

        return validation_warnings(env, text)


class CLIPSetLastLayer(Node):
    """Clip skip: use the output of an earlier CLIP layer (-1 = last, -2 = penultimate, ...)."""
    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    inputs = (Socket("clip", "CLIP"), Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip, stop_at_clip_layer):
        return (clip.with_options(clip_skip=int(stop_at_clip_layer)),)


def _with(cond: list, **values) -> list:
    return [[c, {**o, **values}] for c, o in cond]


class ConditioningCombine(Node):
    """Combines two conditionings: both are evaluated and their predictions averaged."""
    display_name = "Conditioning (Combine)"
    category = "conditioning"
    inputs = (Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_1, conditioning_2):
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningSetArea(Node):
    """Restricts a conditioning to a rectangle (pixels; multiples of 8) with a strength."""
    display_name = "Conditioning (Set Area)"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"),
              Int("width", 64, min=64, max=16384, step=8), Int("height", 64, min=64, max=16384, step=8),
              Int("x", 0, min=0, max=16384, step=8), Int("y", 0, min=0, max=16384, step=8),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, width, height, x, y, strength):
        return (_with(conditioning, area=(height // 8, width // 8, y // 8, x // 8), strength=float(strength),
                      set_area_to_bounds=False),)


class ConditioningZeroOut(Node):
    """Replaces the conditioning tensors (and pooled output) with zeros."""
    category = "advanced/conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"),)
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning):
        import torch

        out = []
        for c, o in conditioning:
            o = dict(o)
            if o.get("pooled_output") is not None:
                o["pooled_output"] = torch.zeros_like(o["pooled_output"])
            out.append([torch.zeros_like(c), o])
        return (out,)


class InpaintModelConditioning(Node):
    """Conditioning for inpainting checkpoints (9-channel UNets): attaches the masked image's latent and the mask
    to both conditionings, and returns the original image's latent (with the mask as noise mask if asked)."""
    category = "conditioning/inpaint"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
              Socket("pixels", "IMAGE"), Socket("mask", "MASK"), Boolean("noise_mask", True,
              tooltip="Add a noise mask to the latent so sampling will only happen within the mask. Might improve "
                      "results or completely break things depending on the model."))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    def run(self, ctx, positive, negative, vae, pixels, mask, noise_mask):
        import torch.nn.functional as F

        from .vae import crop_to_multiple, encode

        H, W = pixels.shape[1], pixels.shape[2]
        m = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(), size=(H, W), mode="bilinear")
        orig = crop_to_multiple(pixels)
        m = crop_to_multiple(m.movedim(1, -1)).movedim(-1, 1)
        keep = (1.0 - m.round()).squeeze(1).unsqueeze(-1)
        masked = (orig[..., :3] - 0.5) * keep + 0.5
        concat_latent = encode(vae, masked)
        orig_latent = encode(vae, orig)
        out_latent = {"samples": orig_latent}
        if noise_mask:
            out_latent["noise_mask"] = m
        pos = _with(positive, concat_latent_image=concat_latent, concat_mask=m)
        neg = _with(negative, concat_latent_image=concat_latent, concat_mask=m)
        return (pos, neg, out_latent)


NODES = [CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningSetArea, ConditioningZeroOut,
         InpaintModelConditioning]
