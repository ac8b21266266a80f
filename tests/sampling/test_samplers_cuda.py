"""The 128 ComfyUI sampler fixtures on a CUDA device: the sampling core's GPU path (no per-sigma memos there: the
timestep search and input scaling are computed on the device, never read back) gives ComfyUI's numbers too.
Final latent within 1e-4 x max|final| (the CPU test's tolerance) and the same number of model calls. Skipped on a
machine without a GPU (CI has none); run by the GPU bench session (bench/gpu_checks.sh)."""
import pytest
import torch

from .fixtures import index_json
from .toy import run_fixture

RUNS = index_json()["runs"]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")


def test_every_sampler_run_matches_comfyui_on_cuda():
    bad = []
    for run in RUNS:  # one test (one skip line on a CPU machine), every run checked, all failures listed
        final, _, ref, calls = run_fixture(run["model"], run["scheduler"], run["sampler"], device="cuda")
        assert final.device.type == "cuda"
        scale = float(ref["final"].abs().max())
        err = float((final.cpu() - ref["final"]).abs().max())
        if calls != run["model_calls"] or not err <= 1e-4 * scale:
            bad.append(f"{run['key']}: {calls} calls (ComfyUI {run['model_calls']}), max diff {err:.3g} "
                       f"({err / scale:.2e} of max|final|)")
    assert not bad, "\n".join(bad)
