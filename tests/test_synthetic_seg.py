"""The generated segmentation dataset: classes, groups and splits; masks that outline the
objects; and a planted disparity that pixels show as recorded, and that vanishes at 0."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage as ndi

from fmcache.datasets import load_dataset
from fmcache.errors import DatasetError

N = 60


@pytest.fixture(scope="module")
def planted():
    return load_dataset("synthetic_seg", options={"size": str(N)})


@pytest.fixture(scope="module")
def even():
    return load_dataset("synthetic_seg", options={"size": str(N), "disparity": "0"})


def _gray(ds, i: int) -> np.ndarray:
    return np.asarray(ds.image(i).convert("L"), dtype=np.float64) / 255.0


def test_classes_groups_and_patient_level_splits(planted):
    assert planted.spec.task == "segmentation" and planted.spec.mask_classes == ("lesion",)
    attrs = planted.group_attrs()
    assert attrs["mask_classes"] == ["lesion"] and attrs["needs_data"] is False
    t = planted.table
    assert len(t) == N and t["id"].is_unique and not any(c.startswith("label/") for c in t.columns)
    assert {a: g["groups"] for a, g in attrs["attributes"].items()} == {"sex": ["male", "female"],
                                                                      "age": ["young", "old"]}
    assert set(t["sa/sex"]) == {0, 1} and set(t["sa/age"]) == {0, 1}
    assert set(t["split"]) == {0, 1, 2}
    assert (t.groupby("subject")["split"].nunique() == 1).all()
    im, m = planted.image(0), planted.mask(0)
    assert im.mode == "RGB" and im.size == (128, 128) and m.shape == (128, 128) and set(np.unique(m)) == {0, 1}


def test_same_seed_same_bytes_other_seed_other_pixels(planted):
    again = load_dataset("synthetic_seg", options={"size": str(N)})
    other = load_dataset("synthetic_seg", options={"size": str(N), "seed": "1"})
    assert again.fingerprint == planted.fingerprint != other.fingerprint
    for i in (0, 7, N - 1):
        assert planted.image(i).tobytes() == again.image(i).tobytes()
        assert hashlib.sha256(planted.mask(i).tobytes()).digest() == hashlib.sha256(again.mask(i).tobytes()).digest()
    assert planted.image(0).tobytes() != other.image(0).tobytes()


def test_masks_outline_the_generated_objects(planted):
    t = planted.table
    for i in range(N):
        m = planted.mask(i).astype(bool)
        n = m.shape[0]
        # centre and size from the generator's parameters, on the [-1, 1] axes of pixel centres
        cx, cy = (t["gen/cx"].iloc[i] + 1) * n / 2 - 0.5, (t["gen/cy"].iloc[i] + 1) * n / 2 - 0.5
        ys, xs = np.nonzero(m)
        assert abs(xs.mean() - cx) < 0.5 and abs(ys.mean() - cy) < 0.5
        r = t["gen/radius"].iloc[i] * n / 2
        ellipse = np.pi * r * r * t["gen/aspect"].iloc[i]
        assert 0.95 < m.sum() / ellipse < 1.05  # the lobes add and take about as much
        assert ndi.label(m)[1] == 1  # one object


def _measure(ds) -> dict[str, np.ndarray]:
    """Per image: contrast (interior minus a ring outside), far-background roughness, and the
    Dice of a naive delineator (smooth, threshold half way up) against the mask."""
    out = {"contrast": [], "rough": [], "dice": []}
    for i in range(len(ds.table)):
        im, m = _gray(ds, i), ds.mask(i).astype(bool)
        inside, outside = ndi.distance_transform_edt(m), ndi.distance_transform_edt(~m)
        ring = (outside > 6) & (outside < 12)
        contrast = im[inside > 4].mean() - im[ring].mean()
        pred = ndi.gaussian_filter(im, 2) > im[ring].mean() + contrast / 2
        out["contrast"].append(contrast)
        out["rough"].append(im[outside > 15].std())
        out["dice"].append(2 * (pred & m).sum() / (pred.sum() + m.sum()))
    return {k: np.asarray(v) for k, v in out.items()}


def test_planted_disparity_shows_in_the_pixels_as_recorded(planted):
    p = planted.extra_attrs["planted"]
    assert p["attribute"] == "sex" and p["disadvantaged"] == "female" and p["disparity"] == 0.5
    assert p["contrast"]["male"] == pytest.approx(0.3) and p["contrast"]["female"] == pytest.approx(0.15)
    assert p["edge_width"]["female"] > p["edge_width"]["male"] and p["texture"]["female"] > p["texture"]["male"]
    m = _measure(planted)
    male, female = planted.table["sa/sex"].to_numpy() == 0, planted.table["sa/sex"].to_numpy() == 1
    assert m["contrast"][male].mean() == pytest.approx(p["contrast"]["male"], abs=0.03)
    # the blurrier edge and texture take a little off the female interior's measured contrast
    assert m["contrast"][female].mean() == pytest.approx(p["contrast"]["female"], abs=0.04)
    assert np.median(m["rough"][female]) > 1.3 * np.median(m["rough"][male])
    # harder to delineate: a naive delineator's Dice drops for the disadvantaged group
    assert np.median(m["dice"][male]) > 0.9 and np.median(m["dice"][female]) < 0.6


def test_no_disparity_no_gap(even):
    p = even.extra_attrs["planted"]
    assert p["contrast"]["male"] == p["contrast"]["female"] and p["edge_width"]["male"] == p["edge_width"]["female"]
    m = _measure(even)
    male, female = even.table["sa/sex"].to_numpy() == 0, even.table["sa/sex"].to_numpy() == 1
    assert abs(m["contrast"][male].mean() - m["contrast"][female].mean()) < 0.03
    assert abs(np.median(m["dice"][male]) - np.median(m["dice"][female])) < 0.05


@pytest.mark.parametrize("option", ["size=0", "seed=-1", "image_size=8", "disparity=1.5", "disparity=x"])
def test_bad_options_are_dataset_errors(option):
    key, value = option.split("=")
    with pytest.raises(DatasetError, match=f"synthetic_seg: option {key}"):
        load_dataset("synthetic_seg", options={key: value})
