"""The Python client and ``loom run --server URL`` against a live server."""
from __future__ import annotations

import json

from service.client import LoomClient, PromptRejected

from .conftest import IMAGE_WF


def test_client_run_and_view(live):
    with LoomClient(live.url) as c:
        seen = []
        entry = c.run(IMAGE_WF, on_event=seen.append)
        assert entry["status"]["completed"] is True
        types = [m["type"] for m in seen]
        assert types.index("execution_start") < types.index("executing") < types.index("executed")
        assert seen[-1]["type"] == "executing" and seen[-1]["data"]["node"] is None  # the run's end
        png = c.view(entry["outputs"]["3"]["images"][0])
        assert png[:4] == b"\x89PNG"
        try:
            c.submit({"1": {"class_type": "Nope"}})
        except PromptRejected as e:
            assert e.body["error"]["type"] == "missing_node_type"
        else:
            raise AssertionError("not rejected")


def test_loom_run_server_exit_codes_and_output(live, tmp_path, capsys):
    import cli

    good = tmp_path / "good.json"
    good.write_text(json.dumps(IMAGE_WF))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "Nope", "inputs": {}}}))
    fail = tmp_path / "fail.json"
    fail.write_text(json.dumps({"1": {"class_type": "ServerFail", "inputs": {"message": "x"}}}))
    remote = ["run", "--server", live.url]
    assert cli.main([*remote, str(good)]) == 0
    assert "output: output/t_" in capsys.readouterr().out
    assert cli.main([*remote, str(good), "--set", "1.width=40", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["data"]["status"] == "success"
    assert {m["type"] for m in lines[:-1]} >= {"execution_start", "executing", "executed"}
    assert cli.main([*remote, str(bad)]) == 2
    assert "invalid workflow" in capsys.readouterr().err
    assert cli.main([*remote, str(fail)]) == 1
    assert "ServerFail" in capsys.readouterr().err
    assert cli.main([*remote, str(tmp_path / "missing.json")]) == 2
    assert cli.main(["run", "--server", "http://127.0.0.1:1", str(good)]) == 2


def test_local_and_remote_runs_share_set_rules_and_summary_shape(live, tmp_path, capsys):
    """--set naming no node is a usage error (2) both ways, before anything runs; --json ends with
    the same summary keys both ways."""
    import cli

    good = tmp_path / "good.json"
    good.write_text(json.dumps(IMAGE_WF))
    before = len(live.client().get("/history").json())
    folders = ["--output", str(tmp_path / "out"), "--temp", str(tmp_path / "temp"), "--input", str(tmp_path / "in")]
    for where in ([], ["--server", live.url]):
        assert cli.main(["run", str(good), "--set", "99.width=40", *where, *folders]) == 2
        assert "99.width" in capsys.readouterr().err
    assert len(live.client().get("/history").json()) == before  # nothing was sent
    shapes = []
    for where in ([], ["--server", live.url]):
        assert cli.main(["run", str(good), "--set", "1.width=24", "--json", *where, *folders]) == 0
        last = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert last["type"] == "summary" and last["data"]["status"] == "success"
        assert len(last["data"]["outputs"]) == 1 and last["data"]["outputs"][0].endswith(".png")
        shapes.append(set(last["data"]))
    assert shapes[0] == shapes[1] == {"workflow", "prompt_id", "status", "duration_ms", "outputs", "executed",
                                      "cached", "nodes"}


def test_cli_run_server_flag(live, tmp_path, capsys):
    import cli

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(IMAGE_WF))
    assert cli.main(["run", "--server", live.url, str(wf)]) == 0
    assert "output: output/t_" in capsys.readouterr().out
