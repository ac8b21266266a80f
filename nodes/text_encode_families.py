"""Family text-encode nodes: SDXL's size-conditioned encoders (base and refiner), FLUX.1's two-prompt encoder
and guidance, SD3's three-prompt encoder."""
from __future__ import annotations

from engine.node import Combo, Float, Int, Node, Output, Socket, String

from .conditioning import encode_text


def _family(clip, what: str, types):
    from .family_encode import clip_type

    got = clip_type(clip)
    if got not in types:
        got = got or (clip.meta.get("arch") if hasattr(clip, "meta") else type(clip).__name__)
        raise ValueError(f"{what} needs a CLIP loaded with type {' or '.join(types)}; got {got}")
    return clip


def _prompt_warnings(env, *texts) -> list[str]:
    """Validation warnings for the ``embedding:`` words of the prompts typed in a node (each once)."""
    from .embeddings import validation_warnings

    return list(dict.fromkeys(w for t in texts for w in validation_warnings(env, t)))


class CLIPTextEncodeSDXL(Node):
    """SDXL base conditioning: text_l for CLIP-L, text_g for CLIP-G, plus the size/crop micro-conditioning the
    base UNet was trained with (pixels)."""
    category = "advanced/conditioning"
    inputs = (Socket("clip", "CLIP"), Int("width", 1024, min=0, max=16384), Int("height", 1024, min=0, max=16384),
              Int("crop_w", 0, min=0, max=16384), Int("crop_h", 0, min=0, max=16384),
              Int("target_width", 1024, min=0, max=16384), Int("target_height", 1024, min=0, max=16384),
              String("text_g", multiline=True, dynamicPrompts=True), String("text_l", multiline=True, dynamicPrompts=True))
    outputs = (Output("CONDITIONING"),)

    @classmethod
    def warnings(cls, env, text_g=None, text_l=None, **_):
        from .embeddings import validation_warnings

        return list(dict.fromkeys(validation_warnings(env, text_g) + validation_warnings(env, text_l)))

    def run(self, ctx, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        from .family_encode import clip_type, encode

        if clip_type(clip) == "sdxl":  # DualCLIPLoader type sdxl
            cond = encode(clip, {"clip_l": text_l, "clip_g": text_g}, warn=getattr(ctx, "warn", None))
        elif getattr(clip, "meta", {}).get("arch") != "sdxl":
            raise ValueError("CLIPTextEncodeSDXL needs the CLIP of an SDXL base checkpoint or a DualCLIPLoader "
                             "of type sdxl (CLIP-L + CLIP-G)")
        else:
            cond = encode_text(clip, [text_l, text_g], warn=getattr(ctx, "warn", None))
        extra = dict(width=width, height=height, crop_w=crop_w, crop_h=crop_h, target_width=target_width,
                     target_height=target_height)
        return ([[c, {**o, **extra}] for c, o in cond],)


class CLIPTextEncodeSDXLRefiner(Node):
    """SDXL refiner conditioning: CLIP-G text plus the refiner's aesthetic score and size conditioning."""
    category = "advanced/conditioning"
    inputs = (Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01), Int("width", 1024, min=0, max=16384),
              Int("height", 1024, min=0, max=16384), String("text", multiline=True, dynamicPrompts=True),
              Socket("clip", "CLIP"))
    outputs = (Output("CONDITIONING"),)

    @classmethod
    def warnings(cls, env, text=None, **_):
        from .embeddings import validation_warnings

        return validation_warnings(env, text)

    def run(self, ctx, ascore, width, height, text, clip):
        if getattr(clip, "meta", {}).get("arch") != "sdxl":
            raise ValueError("CLIPTextEncodeSDXLRefiner needs the CLIP of an SDXL refiner checkpoint (CLIP-G)")
        cond = encode_text(clip, text, warn=getattr(ctx, "warn", None))
        return ([[c, {**o, "aesthetic_score": float(ascore), "width": width, "height": height}] for c, o in cond],)


class CLIPTextEncodeFlux(Node):
    """FLUX.1 conditioning: clip_l text for CLIP-L's pooled vector, t5xxl text for the T5 tokens, and the guidance
    value FLUX.1 dev embeds (ignored by schnell)."""
    category = "advanced/conditioning/flux"
    inputs = (Socket("clip", "CLIP"), String("clip_l", multiline=True, dynamicPrompts=True),
              String("t5xxl", multiline=True, dynamicPrompts=True),
              Float("guidance", 3.5, min=0.0, max=100.0, step=0.1))
    outputs = (Output("CONDITIONING"),)

    @classmethod
    def warnings(cls, env, clip_l=None, t5xxl=None, **_):
        return _prompt_warnings(env, clip_l, t5xxl)

    def run(self, ctx, clip, clip_l, t5xxl, guidance):
        from .family_encode import encode

        _family(clip, "CLIPTextEncodeFlux", ("flux",))
        cond = encode(clip, {"clip_l": clip_l, "t5": t5xxl}, warn=getattr(ctx, "warn", None))
        return ([[c, {**o, "guidance": float(guidance)}] for c, o in cond],)


class FluxGuidance(Node):
    """Sets the guidance value FLUX.1 dev embeds (distilled guidance; not classifier-free guidance)."""
    category = "advanced/conditioning/flux"
    inputs = (Socket("conditioning", "CONDITIONING"), Float("guidance", 3.5, min=0.0, max=100.0, step=0.1))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, guidance):
        return ([[c, {**o, "guidance": float(guidance)}] for c, o in conditioning],)


class CLIPTextEncodeSD3(Node):
    """SD3 conditioning with a prompt per encoder; empty_padding 'none' leaves an empty prompt's encoder out
    (zeros), 'empty_prompt' encodes the empty string."""
    category = "advanced/conditioning"
    inputs = (Socket("clip", "CLIP"), String("clip_l", multiline=True, dynamicPrompts=True),
              String("clip_g", multiline=True, dynamicPrompts=True), String("t5xxl", multiline=True, dynamicPrompts=True),
              Combo("empty_padding", ["none", "empty_prompt"]))
    outputs = (Output("CONDITIONING"),)

    @classmethod
    def warnings(cls, env, clip_l=None, clip_g=None, t5xxl=None, **_):
        return _prompt_warnings(env, clip_l, clip_g, t5xxl)

    def run(self, ctx, clip, clip_l, clip_g, t5xxl, empty_padding):
        from .family_encode import encode

        _family(clip, "CLIPTextEncodeSD3", ("sd3",))
        texts = {"clip_l": clip_l, "clip_g": clip_g, "t5": t5xxl}
        if empty_padding == "none" and hasattr(clip, "encoders"):
            keep = tuple((k, r) for k, r in clip.encoders if texts[k] != "")
            clip = type(clip)(clip.type, keep, clip.options, clip.store)
        return (encode(clip, texts, warn=getattr(ctx, "warn", None)),)


NODES = [CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPTextEncodeFlux, FluxGuidance, CLIPTextEncodeSD3]
