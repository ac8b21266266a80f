"""`loom validate` and `loom run` over hundreds of broken files: every one gets an error message and an
exit code, never a traceback (issue 9: lone surrogates, huge integers, NaN, deep nesting, wrong types,
broken PNGs). In-process through cli.main, so the whole fuzz takes seconds."""
from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from pathlib import Path

import pytest

import cli

REPO = Path(__file__).resolve().parents[1]

NASTY = [None, True, -1, 0, 10**400, -(10**400), 2**63, 2**64, float("nan"), float("inf"), float("-inf"), 1e308,
         "", "\ud800", "a\udfffb", "x" * 5000, [], {}, [[[[[[[[[[1]]]]]]]]]], ["999", 0], ["1", 99], ["1"],
         ["1", "NOPE"], {"__value__": [1, 2]}, {"__value__": "\ud800"}, [None, None], "NaN", "Infinity"]

# a model-free workflow: every mutation that still validates runs in milliseconds
BASE = {
    "10": {"class_type": "PrimitiveInt", "inputs": {"value": 16}},
    "1": {"class_type": "EmptyImage", "inputs": {"width": ["10", 0], "height": 12, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "area", "scale_by": 0.5}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "fuzz/x"}},
}


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return out


def _files() -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []

    def add(name, obj):
        files.append((name, obj if isinstance(obj, bytes) else json.dumps(obj).encode()))

    for nid, node in BASE.items():  # every input of every node, replaced by every nasty value
        for name in node["inputs"]:
            for i, v in enumerate(NASTY):
                wf = copy.deepcopy(BASE)
                wf[nid]["inputs"][name] = v
                add(f"in-{nid}-{name}-{i}.json", wf)
    for i, v in enumerate(NASTY):  # structure
        wf = copy.deepcopy(BASE); wf["2"]["class_type"] = v; add(f"ct-{i}.json", wf)
        wf = copy.deepcopy(BASE); wf["2"]["inputs"] = v; add(f"inputs-{i}.json", wf)
        wf = copy.deepcopy(BASE); wf["2"] = v; add(f"node-{i}.json", wf)
        add(f"top-{i}.json", v)
        add(f"body-{i}.json", {"prompt": v, "extra_data": v})
        wf = copy.deepcopy(BASE); wf[str(v)[:50] if not isinstance(v, str) else v] = wf.pop("2")
        add(f"id-{i}.json", wf)
        add(f"ui-{i}.json", {"nodes": v, "links": v, "version": 0.4})
        add(f"ui2-{i}.json", {"nodes": [{"id": v, "type": "EmptyImage", "widgets_values": v, "inputs": v,
                                         "outputs": v, "mode": v}], "links": [[v, v, v, v, v, v]], "version": 0.4})
    add("deep.json", b"[" * 100_000 + b"]" * 100_000)
    add("deep-obj.json", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    add("deep-input.json", json.dumps(BASE).replace('"batch_size": 1', '"batch_size": ' + "[" * 900 + "1"
                                                    + "]" * 900).encode())
    add("bigint.json", b'{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + b"9" * 5000 + b"}}}")
    add("truncated.json", json.dumps(BASE).encode()[:-7])
    add("empty.json", b"")
    add("bom.json", b"\xef\xbb\xbf" + json.dumps(BASE).encode())
    add("utf16.json", json.dumps(BASE).encode("utf-16"))
    add("binary.json", bytes(range(256)) * 4)
    add("nan-tokens.json", json.dumps(BASE).replace('"color": 255', '"color": NaN').encode())
    add("dup-keys.json", b'{"5": 1, "5": {"class_type": "SaveImage", "inputs": {}}}')
    rng = random.Random(9)
    base = json.dumps(BASE).encode()
    for i in range(60):  # byte-level damage
        b = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        add(f"bytes-{i}.json", bytes(b))
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 12 * 4)
    for i, chunks in enumerate([
        [(b"IHDR", ihdr), (b"IEND", b"")],
        [(b"IHDR", ihdr), (b"tEXt", b"prompt\x00{nope"), (b"IDAT", idat), (b"IEND", b"")],
        [(b"IHDR", ihdr), (b"tEXt", b"prompt\x00" + json.dumps({"1": "\ud800"}).encode()), (b"IDAT", idat),
         (b"IEND", b"")],
        [(b"IHDR", ihdr), (b"zTXt", b"prompt\x00\x00" + b"not zlib"), (b"IDAT", idat), (b"IEND", b"")],
        [(b"IHDR", ihdr), (b"iTXt", b"workflow\x00\x01\x00\x00\x00" + zlib.compress(b"[" * 50_000)),
         (b"IDAT", idat), (b"IEND", b"")],
        [(b"IHDR", b"\xff" * 13), (b"IEND", b"")],
    ]):
        files.append((f"png-{i}.png", _png(chunks)))
    files.append(("png-trunc.png", _png([(b"IHDR", ihdr)])[:20]))
    return files


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-fuzz")
    paths = []
    for name, data in _files():
        (d / name).write_bytes(data)
        paths.append(str(d / name))
    return d, paths


def _call(capsys, argv) -> tuple[int, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out + err


def test_validate_never_prints_a_traceback(fuzz_dir, capsys):
    d, paths = fuzz_dir
    assert len(paths) > 600
    codes = {}
    for p in paths + [str(d / "missing.json"), str(d)]:
        code, text = _call(capsys, ["validate", p])
        assert "Traceback" not in text and code in (0, 2), (p, code, text[-3000:])
        assert text.strip(), p  # something was said
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(2, 0) > 400  # most are invalid, and say so


def test_run_never_prints_a_traceback(fuzz_dir, capsys, tmp_path):
    d, paths = fuzz_dir
    rng = random.Random(1)
    picked = rng.sample(paths, 250) + [p for p in paths if "png" in p or "surrog" in p]
    dirs = ["--output", str(tmp_path / "out"), "--temp", str(tmp_path / "temp"), "--input", str(tmp_path / "in"),
            "--models", str(tmp_path / "models")]
    ran = 0
    for p in picked:
        code, text = _call(capsys, ["run", p, *dirs])
        assert "Traceback" not in text and code in (0, 1, 2), (p, code, text[-3000:])
        ran += code == 0
    assert ran > 0  # some mutations are harmless and run


def test_json_output_stays_json(fuzz_dir, capsys):
    d, paths = fuzz_dir
    for p in [x for x in paths if "in-5-filename_prefix" in x or "id-" in x][:40]:
        code, text = _call(capsys, ["validate", "--json", p])
        for line in text.splitlines():
            json.loads(line)
