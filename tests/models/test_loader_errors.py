"""Malformed and hostile model files get the loader's own error naming the file and what is wrong
(issue 9 item 6), never a raw TypeError/KeyError/ZeroDivisionError/RecursionError."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from modelstore.lora import LoraError, load_lora_file
from modelstore.tensorfile import CheckpointError, read_header


def _raw(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header, data, says", [
    (b"[]", b"", "a JSON list"),
    (b"[" * 100_000 + b"]" * 100_000, b"", "corrupt"),
    (json.dumps({"w": [1, 2]}).encode(), b"", "entry is a JSON list"),
    (json.dumps({"w": {"shape": [2], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "missing dtype"),
    (json.dumps({"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "dtype is int"),
    (json.dumps({**GOOD, "__metadata__": ["a", "b"]}).encode(), b"\0" * 8, "__metadata__ is a JSON list"),
    (json.dumps({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "shape"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "shape"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}).encode(), b"\0" * 8, "data_offsets"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9999]}}).encode(), b"\0" * 8,
     "data_offsets"),
    (json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "needs 12 bytes"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}).encode(), b"\0" * 8, "data_offsets"),
])
def test_malformed_headers_are_checkpoint_errors(tmp_path, header, data, says):
    p = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError) as e:
        read_header(p)
    assert "bad.safetensors" in str(e.value) and says in str(e.value)


def test_a_valid_header_still_reads(tmp_path):
    p = _raw(tmp_path / "ok.safetensors", json.dumps({**GOOD, "__metadata__": {"a": "b"}}).encode(), b"\0" * 8)
    h = read_header(p)
    assert h.tensors["w"].shape == (2,) and h.metadata == {"a": "b"}


@pytest.mark.parametrize("tensors, says", [
    ({"lora_unet_x.lora_down.weight": torch.zeros(0, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 0)}, "rank 0"),
    ({"lora_unet_x.lora_down.weight": torch.tensor(1.0), "lora_unet_x.lora_up.weight": torch.tensor(2.0)},
     "expected a matrix"),
    ({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 3)},
     "disagree on the rank"),
    ({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
      "lora_unet_x.alpha": torch.zeros(3)}, "alpha"),
    ({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
      "lora_unet_x.alpha": torch.tensor(float("nan"))}, "alpha"),
])
def test_broken_loras_are_lora_errors(tmp_path, tensors, says):
    p = tmp_path / "broken.safetensors"
    save_file(tensors, str(p))
    with pytest.raises(LoraError) as e:
        load_lora_file(p)
    assert "broken.safetensors" in str(e.value) and says in str(e.value)


def test_a_lora_that_does_not_fit_its_target_names_it():
    from modelstore.lora import apply_lora

    lin = torch.nn.Sequential(torch.nn.Linear(8, 8))
    sd = {"lora_unet_0.lora_down.weight": torch.zeros(2, 5), "lora_unet_0.lora_up.weight": torch.zeros(8, 2)}
    lin.__class__ = type("UNetish", (torch.nn.Sequential,), {})
    with pytest.raises(LoraError, match="does not fit"):
        apply_lora(lin, sd, 1.0, "unet")
