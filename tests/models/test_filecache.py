"""modelstore.filecache.FileCache: one object per version of a file, the pickle policy checked on every call."""
import os

import pytest

from modelstore.filecache import FileCache
from modelstore.tensorfile import PickleRefused


def test_builds_once_per_file_version(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"one")
    built = []
    cache = FileCache(4)
    build = lambda p: built.append(p.read_bytes()) or p.read_bytes()
    assert cache.get(f, False, build) == b"one" and cache.get(f, False, build) == b"one"
    assert built == [b"one"]
    f.write_bytes(b"three")  # a new size (and mtime): a new version
    os.utime(f, ns=(1, 1))
    assert cache.get(f, False, build) == b"three" and len(built) == 2


def test_pickle_policy_is_checked_before_the_cache(tmp_path):
    f = tmp_path / "a.pt"
    f.write_bytes(b"x")
    cache = FileCache(4)
    assert cache.get(f, True, lambda p: "loaded") == "loaded"
    with pytest.raises(PickleRefused, match="a.pt is a pickle file"):
        cache.get(f, False, lambda p: "loaded")  # cached for an allowing caller, still refused here
    with pytest.raises(PermissionError):
        FileCache(4, refused=PermissionError).get(f, False, lambda p: "loaded")


def test_bounded(tmp_path):
    cache = FileCache(2)
    for i in range(5):
        f = tmp_path / f"{i}.safetensors"
        f.write_bytes(b"x")
        cache.get(f, False, lambda p: p.name)
    assert len(cache._items) <= 2
