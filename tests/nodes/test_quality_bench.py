"""bench/quality.py's engine workflow is valid for every sampler it is asked to report (a sampler/scheduler pair
that Loom rejects would only show up after minutes of generation otherwise)."""
import importlib.util
from pathlib import Path

import pytest

from engine.validate import validate
from engine.workflow import parse_api
from nodes import default_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("loom_bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("sampler", ["euler", "ddim", "euler_ancestral", "dpmpp_2m", "heun", "lms", "uni_pc"])
def test_engine_workflow_validates(quality, session_env, sampler):
    wf = quality.engine_workflow("tiny-sd1.safetensors", "a red circle on the left on a blue background", 1, 20,
                                 8.0, sampler)
    v = validate(parse_api(wf), default_registry(), session_env)  # raises WorkflowError when invalid
    assert v.outputs == ["9"] and not v.node_errors
