"""Env: the folder service is there from the start; the model store is created once, on first use, even when
several threads ask at the same time; asking whether it exists never creates it."""
import threading
import time

import pytest

from engine.context import Env
from engine.folders import ModelFolders


def test_folders_default_to_models_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.safetensors").write_bytes(b"")
    env = Env(models_dir=tmp_path)
    assert isinstance(env.folders, ModelFolders) and env.folders.list("checkpoints") == ["a.safetensors"]
    extra = ModelFolders(None, {"checkpoints": [tmp_path / "checkpoints"]})
    assert Env(models_dir=tmp_path / "nowhere", folders=extra).folders is extra


def test_store_created_once_under_concurrency():
    calls = []

    def factory(env):
        calls.append(threading.get_ident())
        time.sleep(0.05)            # a slow store construction: every thread arrives while it runs
        return object()

    env = Env(model_store_factory=factory)
    assert not env.has_model_store and calls == []
    got = []
    threads = [threading.Thread(target=lambda: got.append(env.model_store())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got) and env.has_model_store


def test_no_factory_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no model store"):
        Env().model_store()
