"""An example 4x super-resolution model: ``loom-shapes-esrgan-x4``, ESRGAN's RRDBNet generator (BasicSR key
layout, what UpscaleModelLoader reads), tiny (nf 16, 1 RRDB block, gc 8), trained on the shapes world.

    python -m training --only upscaler

Pairs: a scene rendered at 64x64 (the bundled model's size) and the same scene rendered at 256x256 (world.render's
supersampling at 4x the size); random 24x24 / 96x96 crops, L1 loss, Adam, starting from a bilinear-like initialisation. Measured by PSNR against the 256x256
render on held-out scenes, next to bicubic upscaling (see the card).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from . import world

NF, NB, GC = 16, 1, 8


def render_at(scene: world.Scene, size: int) -> np.ndarray:
    """world.render at ``size`` pixels (the same geometry, supersampled 2x, box-downsampled)."""
    k = 2 * size / world.SIZE
    im = Image.new("RGB", (round(world.SIZE * k),) * 2, world.PALETTE[scene.bg])
    d = ImageDraw.Draw(im)
    for s in scene.shapes:
        kind, geom = world._shape_polygon(s, k)
        (d.ellipse if kind == "ellipse" else d.polygon)(geom, fill=world.PALETTE[s.color])
    return np.asarray(im.resize((size, size), Image.BOX), dtype=np.uint8).copy()


def pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,3,64,64) and (N,3,256,256) float 0..1."""
    _, scenes = world.make_dataset(0, seed)
    import random
    rng = random.Random(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    lo = np.stack([world.render(s) for s in scenes])
    hi = np.stack([render_at(s, 256) for s in scenes])
    f = lambda a: torch.from_numpy(a).float().div(255).movedim(-1, 1).contiguous()
    return f(lo), f(hi)


def smooth_init(net) -> None:
    """Start close to bilinear upscaling: the trunk convs pass RGB through channels 0-2 (3x3 centre taps; the
    inputs are >= 0, where leaky ReLU is the identity), the two convs after each nearest 2x upsampling blur with
    [1 2 1]/4 (nearest + that blur = bilinear), and the rest of every weight is scaled to 1%. Training then starts
    near bilinear's quality and learns the edges, instead of first learning to copy colours."""
    blur = torch.tensor([1.0, 2.0, 1.0]) / 4
    with torch.no_grad():
        for conv in (net.conv_first, net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
            conv.weight.mul_(0.01)
            conv.bias.zero_()
            for c in range(3):
                if conv in (net.conv_up1, net.conv_up2):
                    conv.weight[c, c] += blur[:, None] * blur[None, :]
                else:
                    conv.weight[c, c, 1, 1] += 1.0
        net.conv_body.weight.mul_(0.01)
        net.conv_body.bias.zero_()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b)))


def train(out: Path, steps: int = 600, batch: int = 8, lr: float = 2e-3, n: int = 600, seed: int = 0,
          log=print) -> dict:
    from safetensors.torch import save_file

    from modelstore.kinds.upscale import RRDBNet

    torch.manual_seed(seed)
    lo, hi = pairs(n, seed + 31)
    net = RRDBNet(nf=NF, nb=NB, gc=GC, scale=4)
    smooth_init(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        # 24x24 crops: large enough to hold a shape's edge most of the time, and they include the image borders
        ys, xs = torch.randint(0, 64 - 24 + 1, (2,), generator=g).tolist()
        x = lo[idx, :, ys:ys + 24, xs:xs + 24]
        y = hi[idx, :, 4 * ys:4 * ys + 96, 4 * xs:4 * xs + 96]
        loss = F.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"upscaler step {step} L1 {loss.item():.4f} ({time.time() - t0:.0f}s)")
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out),
              metadata={"format": "pt", "loom.model": "loom-shapes-esrgan-x4"})
    tlo, thi = pairs(64, seed + 9999)  # held out
    with torch.no_grad():
        sr = net(tlo)
    bic = F.interpolate(tlo, scale_factor=4, mode="bicubic", align_corners=False)
    near = F.interpolate(tlo, scale_factor=4, mode="nearest")
    res = {"psnr_model": psnr(sr, thi), "psnr_bicubic": psnr(bic, thi), "psnr_nearest": psnr(near, thi),
           "params": sum(p.numel() for p in net.parameters()), "steps": steps, "batch": batch}
    log(f"upscaler: held-out PSNR model {res['psnr_model']:.2f} dB, bicubic {res['psnr_bicubic']:.2f} dB, "
        f"nearest {res['psnr_nearest']:.2f} dB")
    return res
