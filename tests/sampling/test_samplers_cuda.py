"""The 128 ComfyUI sampler fixtures on a CUDA device: the sampling core's GPU path (no per-sigma memos there: the
timestep search and input scaling are computed on the device, never read back) gives ComfyUI's numbers too.
Skipped on a machine without a GPU (CI has none); run in the GPU session (measured on an H200, 30 Nov 2026).

Which runs can match the CPU-made fixtures on a GPU:
- deterministic samplers: final within 1e-4 x max|final|, as on the CPU;
- SDE samplers on a CPU Brownian tree (dpmpp_sde, dpmpp_2m_sde(_heun), dpmpp_3m_sde): the same noise, float
  arithmetic on the GPU drifts a little through the solver: within 1e-3 (measured worst 4.9e-4, dpmpp_sde/karras);
- samplers whose step noise is drawn on the sampling device (ancestral, ddpm, lcm, er_sde, seeds, sa_solver, the
  *_gpu Brownian trees): ComfyUI seeds a generator on the device, and CUDA's generator gives other numbers than
  the CPU's, so ComfyUI's own GPU results differ from these fixtures too. Loom does the same; checked: finite, the
  fixture's number of model calls, and reproducible (two runs identical)."""
import pytest
import torch

from .fixtures import index_json
from .toy import run_fixture

RUNS = index_json()["runs"]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
CPU_TREE = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
DEVICE_NOISE = {"euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
                "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu",
                "dpmpp_3m_sde_gpu", "ddpm", "lcm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"}


def test_every_sampler_run_matches_comfyui_on_cuda():
    bad = []
    for run in RUNS:  # one test (one skip line on a CPU machine), every run checked, all failures listed
        s = run["sampler"]
        final, _, ref, calls = run_fixture(run["model"], run["scheduler"], s, device="cuda")
        assert final.device.type == "cuda"
        final = final.cpu()
        if calls != run["model_calls"] or not bool(final.isfinite().all()):
            bad.append(f"{run['key']}: {calls} calls (ComfyUI {run['model_calls']}), finite {final.isfinite().all()}")
            continue
        if s in DEVICE_NOISE:
            again = run_fixture(run["model"], run["scheduler"], s, device="cuda")[0].cpu()
            if not torch.equal(final, again):
                bad.append(f"{run['key']}: two CUDA runs differ")
            continue
        scale = float(ref["final"].abs().max())
        err = float((final - ref["final"]).abs().max())
        tol = 1e-3 if s in CPU_TREE else 1e-4
        if not err <= tol * scale:
            bad.append(f"{run['key']}: max diff {err:.3g} ({err / scale:.2e} of max|final|, tolerance {tol:g})")
    assert not bad, "\n".join(bad)
