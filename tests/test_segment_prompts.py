"""Prompts from ground-truth masks: where the points fall, the boxes, seeding, storage, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fmcache.errors import FmcacheError, SegmentInputError
from fmcache.segment.prompts import (
    N_POINTS,
    PROMPT_TYPES,
    Prompt,
    build_prompts,
    class_prompts,
    make_prompt,
    prompt_at,
)


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r**2


def _ring() -> np.ndarray:
    return _disk(40, 40, 20, 20, 15) & ~_disk(40, 40, 20, 20, 9)


def _c_shape() -> np.ndarray:
    c = _ring()
    c[14:27, 20:] = False  # open the ring on its right side
    return c


def _blob() -> np.ndarray:
    return _disk(30, 36, 12, 14, 8) | _disk(30, 36, 20, 24, 6)


def _inside(mask: np.ndarray, points: np.ndarray) -> bool:
    x, y = points[:, 0], points[:, 1]
    assert np.array_equal(x, np.round(x)) and np.array_equal(y, np.round(y))
    return bool(mask[y.astype(int), x.astype(int)].all())


def _brute_force_depth(mask: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the nearest background pixel, the outside of the image counting
    as background (a one-pixel frame), by comparing every pair of pixels."""
    padded = np.pad(mask, 1)
    fg = np.argwhere(padded)
    bg = np.argwhere(~padded)
    d = np.sqrt(((fg[:, None, :] - bg[None, :, :]) ** 2).sum(-1)).min(1)
    depth = np.zeros(padded.shape)
    depth[fg[:, 0], fg[:, 1]] = d
    return depth[1:-1, 1:-1]


@pytest.mark.parametrize("kind", ["center", "rand", "rands"])
@pytest.mark.parametrize("mask", [_blob(), _ring(), _c_shape()], ids=["blob", "ring", "c"])
def test_points_lie_inside_the_mask(kind, mask):
    for seed in range(5):
        p = make_prompt(mask, kind, seed=seed, item_id="a")
        assert p.points.shape == (N_POINTS[kind], 2) and p.points.dtype == np.float32
        assert p.point_labels.dtype == np.int32 and (p.point_labels == 1).all()
        assert p.box is None
        assert _inside(mask, p.points)


@pytest.mark.parametrize("mask", [_ring(), _c_shape()], ids=["ring", "c"])
def test_center_lies_inside_hollow_shapes_where_box_center_need_not(mask):
    assert _inside(mask, make_prompt(mask, "center", seed=0, item_id="a").points)
    box_center = make_prompt(_ring(), "box_center", seed=0, item_id="a").points
    assert not _inside(_ring(), box_center)  # the reference's rule lands in the hole
    assert box_center.tolist() == [[20.0, 20.0]]


@pytest.mark.parametrize("mask", [_blob(), _ring(), _c_shape(), np.ones((7, 5), bool)],
                         ids=["blob", "ring", "c", "full"])
def test_center_is_a_deepest_pixel_by_brute_force(mask):
    depth = _brute_force_depth(mask)
    (x, y), = make_prompt(mask, "center", seed=0, item_id="a").points.astype(int)
    assert mask[y, x]
    assert depth[y, x] == pytest.approx(depth.max())


def test_center_of_an_elongated_box_is_its_middle():
    mask = np.zeros((20, 50), bool)
    mask[5:10, 3:44] = True  # rows 5..9, columns 3..43: a plateau of depth 3 along row 7
    assert make_prompt(mask, "center", seed=0, item_id="a").points.tolist() == [[23.0, 7.0]]


def test_box_is_tight_and_box_center_rounds_down_like_the_reference():
    mask = np.zeros((12, 16), bool)
    mask[2:6, 3:9] = True  # rows 2..5, columns 3..8
    mask[3, 9] = True      # one more column on row 3
    box = make_prompt(mask, "bbox", seed=0, item_id="a")
    assert box.points is None and box.point_labels is None
    assert box.box.dtype == np.float32 and box.box.tolist() == [3.0, 2.0, 9.0, 5.0]
    # FairMedFM: ((x_min + x_max) // 2, (y_min + y_max) // 2)
    assert make_prompt(mask, "box_center", seed=0, item_id="a").points.tolist() == [[6.0, 3.0]]


def test_jittered_box_stays_within_jitter_of_the_tight_box_and_inside_the_image():
    mask = np.zeros((20, 30), bool)
    mask[1:6, 24:29] = True  # near the top and right edges, so clipping happens
    tight = make_prompt(mask, "bbox", seed=0, item_id="a").box
    jitter = 3
    boxes = np.array([make_prompt(mask, "bbox", seed=s, item_id="a", jitter=jitter).box for s in range(50)])
    assert (np.abs(boxes - tight) <= jitter).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 29).all() and (boxes[:, [1, 3]] <= 19).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert np.array_equal(boxes, np.round(boxes))
    assert len({tuple(b) for b in boxes}) > 10  # the jitter does move the sides
    assert (boxes[:, 2] == 29).any()  # clipped at the last column


def test_same_seed_and_id_reproduce_bit_for_bit_and_others_differ():
    mask = np.ones((50, 50), bool)
    first = make_prompt(mask, "rand", seed=3, item_id="img_007")
    again = make_prompt(mask, "rand", seed=3, item_id="img_007")
    assert first.points.tobytes() == again.points.tobytes()
    assert not np.array_equal(first.points, make_prompt(mask, "rand", seed=4, item_id="img_007").points)
    assert not np.array_equal(first.points, make_prompt(mask, "rand", seed=3, item_id="img_008").points)
    assert not np.array_equal(first.points, make_prompt(mask, "rand", seed=3, item_id="img_007", cls=2).points)


def test_an_items_prompts_do_not_depend_on_the_other_items_or_their_order():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, size=(24, 24)) for _ in range(6)]
    ids = [f"case{i}" for i in range(6)]
    kinds = list(PROMPT_TYPES)
    full = build_prompts(masks, ids, kinds, seed=1, n_classes=2, jitter=2)
    order = [4, 1, 5, 0]  # shuffled, and two items left out
    part = build_prompts([masks[i] for i in order], [ids[i] for i in order], kinds, seed=1, n_classes=2, jitter=2)
    assert part["ids"].tolist() == [ids[i] for i in order]
    for key in full:
        if full[key].ndim and key != "classes":
            np.testing.assert_array_equal(part[key], full[key][order], err_msg=key)


def test_label_map_gives_a_prompt_per_class_and_marks_a_missing_class_absent():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:8, 2:8] = 1
    labels[12:18, 10:19] = 3  # class 2 is missing
    for kind in PROMPT_TYPES:
        prompts = class_prompts(labels, kind, seed=0, item_id="a")
        assert sorted(prompts) == [1, 2, 3]
        assert prompts[2].is_absent and prompts[2].points is None and prompts[2].box is None
        for c in (1, 3):
            assert not prompts[c].is_absent
            if kind == "bbox":
                assert prompts[c].box.tolist() == make_prompt(labels == c, "bbox", seed=0, item_id="a").box.tolist()
            else:
                assert _inside(labels == c, prompts[c].points)
    arrays = build_prompts([labels], ["a"], ["rands", "bbox"], seed=0, n_classes=4)
    assert arrays["present"].tolist() == [[True, False, True, False]]
    assert arrays["rands.points"].shape == (1, 4, 5, 2) and arrays["bbox.box"].shape == (1, 4, 4)
    assert np.isnan(arrays["rands.points"][0, 1]).all() and (arrays["rands.point_labels"][0, 1] == -1).all()
    assert np.isnan(arrays["bbox.box"][0, 3]).all()
    assert prompt_at(arrays, "bbox", 0, 2).is_absent and prompt_at(arrays, "rands", 0, 4).is_absent


def test_rands_gives_five_distinct_points():
    mask = np.zeros((10, 10), bool)
    mask[4, 2:8] = True  # 6 pixels: drawn with replacement, repeats would be common
    for seed in range(20):
        points = make_prompt(mask, "rands", seed=seed, item_id="a").points
        assert points.shape == (5, 2) and len({tuple(p) for p in points}) == 5
        assert _inside(mask, points)


def test_a_one_pixel_mask_works_for_every_type():
    mask = np.zeros((9, 11), bool)
    mask[0, 10] = True  # a corner pixel: row 0, column 10
    for kind in PROMPT_TYPES:
        p = make_prompt(mask, kind, seed=0, item_id="a", jitter=2)
        if kind == "bbox":
            assert (p.box >= 0).all() and p.box[0] <= p.box[2] <= 10 and p.box[1] <= p.box[3] <= 8
            assert make_prompt(mask, kind, seed=0, item_id="a").box.tolist() == [10.0, 0.0, 10.0, 0.0]
        else:
            assert p.points.tolist() == [[10.0, 0.0]] * N_POINTS[kind]  # rands: 5 repeats of the pixel


def test_stored_arrays_give_back_the_same_prompts(tmp_path):
    labels = np.zeros((16, 16), np.int64)
    labels[3:9, 4:12] = 1
    for kind in PROMPT_TYPES:
        for prompt in class_prompts(labels, kind, seed=5, item_id=7, n_classes=2).values():
            back = Prompt.from_arrays(kind, prompt.to_arrays())
            assert back.is_absent == prompt.is_absent and back.kind == kind
            for name in ("points", "point_labels", "box"):
                a, b = getattr(prompt, name), getattr(back, name)
                assert (a is None and b is None) or (a.tobytes() == b.tobytes() and a.dtype == b.dtype)
    np.savez(tmp_path / "prompts.npz", **build_prompts([labels], [7], ["rand"], seed=5, n_classes=2))
    with np.load(tmp_path / "prompts.npz", allow_pickle=False) as stored:
        arrays = dict(stored)
    assert arrays["ids"].tolist() == ["7"] and int(arrays["seed"]) == 5
    stored = prompt_at(arrays, "rand", 0, 1)
    assert stored.points.tolist() == make_prompt(labels == 1, "rand", seed=5, item_id="7").points.tolist()


@pytest.mark.parametrize("call, fragment", [
    (lambda: make_prompt(np.ones((2, 2, 4, 4), bool), "center", seed=0, item_id="a"), "must be 2D"),
    (lambda: make_prompt(np.ones((4, 4), bool), "centre", seed=0, item_id="a"), "did you mean 'center'"),
    (lambda: make_prompt(np.ones((4, 4), bool), "bbox", seed=0, item_id="a", jitter=-1), "jitter"),
    (lambda: make_prompt(np.ones((4, 4), bool), "rand", seed=0.5, item_id="a"), "seed"),
    (lambda: class_prompts(np.full((4, 4), 0.5), "rand", seed=0, item_id="a"), "integers"),
    (lambda: class_prompts(np.full((4, 4), -1), "rand", seed=0, item_id="a"), "negative"),
    (lambda: build_prompts([np.ones((4, 4), int)], ["a", "b"], ["rand"], seed=0), "one id per mask"),
    (lambda: build_prompts([np.full((4, 4), 3)], ["a"], ["rand"], seed=0, n_classes=2), "n_classes"),
    (lambda: build_prompts([np.ones((4, 4), int)], ["a"], ["rand", "box"], seed=0), "unknown prompt type"),
    (lambda: build_prompts([], [], ["bbox"], seed=0, jitter=-2), "jitter"),
])
def test_bad_input_raises_one_clear_line(call, fragment):
    with pytest.raises(SegmentInputError) as err:
        call()
    assert isinstance(err.value, FmcacheError)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_importing_the_stage_loads_no_torch():
    code = ("import sys, fmcache.segment; assert 'fmcache.segment.prompts' not in sys.modules; "
            "import fmcache.segment.prompts; assert 'torch' not in sys.modules and 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# Values these prompts had when they were first stored: a change to the draws, the seeding or the
# tie-breaking would silently change every stored prompt set, so the exact numbers are pinned.
_PINNED_2D = {
    "blob": {"center": [[14.0, 12.0]], "box_center": [[18.0, 15.0]], "rand": [[18.0, 10.0]],
             "rands": [[16.0, 13.0], [21.0, 25.0], [26.0, 23.0], [15.0, 10.0], [6.0, 12.0]],
             "bbox": [5.0, 6.0, 29.0, 28.0]},
    "c": {"center": [[11.0, 12.0]], "box_center": [[19.0, 20.0]], "rand": [[29.0, 10.0]],
          "rands": [[31.0, 13.0], [18.0, 34.0], [14.0, 33.0], [26.0, 10.0], [30.0, 11.0]],
          "bbox": [4.0, 7.0, 32.0, 37.0]},
}


@pytest.mark.parametrize("name, mask", [("blob", _blob()), ("c", _c_shape())])
def test_2d_prompts_keep_their_pinned_values(name, mask):
    for kind, expected in _PINNED_2D[name].items():
        p = make_prompt(mask, kind, seed=3, item_id="img_1", cls=2, jitter=2)
        assert (p.box if kind == "bbox" else p.points).tolist() == expected, kind


def test_2d_stored_arrays_keep_their_pinned_values():
    labels = np.zeros((16, 20), np.int64)
    labels[2:9, 3:15] = 1
    labels[10:15, 5:18] = 2
    labels[4:6, 16:19] = 2
    arrays = build_prompts([labels], ["x"], list(PROMPT_TYPES), seed=11, n_classes=3, jitter=1)
    assert sorted(arrays) == ["bbox.box", "box_center.point_labels", "box_center.points", "center.point_labels",
                              "center.points", "classes", "ids", "jitter", "present", "rand.point_labels",
                              "rand.points", "rands.point_labels", "rands.points", "seed"]
    nan = [np.nan, np.nan]
    np.testing.assert_array_equal(arrays["rands.points"], [[
        [[14.0, 3.0], [6.0, 6.0], [4.0, 4.0], [6.0, 3.0], [13.0, 4.0]],
        [[13.0, 10.0], [9.0, 13.0], [8.0, 13.0], [15.0, 11.0], [8.0, 14.0]],
        [nan] * 5]])
    np.testing.assert_array_equal(arrays["bbox.box"], [[[2.0, 2.0, 14.0, 8.0], [5.0, 3.0, 17.0, 15.0], nan * 2]])
    np.testing.assert_array_equal(arrays["center.points"], [[[[8.0, 5.0]], [[11.0, 12.0]], [nan]]])
    assert arrays["rands.points"].shape == (1, 3, 5, 2) and arrays["bbox.box"].dtype == np.float32
