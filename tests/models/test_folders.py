"""Folder listing, resolution with structured not-found errors, and path confinement."""
import os

import pytest

from engine.folders import ModelFolders, ModelNotFoundError, UnsafePathError, confine


@pytest.fixture
def root(tmp_path):
    (tmp_path / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "sub" / "b.ckpt").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("no")
    (tmp_path / "models" / "checkpoints" / "pipe").mkdir()
    (tmp_path / "models" / "checkpoints" / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    return tmp_path


def test_list_and_resolve(root):
    f = ModelFolders(root / "models")
    assert f.list("checkpoints") == ["a.safetensors", "pipe", "sub/b.ckpt"]
    assert f.resolve("checkpoints", "sub/b.ckpt") == (root / "models/checkpoints/sub/b.ckpt").resolve()
    assert f.resolve("checkpoints", "pipe").is_dir()
    assert f.list("loras") == []


def test_extra_paths(root, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "c.safetensors").write_bytes(b"x")
    f = ModelFolders(root / "models", extra={"checkpoints": [extra]})
    assert "c.safetensors" in f.list("checkpoints")
    assert f.resolve("checkpoints", "c.safetensors") == (extra / "c.safetensors").resolve()


def test_missing_is_structured(root):
    f = ModelFolders(root / "models")
    with pytest.raises(ModelNotFoundError) as ei:
        f.resolve("checkpoints", "nope.safetensors")
    d = ei.value.to_dict()
    assert d["type"] == "model_not_found" and d["name"] == "nope.safetensors"
    assert d["available"] == ["a.safetensors", "pipe", "sub/b.ckpt"]


@pytest.mark.parametrize("bad", ["../outside.safetensors", "sub/../../x", "/etc/passwd", "C:\\x",
                                 "\\\\server\\share", "", "a\x00b", "..\\outside.safetensors"])
def test_confine_rejects(root, bad):
    with pytest.raises(UnsafePathError):
        confine(root / "models" / "checkpoints", bad)


def test_confine_symlink_escape(root):
    ck = root / "models" / "checkpoints"
    os.symlink(root / "outside.safetensors", ck / "link.safetensors")
    os.symlink(root, ck / "linkdir")
    with pytest.raises(UnsafePathError):
        confine(ck, "link.safetensors")
    with pytest.raises(UnsafePathError):
        confine(ck, "linkdir/outside.safetensors")
    assert "link.safetensors" not in ModelFolders(root / "models").list("checkpoints")
    os.symlink(ck / "a.safetensors", ck / "inside.safetensors")
    assert confine(ck, "inside.safetensors") == (ck / "a.safetensors").resolve()
    assert confine(ck, "./sub/b.ckpt") == (ck / "sub" / "b.ckpt").resolve()


def test_symlink_loop_terminates(root):
    ck = root / "models" / "checkpoints"
    os.symlink(ck, ck / "sub" / "loop")
    assert ModelFolders(root / "models").list("checkpoints") == ["a.safetensors", "pipe", "sub/b.ckpt"]


def test_folders_and_checkpoint_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, engine.folders, modelstore.checkpoint; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
