"""GUIDER nodes: how the model's conditional predictions are combined at each step."""
from __future__ import annotations

from engine.node import Combo, Float, Node, Output, Socket

from .sampler_core import Guider

CAT = "sampling/custom_sampling/guiders"
CFG = dict(min=0.0, max=100.0, step=0.1, round=0.01)


class CFGGuider(Node):
    """Classifier-free guidance: model + positive/negative conditioning + cfg scale."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Float("cfg", 8.0, **CFG))
    outputs = (Output("GUIDER"),)

    def run(self, ctx, model, positive, negative, cfg):
        return (Guider(model, positive, negative, float(cfg)),)


class DualCFGGuider(Node):
    """Two positive conditionings: regular = negative -> cond2 by cfg_cond2_negative, then cond2 -> cond1 by
    cfg_conds; nested = (cond2 -> cond1 by cfg_conds), then guided against the negative by cfg_cond2_negative."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Socket("cond1", "CONDITIONING"), Socket("cond2", "CONDITIONING"),
              Socket("negative", "CONDITIONING"), Float("cfg_conds", 8.0, **CFG),
              Float("cfg_cond2_negative", 8.0, **CFG), Combo("style", ["regular", "nested"]))
    outputs = (Output("GUIDER"),)

    def run(self, ctx, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        return (Guider(model, cond1, negative, float(cfg_conds), cond2=cond2, cfg2=float(cfg_cond2_negative),
                       nested=style == "nested"),)


class BasicGuider(Node):
    """Conditioning only, no negative (cfg 1)."""
    category = CAT
    inputs = (Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING"))
    outputs = (Output("GUIDER"),)

    def run(self, ctx, model, conditioning):
        return (Guider(model, conditioning, None, 1.0),)


NODES = [CFGGuider, DualCFGGuider, BasicGuider]
