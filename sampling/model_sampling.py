"""Model samplings: how a network's parameterisation maps onto k-diffusion's sigma space
(Karras et al. 2022, "Elucidating the design space of diffusion-based generative models").

Every sampler works on ``x = x0 + sigma * noise`` (EPS/V/EDM/X0) or ``x = (1 - sigma) * x0 + sigma * noise``
(CONST, rectified flow), calls ``denoise(x, sigma) -> x0 estimate`` and never sees the network's own output.
A ``ModelSampling`` holds, for one parameterisation:

- the sigma table (``sigmas``, ascending float32) and ``sigma_min``/``sigma_max``;
- ``timestep(sigma)``: what the network is fed (discrete models: the *integer* index of the nearest
  log-sigma in the table, as ComfyUI feeds it), and ``sigma(timestep)`` (log-sigma interpolated);
- ``calculate_input`` (input scaling), ``calculate_denoised`` (network output -> x0),
  ``noise_scaling`` / ``inverse_noise_scaling`` (start state and final un-scaling);
- ``percent_to_sigma`` (for step-percent based options).

Shapes: sigma is a 1-D tensor with one value per batch row, or a scalar; x is (B, C, H, W).
"""
from __future__ import annotations

import math

import torch


def _bcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma (B,) or scalar -> (B, 1, 1, ...) broadcastable against x, in x's dtype and device. Called a few
    times per model call, so the common case (already a tensor of x's dtype/device) skips the conversion."""
    if not (isinstance(sigma, torch.Tensor) and sigma.dtype == x.dtype and sigma.device == x.device):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1)) if sigma.ndim == 1 else (
        sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)) if sigma.ndim else sigma)


# ------------------------------------------------------------------------------------------ parameterisations
class EPS:
    """The network predicts the noise: x0 = x - sigma * eps, input scaled to unit variance."""
    sigma_data = 1.0
    name = "eps"

    def calculate_input(self, sigma, x):
        if x.device.type == "cpu" and isinstance(sigma, torch.Tensor) and sigma.numel() <= 64:
            # the same few sigmas come back every step: keep their denominators (CPU only - reading the
            # values back from a GPU would stall it); the division itself is unchanged, so are the numbers
            memo = self.__dict__.setdefault("_den_memo", {})
            key = (tuple(sigma.reshape(-1).tolist()), sigma.ndim, x.ndim, x.dtype)
            den = memo.get(key)
            if den is None:
                if len(memo) > 4096:
                    memo.clear()
                den = memo[key] = self._input_den(sigma, x)
            return x / den
        return x / self._input_den(sigma, x)

    def _input_den(self, sigma, x):
        s = _bcast(sigma, x)
        return (s * s + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, out, x):
        return x - out * _bcast(sigma, out)

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        """Start state: latent + noise * sigma; at full denoise noise * sqrt(1 + sigma^2) (the VP prior's scale)."""
        s = _bcast(sigma, noise)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + s * s)
        else:
            noise = noise * s
        return noise + latent

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):
    """The network predicts v (Salimans & Ho 2022)."""
    name = "v_prediction"

    def calculate_denoised(self, sigma, out, x):
        s = _bcast(sigma, out)
        sd2 = self.sigma_data ** 2
        return x * sd2 / (s * s + sd2) - out * s * self.sigma_data / (s * s + sd2) ** 0.5


class EDM(V_PREDICTION):
    """Karras et al.'s preconditioning: x0 = c_skip x + c_out F."""
    name = "edm"

    def calculate_denoised(self, sigma, out, x):
        s = _bcast(sigma, out)
        sd2 = self.sigma_data ** 2
        return x * sd2 / (s * s + sd2) + out * s * self.sigma_data / (s * s + sd2) ** 0.5


class X0(EPS):
    """The network predicts x0 directly."""
    name = "x0"

    def calculate_denoised(self, sigma, out, x):
        return out


class IMG_TO_IMG(X0):
    """x0 prediction on an unscaled input (ComfyUI's img_to_img sampling)."""
    name = "img_to_img"

    def calculate_input(self, sigma, x):
        return x


class CONST:
    """Rectified flow (Liu et al. 2022; SD3, Flux, AuraFlow): x = (1 - sigma) x0 + sigma noise, the network
    predicts the velocity noise - x0, so x0 = x - sigma * v. Input is not scaled."""
    name = "const"

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, out, x):
        return x - out * _bcast(sigma, out)

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        s = _bcast(sigma, noise)
        return s * noise + (1.0 - s) * latent

    def inverse_noise_scaling(self, sigma, latent):
        s = _bcast(sigma, latent)
        return latent / (1.0 - s)


# ------------------------------------------------------------------------------------------ sigma tables
def linear_beta_sigmas(timesteps=1000, linear_start=0.00085, linear_end=0.012, schedule="linear"):
    """The SD1/SD2/SDXL table: betas linear in sqrt-space ("scaled_linear" in diffusers), computed in float64,
    sigma_t = sqrt((1 - abar_t) / abar_t), returned as float32 (ascending, 1000 entries)."""
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        s = 0.008
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s
        ac = torch.cos(t / (1 + s) * math.pi / 2) ** 2
        ac = ac / ac[0]
        betas = (1 - ac[1:] / ac[:-1]).clamp(0, 0.999)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}")
    ac = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - ac) / ac) ** 0.5  # float64; callers keep log-sigma from the float64 values


def zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"): shift and scale
    sqrt(abar) so the last step has zero SNR (kept at a tiny positive value so sigma stays finite)."""
    ab_sqrt = (1.0 / (sigmas.double() ** 2 + 1)).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt ** 2
    ab[-1] = 4.8973451890853435e-08
    return ((1 - ab) / ab) ** 0.5


class ModelSampling:
    """Base: a parameterisation (``kind``) plus a sigma<->timestep mapping (subclasses)."""
    sigmas: torch.Tensor

    def __init__(self, kind):
        self.kind = kind

    # parameterisation (delegated)
    def calculate_input(self, sigma, x):
        return self.kind.calculate_input(sigma, x)

    def calculate_denoised(self, sigma, out, x):
        return self.kind.calculate_denoised(sigma, out, x)

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        return self.kind.noise_scaling(sigma, noise, latent, max_denoise)

    def inverse_noise_scaling(self, sigma, latent):
        return self.kind.inverse_noise_scaling(sigma, latent)

    @property
    def is_flow(self) -> bool:
        return isinstance(self.kind, CONST)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def half_log_snr(self, sigma):
        """lambda = log(alpha / sigma): -log(sigma) in k-space, log((1 - sigma) / sigma) for flow."""
        sigma = torch.as_tensor(sigma)
        if self.is_flow:
            return torch.log((1 - sigma) / sigma)  # logit(1 - sigma)
        return -torch.log(sigma)

    def sigma_from_half_log_snr(self, lam):
        lam = torch.as_tensor(lam)
        if self.is_flow:
            return torch.sigmoid(-lam)
        return torch.exp(-lam)


class Discrete(ModelSampling):
    """A table of 1000 training sigmas (SD1/SD2/SDXL): timestep = nearest log-sigma index (int64)."""

    def __init__(self, kind=None, sigmas=None, zsnr=False):
        super().__init__(kind or EPS())
        s = linear_beta_sigmas() if sigmas is None else sigmas.double()
        if zsnr:
            s = zero_terminal_snr(s)
        self.sigmas = s.float()
        self.log_sigmas = s.log().float()  # log taken in float64, then rounded (ComfyUI's numbers)
        self._log_col = {}  # device -> log_sigmas as a (T, 1) column: timestep() runs once per model call
        self._memo = {}  # (sigma values, shape) -> (table it was searched in, timestep): CPU only

    def timestep(self, sigma):
        if not (isinstance(sigma, torch.Tensor) and sigma.dtype == torch.float32):
            sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if sigma.device.type == "cpu" and sigma.numel() <= 64:
            # A sampler asks for the same few sigmas every step (and for each CFG half): on the CPU a memo is
            # cheaper than the table search (reading values back from a GPU would stall it, so only here).
            key = (tuple(sigma.reshape(-1).tolist()), sigma.shape)
            hit = self._memo.get(key)
            if hit is None or hit[0] is not self.log_sigmas:
                if len(self._memo) > 4096:
                    self._memo.clear()
                hit = self._memo[key] = (self.log_sigmas, self._search(sigma))
            return hit[1]
        return self._search(sigma)

    def _search(self, sigma):
        table, col = self._log_col.get(sigma.device, (None, None))
        if table is not self.log_sigmas:  # first call on this device, or the table was replaced (LCM)
            table, col = self._log_col[sigma.device] = (self.log_sigmas, self.log_sigmas.to(sigma.device)[:, None])
        d = sigma.log().reshape(1, -1) - col  # (T, B): distance of each batch row's log-sigma to the table
        return d.abs_().argmin(dim=0).reshape(sigma.shape)

    def sigma(self, timestep):
        t = torch.as_tensor(timestep).float().clamp(0, len(self.log_sigmas) - 1)
        lo, hi = t.floor().long(), t.ceil().long()
        w = t.frac()
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[hi]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


class DiscreteDistilled(Discrete):
    """LCM (Luo et al. 2023): the distilled model only knows every (1000/50)-th timestep; denoised uses the
    consistency boundary condition c_skip x + c_out x0 with sigma_data 0.5 and timestep scaling 10."""
    original_timesteps = 50

    def __init__(self, sigmas=None, zsnr=False):
        super().__init__(EPS(), sigmas, zsnr)
        full = self.sigmas
        self.skip = len(full) // self.original_timesteps
        idx = [len(full) - 1 - k * self.skip for k in range(self.original_timesteps)][::-1]
        self.full_log = self.log_sigmas
        self.sigmas = full[idx]
        self.log_sigmas = self.full_log[idx]

    def timestep(self, sigma):
        return super().timestep(sigma) * self.skip + (self.skip - 1)

    def sigma(self, timestep):
        t = torch.as_tensor(timestep).float().clamp(0, len(self.full_log) - 1)
        lo, hi = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.full_log[lo] + w * self.full_log[hi]).exp()

    def calculate_denoised(self, sigma, out, x):
        x0 = super().calculate_denoised(sigma, out, x)
        t = self.timestep(torch.as_tensor(sigma)).float() * 10.0
        sd = 0.5
        c_skip = _bcast(sd ** 2 / (t * t + sd ** 2), x)
        c_out = _bcast(t / (t * t + sd ** 2) ** 0.5, x)
        return c_out * x0 + c_skip * x


class DiscreteFlow(ModelSampling):
    """Rectified flow with a time shift (SD3, AuraFlow): sigma(t) = shift*u / (1 + (shift-1)*u), u = t/multiplier;
    timestep(sigma) = sigma * multiplier (SD3 1000, AuraFlow 1)."""

    def __init__(self, shift=1.0, multiplier=1000.0, timesteps=1000, kind=None):
        super().__init__(kind or CONST())
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        u = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
        self.sigmas = self.sigma(u * self.multiplier)

    @staticmethod
    def time_shift(shift, t):
        if shift == 1.0:
            return t
        return shift * t / (1 + (shift - 1) * t)

    def timestep(self, sigma):
        return torch.as_tensor(sigma) * self.multiplier

    def sigma(self, timestep):
        return self.time_shift(self.shift, torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.time_shift(self.shift, 1.0 - percent))


class Flux(ModelSampling):
    """Flux's resolution-dependent shift: sigma(t) = e^mu / (e^mu + (1/t - 1)), mu = shift; timestep = sigma."""

    def __init__(self, shift=1.15, timesteps=10000, kind=None):
        super().__init__(kind or CONST())
        self.shift = float(shift)
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps)

    def flux_shift(self, t):
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1) ** 1.0)

    def timestep(self, sigma):
        return torch.as_tensor(sigma)

    def sigma(self, timestep):
        return self.flux_shift(torch.as_tensor(timestep))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.flux_shift(torch.tensor(1.0 - percent, dtype=torch.float64)))


def flux_shift_for(width: int, height: int, max_shift=1.15, base_shift=0.5) -> float:
    """ModelSamplingFlux's shift: linear in the token count (W/16 * H/16) from 256 tokens (base) to 4096 (max)."""
    tokens = width * height / (8 * 8 * 2 * 2)
    m = (max_shift - base_shift) / (4096 - 256)
    return tokens * m + (base_shift - m * 256)


class ContinuousEDM(ModelSampling):
    """Continuous log-uniform sigmas between sigma_min and sigma_max; timestep = log(sigma) / 4 (EDM's c_noise)."""

    def __init__(self, sigma_min=0.002, sigma_max=120.0, sigma_data=1.0, kind=None):
        super().__init__(kind or EDM())
        self.kind.sigma_data = sigma_data
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self._min, self._max = float(sigma_min), float(sigma_max)

    def timestep(self, sigma):
        return 0.25 * torch.as_tensor(sigma).log()

    def sigma(self, timestep):
        return (torch.as_tensor(timestep) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        lo, hi = math.log(self._min), math.log(self._max)
        return math.exp(lo + (1.0 - percent) * (hi - lo))


class ContinuousV(ContinuousEDM):
    """Continuous v-prediction (SD2-style cosine-free): timestep = atan(sigma) * 2 / pi."""

    def __init__(self, sigma_min=0.03, sigma_max=500.0, sigma_data=1.0):
        super().__init__(sigma_min, sigma_max, sigma_data, kind=V_PREDICTION())

    def timestep(self, sigma):
        return torch.as_tensor(sigma).atan() / math.pi * 2

    def sigma(self, timestep):
        return (torch.as_tensor(timestep) * math.pi / 2).tan()


KINDS = {"eps": EPS, "v_prediction": V_PREDICTION, "edm": EDM, "x0": X0, "img_to_img": IMG_TO_IMG, "const": CONST}


def from_spec(spec: tuple | None, default_prediction: str = "epsilon") -> ModelSampling:
    """Build a ModelSampling from a hashable spec (what the ModelSampling* nodes store on a MODEL ref):
    ("discrete", kind, zsnr) | ("lcm", zsnr) | ("flow", shift, multiplier) | ("flux", shift)
    | ("edm", kind, sigma_min, sigma_max, sigma_data) | ("continuous_v", sigma_min, sigma_max).
    None: the checkpoint's own (discrete eps or v)."""
    if spec is None:
        kind = V_PREDICTION() if default_prediction == "v_prediction" else EPS()
        return Discrete(kind)
    tag = spec[0]
    if tag == "discrete":
        return Discrete(KINDS[spec[1]](), zsnr=bool(spec[2]))
    if tag == "lcm":
        return DiscreteDistilled(zsnr=bool(spec[1]))
    if tag == "flow":
        return DiscreteFlow(spec[1], spec[2])
    if tag == "flux":
        return Flux(spec[1])
    if tag == "edm":
        return ContinuousEDM(spec[2], spec[3], spec[4], kind=KINDS[spec[1]]())
    if tag == "continuous_v":
        return ContinuousV(spec[1], spec[2])
    raise ValueError(f"unknown model sampling spec {spec!r}")
