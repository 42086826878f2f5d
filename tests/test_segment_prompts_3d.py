"""Prompts from 3D label volumes: (x, y, z) points inside the object, the deepest point in mm,
tight boxes, seeding, per-class prompts, storage and the 2D/3D mixing error."""

from __future__ import annotations

import numpy as np
import pytest

from fmcache.datasets.volume_grid import canonical
from fmcache.errors import SegmentInputError
from fmcache.segment.prompts import N_POINTS, PROMPT_TYPES, Prompt, build_prompts, class_prompts, make_prompt, prompt_at

SHAPE = (24, 22, 20)  # X, Y, Z all different, so a swapped axis shows


def _ball(c: tuple[float, float, float], r: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    x, y, z = np.indices(shape)
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r**2


def _sphere() -> np.ndarray:
    return _ball((11, 10, 9), 7)


def _shell() -> np.ndarray:
    return _ball((11, 10, 9), 8) & ~_ball((11, 10, 9), 5)


def _torus_segment() -> np.ndarray:
    """A ring of tube radius 3 round the z axis through (11, 10, 9), with the part at x > 11 and
    |y - 10| < 4 cut away: a C whose centroid lies in the hole."""
    x, y, z = np.indices(SHAPE)
    torus = (np.hypot(x - 11, y - 10) - 6.5) ** 2 + (z - 9) ** 2 <= 3**2
    return torus & ~((x > 11) & (np.abs(y - 10) < 4))


SHAPES = {"sphere": _sphere, "shell": _shell, "torus": _torus_segment}


def _inside(volume: np.ndarray, points: np.ndarray) -> bool:
    assert points.shape[-1] == 3 and np.array_equal(points, np.round(points))
    x, y, z = points.astype(int).T
    return bool(volume[x, y, z].all())


def _brute_force_depth(volume: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Distance in mm from each voxel to the nearest background voxel, the outside of the volume
    counting as background (a one-voxel frame), by comparing every pair of voxels."""
    padded = np.pad(volume, 1)
    fg = np.argwhere(padded) * np.asarray(spacing)
    bg = np.argwhere(~padded) * np.asarray(spacing)
    d = np.concatenate([np.sqrt(((chunk[:, None] - bg[None]) ** 2).sum(-1)).min(1)
                        for chunk in np.array_split(fg, max(1, len(fg) // 256))])
    depth = np.zeros(padded.shape)
    depth[tuple(np.argwhere(padded).T)] = d
    return depth[1:-1, 1:-1, 1:-1]


@pytest.mark.parametrize("kind", ["center", "rand", "rands"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_points_lie_inside_the_object(kind, name):
    volume = SHAPES[name]()
    for seed in range(4):
        p = make_prompt(volume, kind, seed=seed, item_id="case", jitter=0)
        assert p.points.shape == (N_POINTS[kind], 3) and p.points.dtype == np.float32
        assert (p.point_labels == 1).all() and p.box is None and p.ndim == 3
        assert _inside(volume, p.points)


@pytest.mark.parametrize("name", ["shell", "torus"])
def test_center_is_inside_where_the_centroid_and_box_center_are_not(name):
    volume = SHAPES[name]()
    centroid = np.round(np.argwhere(volume).mean(0))[None]
    assert not _inside(volume, centroid)
    assert not _inside(volume, make_prompt(volume, "box_center", seed=0, item_id="a").points)
    assert _inside(volume, make_prompt(volume, "center", seed=0, item_id="a").points)


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 2.5), (0.7, 1.6, 1.0)], ids=["iso", "thick-z", "mixed"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_center_is_a_deepest_voxel_in_mm_by_brute_force(name, spacing):
    volume = SHAPES[name]()
    depth = _brute_force_depth(volume, spacing or (1.0, 1.0, 1.0))
    (x, y, z), = make_prompt(volume, "center", seed=0, item_id="a", spacing=spacing).points.astype(int)
    assert volume[x, y, z]
    assert depth[x, y, z] == pytest.approx(depth.max())


def _slab_and_fin() -> np.ndarray:
    """A slab thin in z (x 2..12, y 2..12, z 2..4) beside a fin thin in x (x 16..18, y 2..12,
    z 2..12): 2 voxels deep each, so which is deeper in mm depends on the spacing."""
    volume = np.zeros((22, 15, 16), bool)
    volume[2:13, 2:13, 2:5] = True
    volume[16:19, 2:13, 2:13] = True
    return volume


def test_center_moves_with_the_spacing_to_the_deepest_point_in_mm():
    volume = _slab_and_fin()
    # thick z slices: the slab's half thickness is 2 x 3 mm, as deep as its middle is from its
    # sides (6 mm), while the fin is 2 mm thin in x
    assert make_prompt(volume, "center", seed=0, item_id="a", spacing=(1, 1, 3)).points.tolist() == [[7, 7, 3]]
    # wide x voxels: now the fin is 6 mm deep at its middle and the slab only 2 mm
    assert make_prompt(volume, "center", seed=0, item_id="a", spacing=(3, 1, 1)).points.tolist() == [[17, 7, 7]]


def test_the_spacing_of_a_volume_grid_is_read_in_array_order():
    # a Volume's array is (X, Y, Z) and its spacing follows the array axes: x voxels of 3 mm put
    # the centre in the fin, as above
    grid = canonical(_slab_and_fin(), np.diag([3.0, 1.0, 1.0, 1.0]))
    assert grid.spacing == (3.0, 1.0, 1.0) and grid.orientation == ("R", "A", "S")
    p = make_prompt(grid.array, "center", seed=0, item_id="a", spacing=grid.spacing)
    assert p.points.tolist() == [[17, 7, 7]]


def test_center_of_a_box_is_its_middle():
    volume = np.zeros(SHAPE, bool)
    volume[3:20, 5:10, 2:9] = True  # x 3..19, y 5..9, z 2..8: a plateau of depth 3 along x
    assert make_prompt(volume, "center", seed=0, item_id="a").points.tolist() == [[11, 7, 5]]


def test_box_is_tight_and_box_center_rounds_down():
    volume = np.zeros(SHAPE, bool)
    volume[4:9, 6:8, 10:17] = True  # x 4..8, y 6..7, z 10..16
    volume[9, 6, 11] = True         # one voxel more at x 9
    volume[5, 3, 12] = True         # and one at y 3
    box = make_prompt(volume, "bbox", seed=0, item_id="a")
    assert box.points is None and box.box.dtype == np.float32 and box.ndim == 3
    assert box.box.tolist() == [4, 3, 10, 9, 7, 16]
    assert make_prompt(volume, "box_center", seed=0, item_id="a").points.tolist() == [[6, 5, 13]]


def test_jittered_box_stays_within_jitter_and_inside_the_volume():
    volume = np.zeros(SHAPE, bool)
    volume[20:24, 0:3, 15:19] = True  # touching the last x and the first y
    tight = make_prompt(volume, "bbox", seed=0, item_id="a").box
    assert tight.tolist() == [20, 0, 15, 23, 2, 18]
    boxes = np.array([make_prompt(volume, "bbox", seed=s, item_id="a", jitter=2).box for s in range(60)])
    assert (np.abs(boxes - tight) <= 2).all() and np.array_equal(boxes, np.round(boxes))
    assert (boxes >= 0).all() and (boxes[:, :3] <= boxes[:, 3:]).all()
    assert (boxes[:, [0, 3]] <= 23).all() and (boxes[:, [1, 4]] <= 21).all() and (boxes[:, [2, 5]] <= 19).all()
    assert (boxes[:, 3] == 23).mean() > 0.5 and (boxes[:, 1] == 0).mean() > 0.5  # clipped at the edges
    assert (boxes[:, 5] == 19).any() and len({tuple(b) for b in boxes}) > 20


def test_rands_gives_five_distinct_voxels_and_a_one_voxel_object_repeats():
    line = np.zeros(SHAPE, bool)
    line[3, 4, 5:11] = True  # 6 voxels
    for seed in range(10):
        points = make_prompt(line, "rands", seed=seed, item_id="a").points
        assert len({tuple(p) for p in points}) == 5 and _inside(line, points)
    dot = np.zeros(SHAPE, bool)
    dot[23, 0, 7] = True
    for kind in PROMPT_TYPES:
        p = make_prompt(dot, kind, seed=0, item_id="a")
        if kind == "bbox":
            assert p.box.tolist() == [23, 0, 7, 23, 0, 7]
        else:
            assert p.points.tolist() == [[23, 0, 7]] * N_POINTS[kind]


def test_seeds_reproduce_and_differ_across_seeds_items_and_classes():
    volume = _sphere()
    first = make_prompt(volume, "rands", seed=2, item_id="case_01", cls=1)
    assert first.points.tobytes() == make_prompt(volume, "rands", seed=2, item_id="case_01", cls=1).points.tobytes()
    for other in (dict(seed=3, item_id="case_01", cls=1), dict(seed=2, item_id="case_02", cls=1),
                  dict(seed=2, item_id="case_01", cls=2)):
        assert not np.array_equal(first.points, make_prompt(volume, "rands", **other).points), other


def _organs() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[_ball((7, 7, 6), 4)] = 1
    labels[14:21, 12:19, 10:16] = 3  # class 2 is absent
    return labels


def test_a_multi_class_volume_gives_a_prompt_per_class_and_marks_an_absent_class():
    labels = _organs()
    for kind in PROMPT_TYPES:
        prompts = class_prompts(labels, kind, seed=1, item_id="a", n_classes=4)
        assert sorted(prompts) == [1, 2, 3, 4]
        for c in (2, 4):
            assert prompts[c].is_absent and prompts[c].ndim == 3
        for c in (1, 3):
            if kind == "bbox":
                assert prompts[c].box.tolist() == make_prompt(labels == c, kind, seed=1, item_id="a").box.tolist()
            else:
                assert _inside(labels == c, prompts[c].points)
    assert class_prompts(labels, "bbox", seed=1, item_id="a")[3].box.tolist() == [14, 12, 10, 20, 18, 15]


def test_stored_volume_prompts_have_a_trailing_3_or_6_and_read_back():
    volumes = [_organs(), (_slab_and_fin() * 2).astype(np.int16)]  # sizes differ
    spacings = [(1.0, 1.0, 2.0), (3.0, 1.0, 1.0)]
    arrays = build_prompts(volumes, ["v0", "v1"], list(PROMPT_TYPES), seed=4, n_classes=3, jitter=1,
                           spacings=spacings)
    assert arrays["present"].tolist() == [[True, False, True], [False, True, False]]
    for kind in N_POINTS:
        assert arrays[f"{kind}.points"].shape == (2, 3, N_POINTS[kind], 3)
        assert arrays[f"{kind}.point_labels"].shape == (2, 3, N_POINTS[kind])
    assert arrays["bbox.box"].shape == (2, 3, 6)
    np.testing.assert_array_equal(arrays["spacing"], [[1, 1, 2], [3, 1, 1]])
    assert np.isnan(arrays["center.points"][0, 1]).all() and (arrays["center.point_labels"][0, 1] == -1).all()
    assert np.isnan(arrays["bbox.box"][1, 2]).all()
    for kind in PROMPT_TYPES:
        for i, (volume, spacing) in enumerate(zip(volumes, spacings)):
            for c in (1, 2, 3):
                stored = prompt_at(arrays, kind, i, c)
                made = make_prompt(volume == c, kind, seed=4, item_id=f"v{i}", cls=c, jitter=1, spacing=spacing)
                assert stored.ndim == 3 and stored.is_absent == made.is_absent
                for name in ("points", "point_labels", "box"):
                    a, b = getattr(stored, name), getattr(made, name)
                    assert (a is None and b is None) or a.tobytes() == b.tobytes(), (kind, i, c, name)
    # each item's spacing reaches its centre: the fin's middle, which it is not without one
    assert prompt_at(arrays, "center", 1, 2).points.tolist() == [[17, 7, 7]]
    unscaled = build_prompts(volumes, ["v0", "v1"], ["center"], seed=4, n_classes=3, spacings=[None, None])
    assert prompt_at(unscaled, "center", 1, 2).points.tolist() != [[17, 7, 7]]
    np.testing.assert_array_equal(unscaled["spacing"], np.ones((2, 3)))
    assert "spacing" not in build_prompts(volumes, ["v0", "v1"], ["center"], seed=4, n_classes=3)


def test_an_absent_volume_prompt_round_trips_as_3d():
    for kind in PROMPT_TYPES:
        stored = Prompt.absent(kind, 3).to_arrays()
        assert {k: v.shape for k, v in stored.items()} == (
            {"box": (6,)} if kind == "bbox" else {"points": (N_POINTS[kind], 3), "point_labels": (N_POINTS[kind],)})
        back = Prompt.from_arrays(kind, stored)
        assert back.is_absent and back.ndim == 3


@pytest.mark.parametrize("call, fragment", [
    (lambda: build_prompts([np.ones((6, 6), int), np.ones((6, 6, 6), int)], ["a", "b"], ["center"], seed=0),
     "mix 2D images (item 0"),
    (lambda: build_prompts([np.ones((6, 6, 6), int), np.ones((6, 6), int)], ["a", "b"], ["bbox"], seed=0),
     "separate calls"),
    (lambda: build_prompts([np.ones((6, 6, 6), int)], ["a"], ["center"], seed=0, spacings=[None, None]),
     "2 spacings"),
    (lambda: make_prompt(np.ones((6, 6, 6), bool), "center", seed=0, item_id="a", spacing=(1, 1)),
     "one positive size per axis of the 3D mask"),
    (lambda: make_prompt(np.ones((6, 6, 6), bool), "center", seed=0, item_id="a", spacing=(1, 0, 1)), "positive"),
    (lambda: make_prompt(np.ones((6, 6, 6), bool), "center", seed=0, item_id="a", spacing="1mm"), "spacing"),
    (lambda: Prompt("center", points=np.zeros((1, 3), np.float32), ndim=2), "mixes dimensions"),
    (lambda: Prompt.absent("bbox", 4), "ndim=4"),
])
def test_bad_input_raises_one_clear_line(call, fragment):
    with pytest.raises(SegmentInputError) as err:
        call()
    assert fragment in str(err.value) and "\n" not in str(err.value)
