"""ComfyUI's sampler names (KSampler's list, 0.3.75) -> sampler functions, plus their tunable options."""
from __future__ import annotations

from functools import partial

from . import dpm_solver, dpmpp, euler, multistep

from .names import SAMPLER_NAMES  # noqa: F401 (re-exported)


def _functions() -> dict:
    from . import snr_sde, unipc

    f = {
        "euler": euler.euler, "euler_cfg_pp": euler.euler_cfg_pp, "euler_ancestral": euler.euler_ancestral,
        "euler_ancestral_cfg_pp": euler.euler_ancestral_cfg_pp, "heun": euler.heun, "heunpp2": euler.heunpp2,
        "dpm_2": euler.dpm_2, "dpm_2_ancestral": euler.dpm_2_ancestral, "lms": euler.lms,
        "dpm_fast": dpm_solver.dpm_fast, "dpm_adaptive": dpm_solver.dpm_adaptive,
        "dpmpp_2s_ancestral": dpmpp.dpmpp_2s_ancestral, "dpmpp_2s_ancestral_cfg_pp": dpmpp.dpmpp_2s_ancestral_cfg_pp,
        "dpmpp_sde": dpmpp.dpmpp_sde, "dpmpp_sde_gpu": partial(dpmpp.dpmpp_sde, cpu_noise=False),
        "dpmpp_2m": dpmpp.dpmpp_2m, "dpmpp_2m_cfg_pp": dpmpp.dpmpp_2m_cfg_pp,
        "dpmpp_2m_sde": dpmpp.dpmpp_2m_sde, "dpmpp_2m_sde_gpu": partial(dpmpp.dpmpp_2m_sde, cpu_noise=False),
        "dpmpp_2m_sde_heun": dpmpp.dpmpp_2m_sde_heun,
        "dpmpp_2m_sde_heun_gpu": partial(dpmpp.dpmpp_2m_sde_heun, cpu_noise=False),
        "dpmpp_3m_sde": dpmpp.dpmpp_3m_sde, "dpmpp_3m_sde_gpu": partial(dpmpp.dpmpp_3m_sde, cpu_noise=False),
        "ddpm": euler.ddpm, "lcm": euler.lcm, "ipndm": multistep.ipndm, "ipndm_v": multistep.ipndm_v,
        "deis": multistep.deis, "res_multistep": multistep.res_multistep,
        "res_multistep_cfg_pp": multistep.res_multistep_cfg_pp,
        "res_multistep_ancestral": multistep.res_multistep_ancestral,
        "res_multistep_ancestral_cfg_pp": multistep.res_multistep_ancestral_cfg_pp,
        "gradient_estimation": multistep.gradient_estimation,
        "gradient_estimation_cfg_pp": multistep.gradient_estimation_cfg_pp,
        "er_sde": snr_sde.er_sde, "seeds_2": snr_sde.seeds_2, "seeds_3": snr_sde.seeds_3,
        "sa_solver": snr_sde.sa_solver, "sa_solver_pece": partial(snr_sde.sa_solver, use_pece=True),
        # ddim is euler in sigma space (DDIM's ODE is the probability-flow ODE; Karras et al. sec. 3)
        "ddim": euler.euler, "uni_pc": unipc.uni_pc, "uni_pc_bh2": partial(unipc.uni_pc, variant="bh2"),
    }
    return f


_CACHE: dict = {}


def sampler_function(name: str):
    """The sampler function for a ComfyUI sampler name (ValueError for an unknown one)."""
    if not _CACHE:
        _CACHE.update(_functions())
    if name not in _CACHE:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return _CACHE[name]


def final_sigma(name: str, sigmas):
    """The sigma a sampler actually ends at (uni_pc stops at 0.001 instead of 0; ComfyUI un-scales with it)."""
    if name in ("uni_pc", "uni_pc_bh2") and len(sigmas) and float(sigmas[-1]) == 0.0:
        return sigmas.new_tensor(0.001)
    return sigmas[-1] if len(sigmas) else None
