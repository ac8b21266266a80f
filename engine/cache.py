"""The output cache: structural keys, a byte budget, least-recently-used eviction.

A node's key is a hash of its class, version, constant inputs (canonical msgpack), the keys and
output indices of the upstream outputs it reads, and its fingerprint if it declares one — never
its node id, so an identical sub-graph under other ids, or in another workflow, hits the cache.
Loaded models never live here: loaders return small references into the model store.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass(slots=True)
class Entry:
    outputs: tuple
    ui: dict | None
    nbytes: int


_SCALARS = (str, float, bool, bytes, type(None))


def _canon(v: Any) -> Any:
    """Make a constant msgpack-encodable with a canonical form (sorted dict items)."""
    t = type(v)
    if t in _SCALARS or (t is int and -(2**63) <= v < 2**64):
        return v
    if isinstance(v, dict):
        return ["\x00dict", sorted(([str(k), _canon(x)] for k, x in v.items()), key=lambda kv: kv[0])]
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
        return ["\x00bigint", str(v)]
    if isinstance(v, (str, int, float, bool, bytes)) or v is None:
        return v
    return ["\x00repr", repr(v)]


def node_key(class_type: str, version: str, constants: dict, links: dict, fingerprint: Any = None) -> bytes:
    """16-byte structural key. ``links`` maps input name → (upstream key, output index)."""
    if isinstance(fingerprint, float) and math.isnan(fingerprint):
        fingerprint = ["\x00nonce", os.urandom(16)]  # NaN = never equal: always re-run
    # Input names are unique strings, so sorting the (name, ...) tuples compares names only.
    payload = [class_type, version,
               sorted([(k, _canon(v)) for k, v in constants.items()]),
               sorted([(k, key, idx) for k, (key, idx) in links.items()]),
               _canon(fingerprint)]
    # surrogatepass: a lone surrogate in a string constant is not UTF-8 text, but it still needs a key
    return hashlib.blake2b(msgpack.packb(payload, use_bin_type=True, unicode_errors="surrogatepass"),
                           digest_size=16).digest()


class OutputCache:
    """Byte-bounded LRU map from structural key to a node's outputs (and its ui dict)."""

    def __init__(self, budget_bytes: int = 2 * 1024**3):
        self.budget = int(budget_bytes)
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0
        self.peak_bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def count_misses(self, n: int) -> None:
        """Record ``n`` needed outputs that were not in the cache (the executor's plan counts them;
        ``hits`` counts the entries actually read)."""
        self.misses += n

    def get(self, key: bytes) -> Entry | None:
        e = self._entries.get(key)
        if e is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return e

    def put(self, key: bytes, outputs: tuple, ui: dict | None, size: int) -> bool:
        """Store an entry; evicts least-recently-used ones to stay within budget. An entry larger
        than the whole budget is not stored (returns False)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        if size > self.budget:
            return False
        while self._entries and self.bytes + size > self.budget:
            _, ev = self._entries.popitem(last=False)
            self.bytes -= ev.nbytes
            self.evictions += 1
        self._entries[key] = Entry(outputs, ui, size)
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def discard(self, key: bytes) -> None:
        e = self._entries.pop(key, None)
        if e is not None:
            self.bytes -= e.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "budget": self.budget,
                "peak_bytes": self.peak_bytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}
