"""Attention experiments (ComfyUI's names and semantics): multiply the query, key, value and output projections
(weights and biases) of the UNet's self-attention (attn1) or cross-attention (attn2) layers, or of CLIP's
self-attention layers, by constant factors. Applied as a store patch (``modelstore.merge.ScalePatch``): the
scaled copy is built once when first used."""
from __future__ import annotations

from dataclasses import replace

from engine.node import Float, Node, Output, Socket

FACTOR = dict(min=0.0, max=10.0, step=0.01)


def scaled(ref, rules: tuple):
    from modelstore.merge import ScalePatch

    rules = tuple((p, float(f)) for p, f in rules if float(f) != 1.0)
    if not rules:
        return ref
    return replace(ref, key=replace(ref.key, patches=ref.key.patches + (ScalePatch(rules),)))


class _Multiply(Node):
    category = "_for_testing/attention_experiments"
    python_module = "comfy_extras.nodes_attention_multiply"
    experimental = True
    attn = "attn1"
    inputs = (Socket("model", "MODEL"), Float("q", 1.0, **FACTOR), Float("k", 1.0, **FACTOR),
              Float("v", 1.0, **FACTOR), Float("out", 1.0, **FACTOR))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, q, k, v, out):
        a = self.attn
        return (scaled(model, ((f".{a}.to_q.", q), (f".{a}.to_k.", k), (f".{a}.to_v.", v),
                               (f".{a}.to_out.0.", out))),)


class UNetSelfAttentionMultiply(_Multiply):
    """Multiplies the UNet's self-attention q/k/v/out projections."""
    attn = "attn1"


class UNetCrossAttentionMultiply(_Multiply):
    """Multiplies the UNet's cross-attention (text) q/k/v/out projections."""
    attn = "attn2"


class CLIPAttentionMultiply(_Multiply):
    """Multiplies the text encoder's self-attention q/k/v/out projections."""
    inputs = (Socket("clip", "CLIP"), Float("q", 1.0, **FACTOR), Float("k", 1.0, **FACTOR),
              Float("v", 1.0, **FACTOR), Float("out", 1.0, **FACTOR))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip, q, k, v, out):
        return (scaled(clip, ((".self_attn.q_proj.", q), (".self_attn.k_proj.", k), (".self_attn.v_proj.", v),
                              (".self_attn.out_proj.", out))),)


NODES = [UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply]
