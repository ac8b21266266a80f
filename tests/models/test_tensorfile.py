"""Reading tensors straight into their final buffers: dtype conversion through the bounce buffer in chunks gives
exactly ``tensor.to(dtype)``; same-dtype reads are bit-exact; corrupt sizes and truncated files are refused."""
import pytest
import torch
from safetensors.torch import save_file

from modelstore import tensorfile
from modelstore.tensorfile import CheckpointError, load_tensors, read_header


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(37, 11, generator=g).half(), "b": torch.randn(5, generator=g).to(torch.bfloat16),
            "c": torch.randn(3, 4, generator=g), "i": torch.arange(7), "s": torch.tensor(2.5).half(),
            "e": torch.zeros(0, 3).half()}


@pytest.mark.parametrize("bounce", [6, 64, 1 << 20])   # bytes: smaller than one tensor, a few chunks, one chunk
def test_converting_read_matches_to(tensors, tmp_path, monkeypatch, bounce):
    monkeypatch.setattr(tensorfile, "BOUNCE_BYTES", bounce)
    save_file(tensors, str(tmp_path / "t.safetensors"))
    got = load_tensors(read_header(tmp_path / "t.safetensors"), list(tensors), torch.float32)
    for k, v in tensors.items():
        want = v.float() if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and torch.equal(got[k], want), k


def test_same_dtype_read_is_exact(tensors, tmp_path):
    save_file(tensors, str(tmp_path / "t.safetensors"))
    got = load_tensors(read_header(tmp_path / "t.safetensors"), list(tensors))
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_truncated_and_inconsistent_files_are_refused(tensors, tmp_path):
    p = tmp_path / "t.safetensors"
    save_file(tensors, str(p))
    header = read_header(p)
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated data"):
        load_tensors(header, list(tensors), torch.float32)
    bad = tensorfile.TensorInfo("float32", (100,), 0, 8)
    header.tensors["c"] = bad
    with pytest.raises(CheckpointError, match="c holds 8 bytes"):
        load_tensors(header, ["c"])
