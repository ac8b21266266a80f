"""SAMPLER nodes: KSamplerSelect (any of ComfyUI's 42 names) and the Sampler* nodes that set a sampler's
parameters (eta, s_noise, orders, noise device ...)."""
from __future__ import annotations

from engine.node import Boolean, Combo, Float, Int, Node, Output, Socket

from .sampler_core import SamplerChoice, model_sampling_of
from .samplers import SAMPLER_NAMES, unsupported_reason

CAT = "sampling/custom_sampling/samplers"


def _f(name, default, lo=0.0, hi=100.0, step=0.01, **kw):
    return Float(name, default, min=lo, max=hi, step=step, round=False, **kw)


def _choice(name, **opts):
    return SamplerChoice(name, tuple(sorted(opts.items())))


class KSamplerSelect(Node):
    """Selects a sampler by name."""
    category = CAT
    inputs = (Combo("sampler_name", SAMPLER_NAMES),)
    outputs = (Output("SAMPLER"),)

    @classmethod
    def check(cls, env, sampler_name=None, **_):
        if isinstance(sampler_name, str):
            why = unsupported_reason(sampler_name, None)
            return {"sampler_name": why} if why else None
        return None

    def run(self, ctx, sampler_name):
        return (SamplerChoice(sampler_name),)


class SamplerEulerAncestral(Node):
    """euler_ancestral with its noise amount (eta) and noise scale (s_noise)."""
    category = CAT
    inputs = (_f("eta", 1.0), _f("s_noise", 1.0))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, eta, s_noise):
        return (_choice("euler_ancestral", eta=eta, s_noise=s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    """euler_ancestral_cfg_pp with eta and s_noise."""
    display_name = "SamplerEulerAncestralCFG++"
    category = CAT
    inputs = (_f("eta", 1.0, hi=1.0), _f("s_noise", 1.0, hi=10.0))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, eta, s_noise):
        return (_choice("euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise),)


class SamplerLMS(Node):
    """Linear multistep with the given order."""
    category = CAT
    inputs = (Int("order", 4, min=1, max=100),)
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, order):
        return (_choice("lms", order=order),)


def _noise_device(name, device):
    return name + "_gpu" if device == "gpu" else name


class SamplerDPMPP_3M_SDE(Node):
    """dpmpp_3m_sde with eta, s_noise and where the Brownian noise is drawn."""
    category = CAT
    inputs = (_f("eta", 1.0), _f("s_noise", 1.0), Combo("noise_device", ["gpu", "cpu"]))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, eta, s_noise, noise_device):
        return (_choice(_noise_device("dpmpp_3m_sde", noise_device), eta=eta, s_noise=s_noise),)


class SamplerDPMPP_2M_SDE(Node):
    """dpmpp_2m_sde with its solver type (midpoint or heun), eta, s_noise and noise device."""
    category = CAT
    inputs = (Combo("solver_type", ["midpoint", "heun"]), _f("eta", 1.0), _f("s_noise", 1.0),
              Combo("noise_device", ["gpu", "cpu"]))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, solver_type, eta, s_noise, noise_device):
        return (_choice(_noise_device("dpmpp_2m_sde", noise_device), eta=eta, s_noise=s_noise,
                        solver_type=solver_type),)


class SamplerDPMPP_SDE(Node):
    """dpmpp_sde with eta, s_noise, the intermediate point r and noise device."""
    category = CAT
    inputs = (_f("eta", 1.0), _f("s_noise", 1.0), _f("r", 0.5), Combo("noise_device", ["gpu", "cpu"]))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, eta, s_noise, r, noise_device):
        return (_choice(_noise_device("dpmpp_sde", noise_device), eta=eta, s_noise=s_noise, r=r),)


class SamplerDPMPP_2S_Ancestral(Node):
    """dpmpp_2s_ancestral with eta and s_noise."""
    category = CAT
    inputs = (_f("eta", 1.0), _f("s_noise", 1.0))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, eta, s_noise):
        return (_choice("dpmpp_2s_ancestral", eta=eta, s_noise=s_noise),)


class SamplerDPMAdaptative(Node):
    """dpm_adaptive with its error tolerances and PID step-size controller settings."""
    category = CAT
    inputs = (Int("order", 3, min=2, max=3), _f("rtol", 0.05), _f("atol", 0.0078), _f("h_init", 0.05),
              _f("pcoeff", 0.0), _f("icoeff", 1.0), _f("dcoeff", 0.0), _f("accept_safety", 0.81), _f("eta", 0.0),
              _f("s_noise", 1.0))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise):
        return (_choice("dpm_adaptive", order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff,
                        icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise),)


class SamplerER_SDE(Node):
    """er_sde with its solver type: ER-SDE (the paper's noise scale), Reverse-time SDE (noise scale
    lambda^(1+eta)) or ODE (no noise)."""
    category = CAT
    inputs = (Combo("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"]), Int("max_stage", 3, min=1, max=3),
              _f("eta", 1.0, tooltip="Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to "
                 "deterministic ODE. This setting doesn't apply to ER-SDE solver type."), _f("s_noise", 1.0))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, solver_type, max_stage, eta, s_noise):
        opts = {"max_stage": max_stage, "s_noise": s_noise}
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            opts.update(s_noise=0.0, noise_scaler=("power", 1.0))
        elif solver_type == "Reverse-time SDE":
            opts.update(noise_scaler=("power", 1.0 + eta))
        return (_choice("er_sde", **opts),)


class SamplerSASolver(Node):
    """sa_solver with its predictor/corrector orders and the step range (as percents of the model's schedule)
    where stochasticity eta applies."""
    category = CAT
    inputs = (Socket("model", "MODEL"), _f("eta", 1.0, hi=10.0),
              Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
              Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001), _f("s_noise", 1.0),
              Int("predictor_order", 3, min=1, max=6), Int("corrector_order", 4, min=0, max=6),
              Boolean("use_pece", False), Boolean("simple_order_2", False))
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
            use_pece, simple_order_2):
        ms = model_sampling_of(model)
        start_sigma = ms.percent_to_sigma(sde_start_percent)
        end_sigma = ms.percent_to_sigma(sde_end_percent)
        return (_choice("sa_solver", eta=eta, tau_start=float(start_sigma), tau_end=float(end_sigma),
                        s_noise=s_noise, predictor_order=predictor_order, corrector_order=corrector_order,
                        use_pece=bool(use_pece), simple_order_2=bool(simple_order_2)),)


NODES = [KSamplerSelect, SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMPP_3M_SDE,
         SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE,
         SamplerSASolver]
