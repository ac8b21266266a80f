"""Mutated POST /prompt bodies for the server fuzz test and bench/resilience.py.

``mutated_bodies(n, seed)`` yields ``n`` request bodies (bytes) derived from small valid prompts by
random mutations: lone surrogates (as JSON escapes, in values, keys, node ids, client_id and
extra_data), huge integers (400 and 5,000 digits), NaN/Infinity tokens, deep nesting (up to
100,000 levels), wrong types for every body field, links to missing nodes and outputs, removed
keys, and damaged bytes. Deterministic for a seed.
"""
from __future__ import annotations

import copy
import json
import random
from typing import Iterator

BASES = [
    {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0x112233}},
     "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
     "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fz"}}},
    {"1": {"class_type": "ServerChain", "inputs": {"k": 1}},
     "2": {"class_type": "ServerChain", "inputs": {"value": ["1", 0], "k": 2}},
     "3": {"class_type": "ServerShow", "inputs": {"value": ["2", 0]}}},
    {"1": {"class_type": "ServerSteps", "inputs": {"steps": 1, "delay": 0.0, "preview": 0, "seed": 1}}},
]

SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d"]
HUGE = [10**400, -(10**400), 2**63, 2**64, -(2**63) - 1]
NONFINITE = [float("nan"), float("inf"), float("-inf")]
ODD = [None, True, False, "", [], {}, 0, -1, 1.5, "x" * 3000, ["999", 0], ["1", 99], ["1"], ["1", "NOPE"],
       {"__value__": [1]}, [None], "NaN", "Infinity"]


def _nest(depth: int, leaf=1):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def _nasty(rng: random.Random):
    r = rng.random()
    if r < 0.2:
        return rng.choice(SURROGATES)
    if r < 0.35:
        return rng.choice(HUGE)
    if r < 0.5:
        return rng.choice(NONFINITE)
    if r < 0.6:
        return _nest(rng.choice([10, 200, 700]))
    return rng.choice(ODD)


def _paths(v, path=()):
    yield path
    if len(path) > 6:  # not into a deep nest (two nests in one body would pass the encoder's limit)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, path + (i,))


def _set(root, path, value):
    cur = root
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value


def mutate(rng: random.Random) -> bytes:
    body = {"prompt": copy.deepcopy(rng.choice(BASES))}
    if rng.random() < 0.3:
        body["client_id"] = rng.choice(["fuzz", "\ud800", 5, ["a"], "x" * 200])
    if rng.random() < 0.3:
        body["extra_data"] = rng.choice([{"a": _nasty(rng)}, _nasty(rng), {"preview_method": _nasty(rng)}])
    for key in ("number", "front", "prompt_id", "partial_execution_targets"):
        if rng.random() < 0.1:
            body[key] = _nasty(rng)
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        paths = [p for p in _paths(body) if p]
        if not paths:
            break
        if kind < 0.55:
            _set(body, rng.choice(paths), _nasty(rng))
        elif kind < 0.65:  # a key that is not text
            nodes = body.get("prompt")
            nodes = nodes if isinstance(nodes, dict) else None
            if nodes:
                k = rng.choice(list(nodes))
                nodes[rng.choice(SURROGATES) + k] = nodes.pop(k)
        elif kind < 0.75:  # remove something
            p = rng.choice(paths)
            parent = body
            for q in p[:-1]:
                parent = parent[q]
            if isinstance(parent, dict):
                parent.pop(p[-1], None)
        elif kind < 0.8:
            body["prompt"] = _nasty(rng)
        elif kind < 0.85:
            body = _nasty(rng)
            break
    text = json.dumps(body, ensure_ascii=True)  # NaN/Infinity tokens, \udXXX escapes
    r = rng.random()
    if r < 0.03:
        return b"[" * 100_000 + b"]" * 100_000
    if r < 0.06:
        return text.replace("32", "9" * 5000, 1).encode()
    if r < 0.12:  # damaged bytes
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    return text.encode()


def mutated_bodies(n: int, seed: int = 0) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        yield mutate(rng)
