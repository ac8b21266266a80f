"""ComfyUI's string utility nodes, run through the engine (PrimitiveString feeds, linked outputs)."""
from __future__ import annotations

from nodes import string_ops as S


def test_basic_string_nodes():
    assert S.StringConcatenate().run(None, "a", "b", ", ") == ("a, b",)
    assert S.StringSubstring().run(None, "hello", 1, -1) == ("ell",)
    assert S.StringLength().run(None, "héllo") == (5,)
    conv = lambda m: S.CaseConverter().run(None, "hello wORLD", m)[0]
    assert [conv(m) for m in ("UPPERCASE", "lowercase", "Capitalize", "Title Case")] == \
        ["HELLO WORLD", "hello world", "Hello world", "Hello World"]
    assert [S.StringTrim().run(None, "  x  ", m)[0] for m in ("Both", "Left", "Right")] == ["x", "x  ", "  x"]
    assert S.StringReplace().run(None, "a-b-c", "-", "+") == ("a+b+c",)
    assert S.StringContains().run(None, "Red Circle", "red", True) == (False,)
    assert S.StringContains().run(None, "Red Circle", "red", False) == (True,)
    assert S.StringCompare().run(None, "Red Circle", "circle", "Ends With", False) == (True,)
    assert S.StringCompare().run(None, "abc", "abc", "Equal", True) == (True,)


def test_regex_nodes():
    assert S.RegexMatch().run(None, "A cat", "^a", True, False, False) == (True,)
    assert S.RegexMatch().run(None, "A cat", "^a", False, False, False) == (False,)
    text = "size 64x32, then 128x96"
    ex = lambda mode, g=1: S.RegexExtract().run(None, text, r"(\d+)x(\d+)", mode, True, False, False, g)[0]
    assert ex("First Match") == "64x32" and ex("All Matches") == "64x32\n128x96"
    assert ex("First Group", 2) == "32" and ex("All Groups") == "64\n128" and ex("First Group", 7) == ""
    assert S.RegexExtract().run(None, "x", "y", "First Match", True, False, False, 1) == ("",)
    assert S.RegexReplace().run(None, "a1b22c", r"\d+", "#") == ("a#b#c",)
    assert S.RegexReplace().run(None, "a1b22c", r"\d+", "#", count=1) == ("a#b22c",)


def test_string_nodes_in_a_workflow(tmp_path):
    from engine import Env, Executor
    from nodes import default_registry

    ex = Executor(default_registry(), Env(input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path))
    wf = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "a red circle"}},
          "2": {"class_type": "CaseConverter", "inputs": {"string": ["1", 0], "mode": "UPPERCASE"}},
          "3": {"class_type": "StringConcatenate", "inputs": {"string_a": ["2", 0], "string_b": "on blue",
                                                               "delimiter": " "}},
          "4": {"class_type": "StringLength", "inputs": {"string": ["3", 0]}},
          "5": {"class_type": "EmptyImage", "inputs": {"width": ["4", 0], "height": 1, "batch_size": 1, "color": 0}},
          "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}
    r = ex.run(wf)
    assert r.status == "success", r.error
    from PIL import Image

    info = r.outputs["6"]["images"][0]
    with Image.open(tmp_path / info["subfolder"] / info["filename"]) as im:
        assert im.size == (len("A RED CIRCLE on blue"), 1)
