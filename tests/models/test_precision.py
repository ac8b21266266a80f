"""--device / --dtype for `loom run` and `loom serve`: parsing, per-component precision in the store, and a clear
usage error for a bad value."""
from __future__ import annotations

import pytest

from modelstore.precision import parse_dtype, store_kwargs


def test_parse_dtype_forms():
    assert parse_dtype(None) == (None, {})
    assert parse_dtype("bf16") == ("bf16", {})
    assert parse_dtype("unet=bf16, vae=fp32,clip=fp32") == (None, {"MODEL": "bf16", "VAE": "fp32", "CLIP": "fp32"})
    assert parse_dtype("fp32,unet=bf16") == ("fp32", {"MODEL": "bf16"})
    assert store_kwargs("cpu", "unet=bf16") == {"device": "cpu", "component_dtypes": {"MODEL": "bf16"}}
    assert store_kwargs(None, "auto") == {}
    for bad in ("fp8", "unet=fp64", "gpu=bf16"):
        with pytest.raises(ValueError):
            parse_dtype(bad)


def test_store_gives_each_component_its_precision(tmp_path):
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from tests.tiny_sd import build_tiny_sd1, save_checkpoint

    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints" / "t.safetensors", *build_tiny_sd1())
    store = ModelStore(ModelFolders(tmp_path), **store_kwargs("cpu", "unet=bf16,vae=fp32"))
    m, c, v = store.load_checkpoint("t.safetensors")
    assert (m.key.dtype, c.key.dtype, v.key.dtype) == ("bfloat16", "float32", "float32")
    import torch

    assert next(m.get().parameters()).dtype == torch.bfloat16
    assert next(v.get().parameters()).dtype == torch.float32
    plain = ModelStore(ModelFolders(tmp_path), device="cpu").load_checkpoint("t.safetensors")
    assert {r.key.dtype for r in plain} == {"float32"}  # the CPU default stays fp32 (ComfyUI's images)


def test_cli_refuses_a_bad_dtype(tmp_path, capsys):
    import cli

    rc = cli.main(["run", "workflows/image-basics.json", "--dtype", "fp8", "--output", str(tmp_path)])
    assert rc == 2
    assert "fp8" in capsys.readouterr().err
    from service.config import Config

    with pytest.raises(SystemExit, match="fp8"):
        Config(dtype="fp8").check()
