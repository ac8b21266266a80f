"""The ``loom`` command end to end, as a subprocess (no install needed: cli.py is run directly)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = str(REPO / "cli.py")


def loom(*args, cwd, env=None, timeout=120):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def lines(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


def summaries(stdout: str) -> list[dict]:
    return [m["data"] for m in lines(stdout) if m["type"] == "summary"]


@pytest.fixture
def wf(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "color": 255}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "area", "scale_by": 0.5}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}}}))
    return p


def test_run_twice_second_entirely_from_cache(tmp_path, wf):
    r = loom("run", str(wf), str(wf), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first, second = summaries(r.stdout)
    assert first["status"] == "success" and sorted(first["executed"]) == ["1", "2", "3", "4"]
    assert second["executed"] == [] and sorted(second["cached"]) == ["1", "2", "3", "4"]
    assert first["outputs"] == ["output/t_00001_.png"] and (tmp_path / "output" / "t_00001_.png").is_file()
    types = [m["type"] for m in lines(r.stdout)]
    assert types.count("execution_start") == 2 and types.count("execution_success") == 2
    assert not (tmp_path / "output" / "t_00002_.png").exists()  # the cached save did not write again


def test_changing_one_constant_reruns_only_downstream_nodes(tmp_path, wf):
    two = tmp_path / "wf2.json"
    data = json.loads(wf.read_text())
    data["3"]["inputs"]["scale_by"] = 0.25
    two.write_text(json.dumps(data))
    r = loom("run", str(wf), str(two), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first, second = summaries(r.stdout)
    assert sorted(second["executed"]) == ["3", "4"] and sorted(second["cached"]) == ["1", "2"]
    assert second["nodes"]["3"]["reason"] == "input 'scale_by' changed"
    assert second["nodes"]["4"]["reason"] == "upstream 'images' changed"


def test_set_overrides_an_input(tmp_path, wf):
    r = loom("run", str(wf), "--set", "3.scale_by=0.25", "--set", "4.filename_prefix=small", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    (out,) = summaries(r.stdout)[0]["outputs"]
    assert out == "output/small_00001_.png" and Image.open(tmp_path / out).size == (4, 2)


def test_saved_png_reruns_the_workflow(tmp_path, wf):
    assert loom("run", str(wf), cwd=tmp_path).returncode == 0
    png = tmp_path / "output" / "t_00001_.png"
    r = loom("run", str(png), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert summaries(r.stdout)[0]["outputs"] == ["output/t_00002_.png"]


def test_invalid_workflow_exit_2_with_structured_errors(tmp_path, wf):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {"width": -3}},
                               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    r = loom("run", str(bad), "--json", cwd=tmp_path)
    assert r.returncode == 2
    err = next(m for m in lines(r.stdout) if m["type"] == "validation_error")["data"]
    assert err["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"
    r = loom("validate", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "value_smaller_than_min" in r.stdout
    r = loom("validate", str(wf), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    (tmp_path / "notjson.json").write_text("{")
    r = loom("validate", str(tmp_path / "notjson.json"), "--json", cwd=tmp_path)
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["type"] == "invalid_json"


def test_validate_checks_input_files_exist(tmp_path):
    p = tmp_path / "load.json"
    p.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
                             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}))
    r = loom("validate", str(p), "--json", "--input", str(tmp_path / "in"), cwd=tmp_path)
    assert r.returncode == 2
    item = json.loads(r.stdout)["node_errors"]["1"]["errors"][0]
    assert item["type"] == "custom_validation_failed" and "nope.png" in item["details"]


def test_usage_errors_and_node_failures(tmp_path, wf):
    assert loom("run", str(wf), "--set", "nodot=1", cwd=tmp_path).returncode == 2
    assert loom("run", str(wf), "--set", "99.width=1", cwd=tmp_path).returncode == 2
    assert loom("run", cwd=tmp_path).returncode == 2
    r = loom("run", str(wf), "--set", '4.filename_prefix="../x"', cwd=tmp_path)
    assert r.returncode == 1 and "UnsafePathError" in r.stderr


def test_nodes_lists_the_catalogue(tmp_path):
    r = loom("nodes", "--json", cwd=tmp_path)
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["SaveImage"]["output_node"] is True
    r = loom("nodes", cwd=tmp_path)
    assert "EmptyImage" in r.stdout and "image:" in r.stdout


def test_ctrl_c_interrupts_with_exit_130(tmp_path):
    p = tmp_path / "slow.json"
    p.write_text(json.dumps({"1": {"class_type": "LoomTestSlow", "inputs": {"steps": 400, "delay": 0.05}}}))
    e = {**os.environ, "PYTHONPATH": str(REPO), "LOOM_TEST_NODES": "1"}
    proc = subprocess.Popen([sys.executable, CLI, "run", str(p), "--json"], cwd=tmp_path, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until the node is running
            if '"progress"' in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert summaries(out)[0]["status"] == "interrupted"
    assert any(m["type"] == "execution_interrupted" for m in lines(out))


def test_a_bug_inside_loom_exits_70_with_a_labelled_traceback(tmp_path, monkeypatch, capsys):
    """An exception escaping validation is Loom's bug, not an invalid workflow: exit 70, not 2."""
    import cli
    from engine.node import Combo, Node, Output, Registry

    def broken_options(env):
        raise KeyError("options table")

    class BrokenCombo(Node):
        """A node whose option list cannot be computed."""
        output_node = True
        inputs = (Combo("choice", broken_options),)
        outputs = (Output("STRING"),)

        def run(self, ctx, choice):
            return (choice,)

    monkeypatch.setattr(cli, "make_registry", lambda: Registry([BrokenCombo]))
    p = tmp_path / "wf.json"
    p.write_text(json.dumps({"1": {"class_type": "BrokenCombo", "inputs": {"choice": "a"}}}))
    for command in ("validate", "run"):
        assert cli.main([command, str(p), "--output", str(tmp_path / "out")]) == cli.EXIT_INTERNAL == 70
        err = capsys.readouterr().err
        assert f"loom {command}: internal error (a bug in Loom" in err and "broken_options" in err
