"""Sigma schedules, KSampler's step/denoise rules and the sigma<->timestep mappings against ComfyUI 0.3.75.

Tolerance: relative 1e-6 (float32 values written as JSON doubles; Loom reproduces them bit for bit today, the
margin only absorbs libm differences between machines)."""
import math

import pytest
import torch

from sampling.model_sampling import Discrete, DiscreteFlow, EPS, Flux, V_PREDICTION
from sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas, ksampler_sigmas

from .fixtures import floats, sigmas_json

MODELS = {"sd1_eps": lambda: Discrete(EPS()), "sd1_v": lambda: Discrete(V_PREDICTION()),
          "flow_shift3": lambda: DiscreteFlow(3.0, 1000), "flux_shift1.15": lambda: Flux(1.15)}
RTOL = 1e-6


def _close(got, ref, what):
    got = [float(v) for v in got]
    assert len(got) == len(ref), f"{what}: {len(got)} values, ComfyUI has {len(ref)}"
    for k, (a, b) in enumerate(zip(got, ref)):
        if math.isnan(b):
            assert math.isnan(a), f"{what}[{k}]: {a}, ComfyUI nan"
        else:
            assert abs(a - b) <= RTOL * max(abs(b), 1e-12), f"{what}[{k}]: {a} vs ComfyUI {b}"


def test_fixture_covers_every_scheduler_and_model():
    d = sigmas_json()
    assert d["schedulers"] == SCHEDULER_NAMES
    assert set(d["models"]) == set(MODELS)


@pytest.mark.parametrize("model", list(MODELS))
def test_calculate_sigmas_every_scheduler_and_step_count(model):
    ms = MODELS[model]()
    entries = sigmas_json()["models"][model]["calculate_sigmas"]
    assert set(entries) == set(SCHEDULER_NAMES)
    n = 0
    for sched, by_steps in entries.items():
        for steps, ref in by_steps.items():
            _close(calculate_sigmas(ms, sched, int(steps)), floats(ref), f"{model}/{sched}/{steps}")
            n += 1
    assert n == 54


@pytest.mark.parametrize("model", list(MODELS))
def test_ksampler_step_and_denoise_rules(model):
    ms = MODELS[model]()
    for sched, entries in sigmas_json()["models"][model]["ksampler_sigmas"].items():
        for key, ref in entries.items():
            sampler, steps, denoise = key.split("/")
            got = ksampler_sigmas(ms, sched, sampler, int(steps.split("=")[1]), float(denoise.split("=")[1]))
            _close(got, floats(ref), f"{model}/{sched}/{key}")


@pytest.mark.parametrize("model", list(MODELS))
def test_timestep_sigma_and_percent_mappings(model):
    ms = MODELS[model]()
    e = sigmas_json()["models"][model]
    ref = e["timestep_of_sigma"]
    got = ms.timestep(torch.tensor(floats(ref["sigma"]), dtype=torch.float32))
    if model.startswith("sd1"):
        assert got.dtype == torch.int64  # the UNet is fed the nearest integer timestep
    _close(got.double(), floats(ref["timestep"]), f"{model} timestep")
    ref = e["sigma_of_timestep"]
    _close(ms.sigma(torch.tensor(floats(ref["timestep"]), dtype=torch.float32)), floats(ref["sigma"]), f"{model} sigma")
    ref = e["percent_to_sigma"]
    _close([ms.percent_to_sigma(p) for p in floats(ref["percent"])], floats(ref["sigma"]), f"{model} percent")
    _close([ms.sigma_min, ms.sigma_max], [float(e["sigma_min"]), float(e["sigma_max"])], f"{model} range")
    assert len(ms.sigmas) == int(e["num_table_sigmas"])
    if "sigmas_table" in e:
        _close(ms.sigmas, floats(e["sigmas_table"]), f"{model} table")
    if "sigmas_table_every_50th" in e:
        t = e["sigmas_table_every_50th"]
        _close(ms.sigmas[t["index"]], floats(t["sigma"]), f"{model} table")


def test_flow_multiplier_1_timestep():
    ref = sigmas_json()["flow_shift3_multiplier1_timestep"]
    ms = DiscreteFlow(3.0, multiplier=1.0)
    _close(ms.timestep(torch.tensor(floats(ref["sigma"]))), floats(ref["timestep"]), "multiplier 1")
