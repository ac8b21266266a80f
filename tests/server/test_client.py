"""The Python client and run_remote (``loom run --server URL``) against a live server."""
from __future__ import annotations

import json

from service.client import LoomClient, PromptRejected, run_remote

from .conftest import IMAGE_WF


def test_client_run_and_view(live):
    with LoomClient(live.url) as c:
        seen = []
        entry = c.run(IMAGE_WF, on_event=seen.append)
        assert entry["status"]["completed"] is True
        types = [m["type"] for m in seen]
        assert types[0] == "execution_start" or "execution_start" in types
        png = c.view(entry["outputs"]["3"]["images"][0])
        assert png[:4] == b"\x89PNG"
        try:
            c.submit({"1": {"class_type": "Nope"}})
        except PromptRejected as e:
            assert e.body["error"]["type"] == "missing_node_type"
        else:
            raise AssertionError("not rejected")


def test_run_remote_exit_codes(live, tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(IMAGE_WF))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "Nope", "inputs": {}}}))
    fail = tmp_path / "fail.json"
    fail.write_text(json.dumps({"1": {"class_type": "ServerFail", "inputs": {"message": "x"}}}))
    assert run_remote(live.url, [str(good)]) == 0
    err = capsys.readouterr().err
    assert "output: t_" in err
    assert run_remote(live.url, [str(good)], sets=["1.width=40"], as_json=True) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1]["type"] == "result" and lines[-1]["data"]["status"] == "success"
    assert run_remote(live.url, [str(bad)]) == 2
    assert run_remote(live.url, [str(fail)]) == 1
    assert run_remote(live.url, [str(tmp_path / "missing.json")]) == 2
    assert run_remote("http://127.0.0.1:1", [str(good)]) == 2


def test_cli_run_server_flag(live, tmp_path, capsys):
    import cli

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(IMAGE_WF))
    assert cli.main(["run", "--server", live.url, str(wf)]) == 0
    assert "output: t_" in capsys.readouterr().err
