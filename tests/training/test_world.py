"""The shapes world and its pixel scorer."""
import random
import re

import numpy as np

from training import world
from training.scorer import accuracy, analyse, score, score_scene_multi


def test_scorer_perfect_on_ground_truth_single_shapes():
    imgs, scenes = world.make_dataset(300, seed=11, two_shape_prob=0.0)
    acc = accuracy([score(i, s) for i, s in zip(imgs, scenes)])
    assert acc["all"] >= 0.99, acc


def test_scorer_on_two_shape_scenes():
    imgs, scenes = world.make_dataset(100, seed=12, two_shape_prob=1.0)
    assert all(len(s.shapes) == 2 for s in scenes)
    acc = accuracy([score_scene_multi(i, s) for i, s in zip(imgs, scenes)])
    assert acc["all"] >= 0.97, acc


def test_scorer_detects_wrong_images():
    imgs, scenes = world.make_dataset(50, seed=13, two_shape_prob=0.0)
    # score each image against the next scene: most attributes must then fail somewhere
    acc = accuracy([score(imgs[i], scenes[(i + 1) % 50]) for i in range(50)])
    assert acc["all"] < 0.2, acc
    blank = np.zeros((64, 64, 3), np.uint8) + np.array(world.PALETTE["blue"], np.uint8)
    a = analyse(blank)
    assert a["bg"] == "blue" and a["shapes"] == []
    r = score(blank, scenes[0])
    assert not r["color"] and not r["shape"]


def test_render_is_deterministic_and_shapes_differ():
    a, _ = world.make_dataset(5, seed=3)
    b, _ = world.make_dataset(5, seed=3)
    c, _ = world.make_dataset(5, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (5, 64, 64, 3) and a.dtype == np.uint8


def _caption_mentions(cap, scene):
    words = set(re.findall(r"[a-z]+", cap))
    ok = scene.bg in words
    for s in scene.shapes:
        ok &= s.color in words and s.shape in words
    return ok


def test_captions_match_rendered_attributes():
    rng = random.Random(5)
    imgs, scenes = world.make_dataset(200, seed=5)
    phrasings = set()
    for img, sc in zip(imgs, scenes):
        cap = world.caption(sc, rng)
        assert _caption_mentions(cap, sc), (cap, sc)
        # the colours / shapes the caption names are the ones the scorer reads from the pixels
        found = analyse(img, len(sc.shapes))
        assert found["bg"] == sc.bg
        words = set(re.findall(r"[a-z]+", cap))
        for f in found["shapes"]:
            assert f["color"] in words and f["shape"] in words
        assert not (set(world.COLORS) - {sc.bg} - {s.color for s in sc.shapes}) & words, cap
        if len(sc.shapes) == 1 and any(p in cap for p in sum(world.POS_PHRASES.values(), [])):
            want = sc.shapes[0].pos
            assert any(p in cap for p in world.POS_PHRASES[want]), cap
            assert found["shapes"][0]["pos"] == want
        phrasings.add(re.sub(r"\b(" + "|".join(world.COLORS + world.SHAPES + world.SIZES) + r")\b", "X", cap))
    assert len(phrasings) >= 10  # several phrasings, not one template
    assert all(s.bg not in {x.color for x in s.shapes} for s in scenes)


def test_captions_use_correct_articles():
    rng = random.Random(0)
    for _ in range(300):
        cap = world.caption(world.sample_scene(rng), rng)
        assert not re.search(r"\ba (orange|a|e|i|o|u)", cap), cap
        assert not re.search(r"\ban (red|green|blue|yellow|white|black|purple|large|small|circle|square)", cap), cap


def test_eval_scenes_balanced():
    sc = world.eval_scenes(120)
    for attr, vals in (("color", world.COLORS), ("pos", world.POSITIONS), ("shape", world.SHAPES)):
        counts = {v: sum(getattr(s.shapes[0], attr) == v for s in sc) for v in vals}
        assert min(counts.values()) == max(counts.values()), counts
    assert all(s.bg != s.shapes[0].color for s in sc)
