"""ControlNet preprocessors that need no downloaded weights. Canny is Loom's own implementation (torch only, no
kornia): grey -> 5x5 Gaussian (sigma 1) -> Sobel gradients -> non-maximum suppression along the gradient
direction -> double threshold -> hysteresis (weak edges kept where connected to strong ones)."""
from __future__ import annotations

import math

from engine.node import Float, Node, Output, Socket


def _gauss5(sigma: float = 1.0) -> torch.Tensor:
    import torch

    r = torch.arange(5, dtype=torch.float32) - 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Edges of (B,H,W,C) images in 0..1 as a (B,H,W) float map of 0/1. Thresholds apply to the Sobel gradient
    magnitude of the blurred grey image (grey values 0..1)."""
    import torch
    import torch.nn.functional as F

    rgb = image[..., :3].float()
    grey = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).unsqueeze(1) if rgb.shape[-1] == 3 \
        else rgb[..., :1].movedim(-1, 1)
    x = F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="reflect"), _gauss5())
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(xp, kx), F.conv2d(xp, kx.transpose(-1, -2))
    mag = torch.sqrt(gx * gx + gy * gy + 1e-12)
    # non-maximum suppression: compare with the two neighbours along the gradient, direction rounded to 45 degrees
    angle = torch.atan2(gy, gx) * (180.0 / math.pi)
    sector = (torch.round(angle / 45.0) % 4).long()  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    mp = F.pad(mag, (1, 1, 1, 1))
    H, W = mag.shape[-2:]
    nb = lambda dy, dx: mp[:, :, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
    offsets = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, ((ay, ax), (by, bx)) in offsets.items():
        keep |= (sector == s) & (mag >= nb(ay, ax)) & (mag >= nb(by, bx))
    mag = torch.where(keep, mag, torch.zeros_like(mag))
    strong = mag > high
    weak = mag > low
    edges = strong
    while True:  # hysteresis: grow strong edges into 8-connected weak pixels until nothing changes
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges[:, 0].float()


class Canny(Node):
    """Canny edge detection (Loom's own torch implementation): white edges on black, as a 3-channel image for
    ControlNet. Thresholds are on the gradient magnitude of the 0..1 grey image."""
    display_name = "Canny"
    category = "image/preprocessors"
    python_module = "comfy_extras.nodes_canny"
    inputs = (Socket("image", "IMAGE"), Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
              Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, low_threshold, high_threshold):
        e = canny(image, low_threshold, high_threshold)
        return (e.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),)


NODES = [Canny]
