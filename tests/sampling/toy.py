"""The fixtures' toy model (data/FIXTURES.md): out = tanh(0.7 x_in + 0.3 c) (1 + t/1000), c = +1 / -1 for the
positive / negative prompt, x0 through the model sampling; cond and uncond as one batch of 2, cfg 5."""
from __future__ import annotations

import torch

from sampling.guidance import GuidedDenoiser
from sampling.ksampler import run
from sampling.model_sampling import Discrete, DiscreteFlow, EPS, V_PREDICTION

from .fixtures import noise_tensors, sampler_tensors

MODELS = {"sd1_eps": lambda: Discrete(EPS()), "sd1_v": lambda: Discrete(V_PREDICTION()),
          "flow_shift3": lambda: DiscreteFlow(3.0, 1000)}


def toy_predict(ms):
    def predict(x, sigma):
        xb = torch.cat([x, x])
        sb = torch.cat([sigma, sigma])
        c = torch.tensor([1.0] * x.shape[0] + [-1.0] * x.shape[0], device=x.device).reshape(-1, 1, 1, 1)
        x_in = ms.calculate_input(sb, xb)
        t = ms.timestep(sb).float().reshape(-1, 1, 1, 1)
        out = torch.tanh(0.7 * x_in + 0.3 * c) * (1 + t / 1000)
        den = ms.calculate_denoised(sb, out, xb)
        cond, uncond = den.chunk(2)
        return cond, uncond
    return predict


def run_fixture(model: str, scheduler: str, sampler: str, device: str = "cpu"):
    """Returns (final, callbacks [(i, denoised, x)], reference dict, model calls); tensors on ``device``."""
    ms = MODELS[model]()
    key = f"{model}/{scheduler}/{sampler}/"
    ref = {k[len(key):]: v for k, v in sampler_tensors().items() if k.startswith(key)}
    sigmas = ref["sigmas"].clone()
    if sampler in ("uni_pc", "uni_pc_bh2"):
        sigmas[-1] = 0.0  # the fixture stores the list after ComfyUI's uni_pc overwrote its 0 with 0.001
    noise = noise_tensors()["prepare_noise/shape=1x4x8x8/seed=42"]
    den = GuidedDenoiser(toy_predict(ms), 5.0, model_sampling=ms)
    cbs = []
    sigmas, noise = sigmas.to(device), noise.to(device)
    final = run(den, ms, sampler, sigmas, torch.zeros(1, 4, 8, 8, device=device), noise, 42,
                callback=lambda i, d, x, n: cbs.append((i, d.clone(), x.clone())))
    return final, cbs, ref, den.calls
