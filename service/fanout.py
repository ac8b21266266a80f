"""Batch fan-out: one prompt's latent batch split across idle pool workers and gathered again.

Loom's noise rule makes a batch item depend only on the seed and its ``batch_index`` (``nodes/sampler_core``),
so items ``[s, s+n)`` of ``EmptyLatentImage(batch_size=b)`` are re-made alone by inserting
``LatentFromBatch(batch_index=s, length=n)`` after the empty latent. A prompt is split only when that gives
exactly the single-worker images:

- one ``EmptyLatentImage`` with a constant ``batch_size >= 2 * MIN_PART``;
- everything downstream of it is per-item (``PER_ITEM``) and every output node is downstream of it (an output
  off the batch would run once per part);
- its samplers are deterministic (an ancestral/SDE sampler keeps drawing from the seed's generator, so an item's
  noise depends on the items drawn before it);
- parts have at least ``MIN_PART`` items: on the CPU a one-item batch takes another kernel path (measured: one
  pixel value off by 1/255 against the same item in a batch of 4), while parts of 2 and more were bit-identical.
"""
from __future__ import annotations

import copy

PER_ITEM = frozenset({"KSampler", "VAEDecode", "SaveImage", "PreviewImage"})
STOCHASTIC = ("ancestral", "sde", "ddpm", "lcm", "restart")
MIN_PART = 2
PART_NODE = "loom_fanout_part"


def _links(inputs: dict):
    for name, v in inputs.items():
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], (int, str)):
            yield name, str(v[0])


def plan(prompt: dict, outputs: list[str], workers: int) -> tuple[str, list[tuple[int, int]]] | None:
    """(latent node id, [(batch_index, length), ...]) for at most ``workers`` parts, or None when this prompt
    must run whole."""
    if workers < 2 or PART_NODE in prompt:
        return None
    latents = [nid for nid, n in prompt.items() if isinstance(n, dict) and n.get("class_type") == "EmptyLatentImage"]
    if len(latents) != 1:
        return None
    lat = latents[0]
    b = prompt[lat].get("inputs", {}).get("batch_size")
    if not isinstance(b, int) or isinstance(b, bool) or b < 2 * MIN_PART:
        return None
    consumers: dict[str, list[str]] = {}
    for nid, n in prompt.items():
        for _, src in _links(n.get("inputs") or {}):
            consumers.setdefault(src, []).append(nid)
    down, stack = set(), [lat]
    while stack:
        for c in consumers.get(stack.pop(), ()):
            if c not in down:
                down.add(c)
                stack.append(c)
    for nid in down:
        n = prompt[nid]
        if n.get("class_type") not in PER_ITEM:
            return None
        name = str((n.get("inputs") or {}).get("sampler_name", ""))
        if any(s in name for s in STOCHASTIC):
            return None
    if not outputs or not set(map(str, outputs)) <= down:
        return None
    k = min(workers, b // MIN_PART)
    sizes = [b // k + (1 if j < b % k else 0) for j in range(k)]
    parts, s = [], 0
    for n in sizes:
        parts.append((s, n))
        s += n
    return lat, parts


def part_prompt(prompt: dict, latent: str, start: int, length: int) -> dict:
    """The prompt with items ``[start, start+length)`` of ``latent``'s batch only."""
    p = copy.deepcopy(prompt)
    for nid, n in p.items():
        for name, src in list(_links(n.get("inputs") or {})):
            if src == latent:
                n["inputs"][name] = [PART_NODE, n["inputs"][name][1]]
    p[PART_NODE] = {"class_type": "LatentFromBatch",
                    "inputs": {"samples": [latent, 0], "batch_index": start, "length": length}}
    return p


def merge(prompt_id: str, entries: list[dict], parts: list[tuple[int, int]], workers: list[str]) -> dict:
    """One history entry from the parts' entries (all successful), outputs in item order."""
    outputs: dict = {}
    for e in entries:
        for nid, ui in (e.get("outputs") or {}).items():
            dst = outputs.setdefault(nid, {})
            for key, val in (ui or {}).items():
                if isinstance(val, list):
                    dst.setdefault(key, []).extend(val)
                else:
                    dst.setdefault(key, val)
    first = entries[0]
    loom = dict(first.get("loom") or {})
    loom["nodes"] = {k: v for k, v in (loom.get("nodes") or {}).items() if k != PART_NODE}
    loom["worker"] = workers[0]
    loom["fanout"] = [{"worker": w, "batch_index": s, "length": n} for w, (s, n) in zip(workers, parts)]
    msgs = [m for m in (first.get("status") or {}).get("messages") or [] if m[0] != "execution_success"]
    last = [m for m in (entries[-1].get("status") or {}).get("messages") or [] if m[0] == "execution_success"]
    return {"outputs": outputs, "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                                               "real_node_id": nid} for nid in outputs},
            "status": {"status_str": "success", "completed": True, "messages": msgs + last}, "loom": loom}
