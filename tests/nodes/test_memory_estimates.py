"""Every node whose inputs say how big something is (width, height, batch_size, amount, length, a scale...)
declares ``estimate_bytes`` so engine.budget can refuse it before it allocates, or sits on EXEMPT with the
reason its output cannot outgrow its inputs. A new node with a size-like input and neither fails here.
The estimates of the nodes added for the memory guard are checked against the tensors ``run`` makes."""
from __future__ import annotations

import re

import pytest
import torch

from engine import Executor
from engine.budget import _BASE
from nodes import all_nodes, default_registry

SIZE_LIKE = re.compile(r"^(width|height|batch_size|amount|length|multiplier|scale|scale_by|upscale_by|megapixels|"
                       r"largest_size|frames|num_frames|size|resolution|left|right|top|bottom|"
                       r".*_width|.*_height|.*_size|.*_length|.*_frames)$")

#: class_type -> why its size-like inputs cannot make it allocate more than its inputs already hold
EXEMPT = {
    "ConditioningSetArea": "width/height are area metadata on the conditioning; no tensor is made",
    "ConditioningSetAreaPercentage": "width/height are area fractions (metadata); no tensor is made",
    "CLIPTextEncodeSDXL": "sizes are SDXL size-conditioning numbers, embedded as a fixed-width vector",
    "CLIPTextEncodeSDXLRefiner": "sizes are SDXL size-conditioning numbers, embedded as a fixed-width vector",
    "ModelSamplingFlux": "width/height only pick the timestep shift",
    "LatentFromBatch": "a slice of the input batch: never bigger than it",
    "ImageFromBatch": "a slice of the input batch: never bigger than it",
    "LatentCut": "a slice of the input latent: never bigger than it",
    "LatentCrop": "a crop of the input latent: never bigger than it",
    "ImageCrop": "a crop of the input image: never bigger than it",
    "CropMask": "a crop of the input mask: never bigger than it",
    "FeatherMask": "left/top/right/bottom are feather widths inside the input mask; same size out",
    "VAEEncodeTiled": "tile sizes only split the work; the latent is 1/64 of the input image",
    "Morphology": "kernel_size (max 999) makes at most a 999x999 kernel; the output is the input's size",
    "RescaleCFG": "multiplier is a blend factor; same size out",
    "LatentMultiply": "multiplier is a factor on the values; same size out",
    "ModelMergeSubtract": "multiplier is a weight factor; the model's size is unchanged",
    "CLIPMergeSubtract": "multiplier is a weight factor; the model's size is unchanged",
    "PerturbedAttentionGuidance": "scale is a guidance strength",
    "SelfAttentionGuidance": "scale is a guidance strength",
    "LatentOperationTonemapReinhard": "multiplier is a factor on the values",
}


def _size_inputs(cls) -> list[str]:
    return [i.name for i in cls.inputs if i.type in ("INT", "FLOAT") and SIZE_LIKE.match(i.name)]


def _declares(cls) -> bool:
    return cls.estimate_bytes.__func__ is not _BASE


def test_every_node_with_a_size_like_input_declares_an_estimate_or_is_exempt():
    missing = [f"{c.class_type} ({c.__module__}: {', '.join(_size_inputs(c))})" for c in all_nodes()
               if _size_inputs(c) and not _declares(c) and c.class_type not in EXEMPT]
    assert not missing, ("these nodes take a size but declare no estimate_bytes; add one (engine.budget) or "
                         "list them in EXEMPT with the reason they cannot outgrow their inputs:\n" + "\n".join(missing))


def test_the_exemption_list_is_not_stale():
    by_name = {c.class_type: c for c in all_nodes()}
    stale = [n for n in EXEMPT if n not in by_name or _declares(by_name[n]) or not _size_inputs(by_name[n])]
    assert not stale, f"EXEMPT names nodes that are gone, declare an estimate, or take no size: {stale}"


@pytest.mark.parametrize("name, kw, make", [
    ("EmptySD3LatentImage", {"width": 64, "height": 48, "batch_size": 2}, None),
    ("EmptyFlux2LatentImage", {"width": 64, "height": 48, "batch_size": 2}, None),
    ("SolidMask", {"value": 0.5, "width": 10, "height": 7}, None),
    ("RepeatLatentBatch", {"amount": 3}, lambda: {"samples": {"samples": torch.zeros(2, 4, 8, 8),
                                                             "noise_mask": torch.ones(2, 1, 8, 8)}}),
    ("RepeatImageBatch", {"amount": 5}, lambda: {"image": torch.zeros(2, 6, 4, 3)}),
    ("ResizeAndPadImage", {"target_width": 30, "target_height": 20, "padding_color": "white",
                           "interpolation": "bilinear"}, lambda: {"image": torch.rand(2, 6, 4, 3)}),
    ("ImageScaleToMaxDimension", {"upscale_method": "bilinear", "largest_size": 40},
     lambda: {"image": torch.rand(1, 6, 4, 3)}),
    ("ImagePadForOutpaint", {"left": 8, "top": 0, "right": 16, "bottom": 8, "feathering": 0},
     lambda: {"image": torch.rand(2, 6, 4, 3)}),
    ("ImageStitch", {"direction": "right", "match_image_size": True, "spacing_width": 2, "spacing_color": "white"},
     lambda: {"image1": torch.rand(2, 6, 4, 3), "image2": torch.rand(1, 3, 9, 3)}),
    ("ImageStitch", {"direction": "up", "match_image_size": False, "spacing_width": 4, "spacing_color": "black"},
     lambda: {"image1": torch.rand(1, 6, 4, 3), "image2": torch.rand(1, 3, 9, 4)}),
])
def test_estimates_cover_what_run_makes(name, kw, make):
    """The estimate is at least the bytes of the tensors ``run`` returns (and not wildly more)."""
    cls = default_registry().get(name)
    args = {**kw, **(make() if make else {})}
    out = cls().run(None, **args)
    made = 0
    for o in out:
        for t in (o.values() if isinstance(o, dict) else [o]):
            if isinstance(t, torch.Tensor):
                made += t.numel() * t.element_size()
    est = cls.estimate_bytes(**args)
    assert made <= est <= 4 * made, (name, made, est)


@pytest.mark.parametrize("name", ["EmptySD3LatentImage", "EmptyFlux2LatentImage"])
def test_a_huge_empty_latent_is_refused_before_any_node_runs(name, tmp_path):
    """16384 x 16384, batch 4096 would be 16 TiB (SD3) / 8 TiB (FLUX.2): refused up front with the structured
    memory_budget_exceeded error naming the node, and nothing downstream runs."""
    ex = Executor(default_registry(), memory_budget=1 << 30)
    wf = {"1": {"class_type": name, "inputs": {"width": 16384, "height": 16384, "batch_size": 4096}},
          "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    events = []
    r = ex.run(wf, sink=events.append)
    assert r.status == "error" and r.error["node_id"] == "1" and r.error["node_type"] == name
    assert "memory budget" in r.error["exception_message"] and r.error["exception_type"].endswith("MemoryBudgetExceeded")
    item = r.node_errors["1"]["errors"][0]
    assert item["type"] == "memory_budget_exceeded"
    channels, down = (16, 8) if name == "EmptySD3LatentImage" else (128, 16)
    assert item["extra_info"] == {"needed_bytes": 4096 * channels * (16384 // down) ** 2 * 4, "budget_bytes": 1 << 30}
    assert r.nodes["1"].status == "failed" and r.nodes["2"].status == "skipped"
    assert [e.type for e in events][-1] == "execution_error"
    assert not any(e.type == "executing" and (e.data or {}).get("node") == "1" for e in events)


def test_a_linked_image_that_makes_a_node_too_big_is_refused_before_it_runs():
    """RepeatImageBatch of a linked 512x512 image 4096 times (12 GiB) is refused at run time, before it allocates."""
    ex = Executor(default_registry(), memory_budget=1 << 30)
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
          "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 4096}},
          "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    r = ex.run(wf)
    assert r.status == "error" and r.error["node_id"] == "2" and "memory budget" in r.error["exception_message"]
    assert r.nodes["1"].status == "executed" and r.nodes["3"].status == "skipped"
