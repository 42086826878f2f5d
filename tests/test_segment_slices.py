"""Volumes seen slice by slice by the 2D segmentation models: the view's rows are exactly the
foreground slices, its pixels and labels are the volume's, its predictions go back into the
volume at the right slices, it goes through the SAM feature cache, and the cache's record
rebuilds it.

Expected slices come from the label volumes the KiTS23 fixture writes (helpers/seg3d_layouts:
the stored slices run inferior, so axial slice k is stored slice 7 - k), not from the view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import official_layouts as ol
from helpers import seg3d_layouts as s3

import fmcache
from fmcache.datasets import load_dataset
from fmcache.errors import DatasetError
from fmcache.segment.demo_model import KEY, load_demo_sam
from fmcache.segment.features import SIZES, cached_items, embed_features
from fmcache.segment.sam import encode
from fmcache.segment.slices import (
    is_slice_view,
    rebuild,
    restack,
    restack_volumes,
    slice_dataset,
    split_id,
    volume_groups,
)

DEPTH = s3.KITS_SHAPE[0]


@pytest.fixture(scope="module")
def kits_root(tmp_path_factory) -> Path:
    return s3.write_kits23(tmp_path_factory.mktemp("kits23"))


@pytest.fixture(scope="module")
def volumes(kits_root):
    return load_dataset("kits23", data=kits_root, seed=0)


@pytest.fixture(scope="module")
def view(volumes):
    return slice_dataset(volumes)


def foreground_slices(case: int) -> list[int]:
    """Axial indices of the slices of fixture case ``case`` holding a class (1-3; the stray 5 is none)."""
    stored = s3.kits_labels(case, s3.KITS_CASES[case][4])
    return sorted(DEPTH - 1 - k for k in range(DEPTH) if np.isin(stored[k], (1, 2, 3)).any())


def write_labels(root: Path, case: int, stored: np.ndarray) -> None:
    ol.write_nifti(root / "dataset" / s3.KITS_CASES[case][0] / "segmentation.nii.gz", stored, s3.KITS_AFFINE)


def test_the_rows_are_the_foreground_slices_with_their_volumes_facts(volumes, view):
    want = [(v, s) for v in range(len(volumes.table)) for s in foreground_slices(v)]
    t = view.table
    assert list(zip(t["meta/volume_row"], t["meta/slice"])) == want
    assert len(want) > len(volumes.table) and any(foreground_slices(v) != foreground_slices(0) for v in range(3))
    vol_ids = volumes.table["id"].to_numpy()
    assert list(t["id"]) == [f"{vol_ids[v]}/z{s:04d}" for v, s in want]
    assert list(t["meta/volume"]) == [vol_ids[v] for v, _ in want]
    assert [split_id(i) for i in t["id"]] == [(vol_ids[v], s) for v, s in want]
    for c in ("subject", "split", "path", "meta/mask", *[c for c in volumes.table if c.startswith(("sa/", "sa_raw/"))]):
        assert list(t[c]) == [volumes.table[c].iloc[v] for v, _ in want], c
    assert view.name == "kits23_slices" and view.attribute_names == volumes.attribute_names
    assert not view.spec.volumetric_segmentation and view.spec.dim == "2d" and view.spec.task == "segmentation"
    assert view.spec.mask_classes == volumes.spec.mask_classes
    attrs = view.group_attrs()
    assert attrs["adapter"] == "kits23" and attrs["source_fingerprint"] == view.fingerprint != volumes.fingerprint
    assert attrs["slice_view"] == {"plane": "axial", "of": "kits23", "of_fingerprint": volumes.fingerprint,
                                   "skipped": []}
    assert is_slice_view(attrs) and not is_slice_view(volumes.group_attrs())
    assert view.missing_files() == []


def test_image_and_mask_are_the_volumes_slice(volumes, view):
    for i in range(len(view.table)):
        v, s = int(view.table["meta/volume_row"].iloc[i]), int(view.table["meta/slice"].iloc[i])
        image, mask = view.image(i), view.mask(i)
        gray = np.round(255 * volumes.image(v)[s]).astype(np.uint8)
        assert image.mode == "RGB" and image.size == (16, 16)
        np.testing.assert_array_equal(np.asarray(image), np.repeat(gray[:, :, None], 3, axis=2))
        assert mask.dtype == np.uint8 and mask.shape == (16, 16) and mask.any()
        np.testing.assert_array_equal(mask, volumes.mask(v)[s])
    # independently of the view: the fixture's HU say the class, through the abdominal window
    mask = view.mask(3)
    hu = np.vectorize(s3.KITS_HU.get)(mask)
    np.testing.assert_array_equal(np.asarray(view.image(3))[:, :, 0], np.round(255 * (hu + 160.0) / 400.0))


def test_each_volume_is_read_once_walking_the_rows_in_order(volumes, monkeypatch):
    view = slice_dataset(volumes)
    reads = {"image": [], "mask": []}
    image, mask = volumes.image, volumes.mask_volume  # the label volume is read with its grid (spacing)
    monkeypatch.setattr(volumes, "image", lambda i: reads["image"].append(i) or image(i))
    monkeypatch.setattr(volumes, "mask_volume", lambda i: reads["mask"].append(i) or mask(i))
    for i in range(len(view.table)):
        view.image(i)
        view.mask(i)
    n = len(volumes.table)
    assert reads["image"] == reads["mask"] == list(range(n))
    view.mask(len(view.table) - 1)
    view.label_stack(n - 1)
    view.spacing(n - 1)
    assert reads["mask"] == list(range(n))


def test_a_coronal_view_cuts_the_same_voxels(volumes):
    view = slice_dataset(volumes, "coronal")
    assert view.group_attrs()["slice_view"]["plane"] == "coronal"
    assert view.fingerprint != slice_dataset(volumes).fingerprint
    for i in (0, 5, len(view.table) - 1):
        v, s = int(view.table["meta/volume_row"].iloc[i]), int(view.table["meta/slice"].iloc[i])
        mask = view.mask(i)
        np.testing.assert_array_equal(mask, volumes.mask_volume(v).slices("coronal")[s])
        hu = np.vectorize(s3.KITS_HU.get)(mask)
        np.testing.assert_array_equal(np.asarray(view.image(i))[:, :, 0], np.round(255 * (hu + 160.0) / 400.0))
    with pytest.raises(DatasetError, match="plane 'oblique'"):
        slice_dataset(volumes, "oblique")


def test_a_2d_dataset_is_not_cut():
    with pytest.raises(DatasetError, match="not a volumetric segmentation dataset"):
        slice_dataset(load_dataset("synthetic", options={"size": "4", "image_size": "16"}))


# ---------------------------------------------------------------------------- back into volumes


def layered_volume(depth: int = 7, side: int = 12) -> np.ndarray:
    """Every slice different: slice s holds a square of side s + 1 of class s % 3 + 1."""
    vol = np.zeros((depth, side, side), np.uint8)
    for s in range(depth):
        vol[s, 1:s + 2, 2:s + 3] = s % 3 + 1
    return vol


def test_restack_puts_every_slice_back_where_it_was():
    vol = layered_volume()
    index = np.arange(len(vol))
    np.testing.assert_array_equal(restack(vol.shape, index, list(vol)), vol)
    perm = np.random.default_rng(0).permutation(len(vol))
    np.testing.assert_array_equal(restack(vol.shape, perm, [vol[s] for s in perm]), vol)
    np.testing.assert_array_equal(restack(len(vol), perm, vol[perm]), vol)
    assert not np.array_equal(restack(vol.shape, index[:-1] + 1, vol[:-1]), vol)  # shifted by one: wrong
    assert not np.array_equal(restack(vol.shape, (index + 1) % len(vol), vol), vol)
    assert not np.array_equal(restack(vol.shape, index[::-1], list(vol)), vol)
    some = np.array([5, 1, 3])
    partial = restack(vol.shape, some, vol[some])
    np.testing.assert_array_equal(partial[some], vol[some])
    assert not partial[[0, 2, 4, 6]].any()


@pytest.mark.parametrize("index, masks, match", [
    ([0, 0], [np.zeros((12, 12))] * 2, "more than once"),
    ([7], [np.zeros((12, 12))], "outside a volume of 7"),
    ([-1], [np.zeros((12, 12))], "outside"),
    ([0], [np.zeros((12, 11))], "shape"),
    ([0, 1], [np.zeros((12, 12))], "1 slice masks for 2"),
])
def test_restack_refuses_what_does_not_fit(index, masks, match):
    with pytest.raises(ValueError, match=match):
        restack((7, 12, 12), index, masks)


def test_a_views_slice_masks_restack_into_its_label_volumes(volumes, view):
    groups = volume_groups(view)
    assert list(groups) == list(range(len(volumes.table)))
    for v, rows in groups.items():
        assert list(view.table["meta/slice"].iloc[rows]) == foreground_slices(v)
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(view.table))  # any order in, slice order out
    stacks = restack_volumes(view, rows, [view.mask(int(r)) for r in rows])
    for v, stack in stacks.items():
        np.testing.assert_array_equal(stack, volumes.mask(v))  # the slices left out are background
        np.testing.assert_array_equal(view.label_stack(v), volumes.mask(v))
    test = np.flatnonzero(view.table["split"].to_numpy() == 2)
    assert set(volume_groups(view, test)) == set(np.flatnonzero(volumes.table["split"].to_numpy() == 2))


# ---------------------------------------------------------------------------- the cache


def test_the_view_goes_through_the_feature_cache_and_rebuilds_from_it(kits_root, view, tmp_path):
    sam = load_demo_sam(tmp_path / "weights", size=64)
    out = embed_features(view, KEY, root=tmp_path / "cache", sam=sam, chunk_rows=8, batch_size=4, progress=False,
                         device="cpu")
    n = len(view.table)
    assert out.encoded == n
    emb = fmcache.open_cache(tmp_path / "cache").embeddings(view.name, KEY)
    samples = emb.samples()
    assert list(samples["id"]) == list(view.table["id"])
    assert list(samples["split"]) == [("train", "val", "test")[s] for s in view.table["split"]]
    assert list(samples["sa/sex"]) == list(view.table["sa/sex"])
    rows = np.array([0, 7, n - 1])
    features, meta = cached_items(emb, rows)
    want, _ = encode(sam, [np.asarray(view.image(int(r))) for r in rows], batch_size=len(rows))
    np.testing.assert_allclose(features, want.astype(np.float16).astype(np.float32), rtol=0, atol=0)
    assert [tuple(s) for s in emb.item_rows(SIZES, rows)] == [(16, 16, 64, 64)] * 3

    info = emb.dataset_info
    assert is_slice_view(info)
    again = rebuild(info, kits_root)
    assert again.name == emb.dataset and again.fingerprint == info["source_fingerprint"]
    assert list(again.table["id"]) == list(samples["id"])
    np.testing.assert_array_equal(again.mask(7), view.mask(7))


# ---------------------------------------------------------------------------- label volumes change


def test_the_fingerprint_follows_the_foreground_slices(tmp_path):
    root = s3.write_kits23(tmp_path / "kits23")
    before = slice_dataset(load_dataset("kits23", data=root))
    stored = s3.kits_labels(1, s3.KITS_CASES[1][4])
    stored[7, 4, 4] = 1  # the last stored slice, axial slice 0, gains a kidney voxel
    write_labels(root, 1, stored)
    volumes = load_dataset("kits23", data=root)
    after = slice_dataset(volumes)
    assert volumes.fingerprint == before.group_attrs()["slice_view"]["of_fingerprint"]  # same volumes table
    assert after.fingerprint != before.fingerprint
    assert set(after.table["id"]) - set(before.table["id"]) == {"case_00001/z0000"}
    with pytest.raises(DatasetError, match="foreground slices kits23_slices was cached from"):
        rebuild(before.group_attrs(), root)
    assert rebuild(after.group_attrs(), root).fingerprint == after.fingerprint


def test_volumes_without_foreground_are_left_out_and_named(tmp_path):
    root = s3.write_kits23(tmp_path / "kits23")
    stray_only = np.zeros(s3.KITS_SHAPE, np.uint8)
    stray_only[0, 0, 15] = s3.KITS_STRAY  # not a class: background
    write_labels(root, 3, stray_only)
    view = slice_dataset(load_dataset("kits23", data=root))
    assert view.group_attrs()["slice_view"]["skipped"] == ["case_00003"]
    assert "case_00003" not in set(view.table["meta/volume"]) and 3 not in volume_groups(view)
    assert len(set(view.table["meta/volume"])) == len(s3.KITS_CASES) - 1
    for case in range(len(s3.KITS_CASES)):
        write_labels(root, case, np.zeros(s3.KITS_SHAPE, np.uint8))
    with pytest.raises(DatasetError, match="none of its 11 label volumes holds any foreground"):
        slice_dataset(load_dataset("kits23", data=root))
