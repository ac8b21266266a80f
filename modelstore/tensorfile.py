"""Tensor files without weights in memory: safetensors header parsing, per-tensor reads, pickle state dicts.

``read_header`` parses the safetensors header alone (no weights touched); ``load_tensors`` then reads only
the named tensors, converting each to the target dtype/device as it is read (no second full copy, no mmap).
torch is imported lazily inside functions: this module (like all of ``modelstore.checkpoint``) stays torch-free.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl")

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class CheckpointError(ValueError):
    """A file could not be read, or its architecture/config could not be determined."""


class PickleRefused(CheckpointError):
    """A pickle checkpoint was offered to a store that does not allow pickle."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor in a safetensors file: dtype name (torch attribute name), shape, byte range in the data."""
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class Header:
    """Parsed safetensors header. ``data_offset`` is the file offset of the data block (bytes)."""
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
             "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


def read_header(path: str | Path) -> Header:
    """Parse the header of a ``.safetensors`` file (reads ~KB, not the weights). Every fault of a malformed
    or hostile header (not an object, an entry that is not one, a missing dtype, shapes and byte ranges that
    disagree or point past the file, list metadata, nesting 100,000 deep) is a CheckpointError naming the
    file and the entry, never a raw TypeError/KeyError/RecursionError."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path.name}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path.name}: not a safetensors file (header length {n})")
        data_size = max(0, path.stat().st_size - 8 - n)
        try:
            hdr = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:  # RecursionError: nested arrays beyond the parser's depth
            raise CheckpointError(f"{path.name}: corrupt safetensors header: {str(e)[:200] or type(e).__name__}") \
                from None
    if not isinstance(hdr, dict):
        raise CheckpointError(f"{path.name}: corrupt safetensors header: a JSON {type(hdr).__name__}, "
                              "expected an object of tensors")
    meta = hdr.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path.name}: corrupt safetensors header: __metadata__ is a JSON "
                              f"{type(meta).__name__}, expected an object of strings")
    meta = {str(k): v if isinstance(v, str) else json.dumps(v)[:10_000] for k, v in meta.items()}
    tensors = {}
    for k, v in hdr.items():
        tensors[k] = _tensor_info(path.name, k, v, data_size)
    return Header(path, tensors, meta, 8 + n)


def _tensor_info(fname: str, key: str, v, data_size: int) -> TensorInfo:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{fname}: corrupt safetensors header: tensor {key[:200]!r}: {what}")

    if not isinstance(v, dict):
        raise bad(f"entry is a JSON {type(v).__name__}, expected an object with dtype, shape, data_offsets")
    dt, shape, offs = v.get("dtype"), v.get("shape"), v.get("data_offsets")
    if not isinstance(dt, str):
        raise bad("missing dtype" if dt is None else f"dtype is {type(dt).__name__}, expected a string")
    if dt not in _ST_DTYPES:
        raise CheckpointError(f"{fname}: unsupported dtype {dt[:40]} for {key[:200]}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**48 for d in shape) or len(shape) > 16:
        raise bad(f"shape {str(shape)[:80]} is not a list of non-negative integers")
    if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs) \
            or not 0 <= offs[0] <= offs[1] <= data_size:
        raise bad(f"data_offsets {str(offs)[:80]} is not [start, end] within the {data_size}-byte data block")
    numel = 1
    for d in shape:
        numel *= d
    torch_dtype = _ST_DTYPES[dt]
    if numel * _ITEMSIZE[torch_dtype] != offs[1] - offs[0]:
        raise bad(f"shape {shape} of {dt} needs {numel * _ITEMSIZE[torch_dtype]} bytes, data_offsets give "
                  f"{offs[1] - offs[0]}")
    return TensorInfo(torch_dtype, tuple(shape), offs[0], offs[1])


#: Bytes of the reusable bounce buffer a dtype-converting read goes through (the only transient memory of a read).
BOUNCE_BYTES = 16 << 20


def _read_exact(f, view: memoryview, what: str, path: Path) -> None:
    got = 0
    while got < len(view):
        r = f.readinto(view[got:])
        if not r:
            raise CheckpointError(f"{path.name}: truncated data for {what}")
        got += r


def load_tensors(header: Header, names, dtype=None, device=None) -> dict:
    """Read the named tensors with plain file reads straight into their final CPU buffers (no mmap). Floating
    tensors stored in another dtype than ``dtype`` are converted on the way in, through one reusable bounce buffer
    of ``BOUNCE_BYTES``: peak memory is the selected weights plus 16 MiB, and no freed temporaries are left to
    fragment the heap. Then each tensor is moved to ``device`` (one CPU copy of one tensor at a time in flight).
    Returns ``{name: torch.Tensor}``."""
    import torch

    out = {}
    bounces: dict = {}
    with open(header.path, "rb", buffering=0) as f:
        for name in names:
            ti = header.tensors[name]
            src = getattr(torch, ti.dtype)
            dst = dtype if dtype is not None and src.is_floating_point and src != dtype else src
            t = torch.empty(ti.shape, dtype=dst)
            flat = t.view(-1)
            f.seek(header.data_offset + ti.start)
            if ti.end - ti.start != flat.numel() * src.itemsize:
                raise CheckpointError(f"{header.path.name}: {name} holds {ti.end - ti.start} bytes, its shape "
                                      f"{ti.shape} needs {flat.numel() * src.itemsize}")
            if dst == src:
                if flat.numel():
                    _read_exact(f, memoryview(flat.view(torch.uint8).numpy()), name, header.path)
            else:
                step = max(1, BOUNCE_BYTES // src.itemsize)
                bounce = bounces.get(src)
                if bounce is None:
                    bounce = bounces[src] = torch.empty(step, dtype=src)
                for i in range(0, flat.numel(), step):
                    k = min(step, flat.numel() - i)
                    _read_exact(f, memoryview(bounce[:k].view(torch.uint8).numpy()), name, header.path)
                    flat[i:i + k].copy_(bounce[:k])
            if device is not None and str(device) != "cpu":
                t = t.to(device)
            out[name] = t
    return out


def load_pickle_state_dict(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of a pickle checkpoint, unwrapping a ``state_dict`` entry."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{Path(path).name}: pickle does not hold a state dict")
    return {k: v for k, v in sd.items() if hasattr(v, "shape")}


def header_from_state_dict(path: str | Path, sd: dict) -> Header:
    """A Header describing an in-memory state dict (for pickle files); ``load_tensors`` can't read it."""
    tensors = {k: TensorInfo(str(v.dtype).replace("torch.", ""), tuple(v.shape), 0, 0) for k, v in sd.items()}
    return Header(Path(path), tensors, {}, -1)

