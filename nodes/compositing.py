"""Porter-Duff compositing (ComfyUI's PorterDuffImageComposite): source over/in/out/atop/xor destination and the
separable blend modes, with explicit alpha MASKs (1 = opaque here: the masks are alpha, not "masked" areas).
Colours are treated as premultiplied by their alpha, as in the W3C Compositing spec's formulas:
``c_out = c_s F_s + c_d F_d`` for the Porter-Duff operators, plus the blend term for DARKEN/LIGHTEN/MULTIPLY/
SCREEN/OVERLAY; ADD clamps to 1. The source is resized (bilinear) to the destination's size."""
from __future__ import annotations

from engine.node import Combo, Node, Output, Socket

MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN", "MULTIPLY",
         "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]


def porter_duff(cs, a_s, cd, a_d, mode: str):
    """(colour, alpha) of ``mode`` for premultiplied colours (B,H,W,C) and alphas (B,H,W,1)."""
    import torch

    union = a_s + a_d - a_s * a_d
    rest = cs * (1 - a_d) + cd * (1 - a_s)
    table = {
        "CLEAR": lambda: (torch.zeros_like(cd), torch.zeros_like(a_d)),
        "SRC": lambda: (cs, a_s), "DST": lambda: (cd, a_d),
        "SRC_OVER": lambda: (cs + cd * (1 - a_s), a_s + a_d * (1 - a_s)),
        "DST_OVER": lambda: (cd + cs * (1 - a_d), a_d + a_s * (1 - a_d)),
        "SRC_IN": lambda: (cs * a_d, a_s * a_d), "DST_IN": lambda: (cd * a_s, a_s * a_d),
        "SRC_OUT": lambda: (cs * (1 - a_d), a_s * (1 - a_d)), "DST_OUT": lambda: (cd * (1 - a_s), a_d * (1 - a_s)),
        "SRC_ATOP": lambda: (cs * a_d + cd * (1 - a_s), a_d), "DST_ATOP": lambda: (cd * a_s + cs * (1 - a_d), a_s),
        "XOR": lambda: (rest, a_s * (1 - a_d) + a_d * (1 - a_s)),
        "ADD": lambda: ((cs + cd).clamp(max=1.0), (a_s + a_d).clamp(max=1.0)),
        "MULTIPLY": lambda: (rest + cs * cd, union),
        "SCREEN": lambda: (cs + cd - cs * cd, union),
        "DARKEN": lambda: (rest + torch.minimum(cs * a_d, cd * a_s), union),
        "LIGHTEN": lambda: (rest + torch.maximum(cs * a_d, cd * a_s), union),
        "OVERLAY": lambda: (rest + torch.where(2 * cd <= a_d, 2 * cs * cd, a_s * a_d - 2 * (a_d - cd) * (a_s - cs)),
                            union),
    }
    return table[mode]()


class PorterDuffImageComposite(Node):
    """Composites ``source`` (with alpha ``source_alpha``) and ``destination`` (``destination_alpha``) with a
    Porter-Duff operator or blend mode; returns the colour and the resulting alpha."""
    display_name = "Porter-Duff Image Composite"
    category = "mask/compositing"
    python_module = "comfy_extras.nodes_compositing"
    inputs = (Socket("source", "IMAGE"), Socket("source_alpha", "MASK"), Socket("destination", "IMAGE"),
              Socket("destination_alpha", "MASK"), Combo("mode", MODES, "DST"))
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, source, source_alpha, destination, destination_alpha, mode):
        import torch.nn.functional as F

        B, H, W = destination.shape[0], destination.shape[1], destination.shape[2]

        def fit_img(t):
            t = t[..., :3]
            if t.shape[1:3] != (H, W):
                t = F.interpolate(t.movedim(-1, 1), size=(H, W), mode="bilinear", align_corners=False).movedim(1, -1)
            return t if t.shape[0] == B else t[:1].expand(B, -1, -1, -1)

        def fit_alpha(m):
            m = m.reshape(-1, 1, m.shape[-2], m.shape[-1]).float()
            if m.shape[-2:] != (H, W):
                m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
            m = m.movedim(1, -1)
            return m if m.shape[0] == B else m[:1].expand(B, -1, -1, -1)

        cs, cd = fit_img(source), fit_img(destination)
        a_s, a_d = fit_alpha(source_alpha), fit_alpha(destination_alpha)
        color, alpha = porter_duff(cs, a_s, cd, a_d, mode)
        return (color.clamp(0, 1).contiguous(), alpha[..., 0].clamp(0, 1).contiguous())


NODES = [PorterDuffImageComposite]
