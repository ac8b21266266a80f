"""ComfyUI's sampler and scheduler names (0.3.75, in ComfyUI's order), the schedule plan a sampling node
carries, and the validation of names. Every sampler runs with every scheduler and with any SIGMAS: the
numerical work is the ``sampling`` package."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

__all__ = ["SAMPLER_NAMES", "SCHEDULER_NAMES", "Plan", "unsupported_reason", "supported_pairs"]

# samplers whose step noise is a torchsde Brownian tree
BROWNIAN = {"dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"}


@dataclass
class Plan:
    """A named schedule: sampler/scheduler names and the full step count, or a custom sigma list."""
    sampler_name: str
    scheduler_name: str | None
    steps: int
    sigmas: tuple | None = None


def unsupported_reason(sampler_name: str, scheduler_name: str | None, custom_sigmas: bool = False) -> str | None:
    """None if the pair runs, else a message saying what is wrong (unknown name, missing torchsde)."""
    if sampler_name not in SAMPLER_NAMES:
        return f"unknown sampler '{sampler_name}'; expected one of {', '.join(SAMPLER_NAMES)}"
    if sampler_name in BROWNIAN and importlib.util.find_spec("torchsde") is None:
        return f"sampler '{sampler_name}' needs the torchsde package (a Loom dependency: pip install torchsde)"
    if scheduler_name is not None and scheduler_name not in SCHEDULER_NAMES:
        return f"unknown scheduler '{scheduler_name}'; expected one of {', '.join(SCHEDULER_NAMES)}"
    return None


def supported_pairs() -> dict[str, list[str]]:
    """{sampler: [schedulers it runs with]}: every pair."""
    return {s: list(SCHEDULER_NAMES) for s in SAMPLER_NAMES if unsupported_reason(s, None) is None}
