"""Validation and the node catalogue never import torch (or the model store): ``loom validate`` of the default
workflow and ``loom nodes --json`` run in a fresh interpreter, which then reports what it imported. A fact, not a
timing (the timings are in bench/cli_startup.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "modelstore.models", "numpy", "PIL")

PROBE = """
import contextlib, io, json, sys
import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
sys.stderr.write(json.dumps({{"rc": rc, "heavy": heavy, "out": out.getvalue()}}) + "\\n")
"""


def _probe(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [("validate", "workflows/default.json"), ("nodes", "--json"), ("nodes",)])
def test_cli_validate_and_nodes_do_not_import_torch(argv):
    res = _probe(*argv)
    assert res["rc"] == 0, res["out"]
    assert res["heavy"] == [], f"{' '.join(argv)} imported {res['heavy']}"


def test_nodes_json_lists_the_checkpoints_without_the_store():
    res = _probe("nodes", "--json", "--models", str(ROOT / "models"))
    info = json.loads(res["out"])
    assert "loom-shapes-64.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert res["heavy"] == []
