"""The 2D segmentation adapters: samples tables, label maps aligned with the images, checks.

Expected counts are worked out by hand from the rows in helpers/official_layouts.py and
helpers/seg_layouts.py; every mask is decoded here independently of the adapters.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fmcache.datasets import load_dataset
from fmcache.datasets.check import check_dataset
from fmcache.errors import DatasetError

from helpers import official_layouts as ol
from helpers import seg_layouts as sl

SEX = {"male": 0, "female": 1, "unknown": -1}
AGE = {"young": 0, "old": 1, "unknown": -1}


def counts(values, names: dict[str, int]) -> dict[str, int]:
    v = np.asarray(values)
    return {name: int((v == code).sum()) for name, code in names.items()}


def row_of(ds, sample_id: str) -> int:
    return int(np.flatnonzero(ds.table["id"].to_numpy() == sample_id)[0])


def assert_segmentation_table(ds) -> None:
    """No labels, whole subjects per split, every split used, mask classes recorded."""
    t = ds.table
    assert not [c for c in t.columns if c.startswith("label/")]
    assert (t.groupby("subject")["split"].nunique() == 1).all()
    assert set(t["split"]) == {0, 1, 2}
    attrs = ds.group_attrs()
    assert attrs["task"] == "segmentation" and attrs["mask_classes"] == list(ds.spec.mask_classes)
    assert attrs["label_names"] == [] and "first attribute" in attrs["split_policy"]


def assert_masks_fit(ds) -> None:
    for i in range(len(ds.table)):
        m = ds.mask(i)
        assert m.dtype == np.uint8 and m.shape == ds.image(i).size[::-1]


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory) -> Path:
    return sl.write_ham10000_seg(tmp_path_factory.mktemp("ham_seg"))


# ---------------------------------------------------------------------------- HAM10000 lesion masks


def test_ham10000_seg_table_groups_and_splits(ham_root):
    ds = load_dataset("ham10000_seg", data=ham_root, seed=0)
    t = ds.table
    assert len(t) == 18 and t["subject"].nunique() == 15 and ds.name == "ham10000_seg"
    assert list(t["id"]) == [r[1] for r in ol.HAM_ROWS]
    assert ds.spec.mask_classes == ("lesion",)
    assert counts(t["sa/sex"], SEX) == {"male": 9, "female": 8, "unknown": 1}
    assert counts(t["sa/age"], AGE) == {"young": 7, "old": 10, "unknown": 1}
    i = row_of(ds, "ISIC_0027008")
    assert t["sa_raw/sex"].iloc[i] == "unknown" and t["sa/sex"].iloc[i] == -1  # never merged into male
    assert_segmentation_table(ds)


def test_ham10000_seg_masks_equal_the_files(ham_root):
    ds = load_dataset("ham10000_seg", data=ham_root, seed=0)
    assert_masks_fit(ds)
    for i, image_id in enumerate(ds.table["id"]):
        png = ham_root / sl.HAM_MASK_DIR / f"{image_id}_segmentation.png"
        expected = (np.asarray(Image.open(png)) == 255).astype(np.uint8)
        assert np.array_equal(ds.mask(i), expected) and expected.any()


def test_ham10000_seg_nested_folder_and_errors(tmp_path):
    root = sl.write_ham10000_seg(tmp_path / "nested", nested=True)
    ds = load_dataset("ham10000_seg", data=root)
    assert ds.table["meta/mask"].iloc[0] == f"{sl.HAM_MASK_DIR}/{sl.HAM_MASK_DIR}/ISIC_0027419_segmentation.png"
    assert ds.mask(0).sum() > 0
    bare = ol.write_ham10000(tmp_path / "bare")
    with pytest.raises(DatasetError, match=r"no lesion masks in .*HAM10000_segmentations_lesion_tschandl.*unpack"):
        load_dataset("ham10000_seg", data=bare)
    png = root / sl.HAM_MASK_DIR / sl.HAM_MASK_DIR / "ISIC_0027419_segmentation.png"
    Image.fromarray(np.full(sl.HAM_SHAPE, 128, np.uint8)).save(png)
    with pytest.raises(DatasetError, match=r"ISIC_0027419_segmentation\.png holds value 128"):
        ds.mask(0)


def test_ham10000_seg_check_passes_and_names_a_damaged_mask(tmp_path, run_cli):
    root = sl.write_ham10000_seg(tmp_path)
    report = check_dataset("ham10000_seg", root)
    assert report.ok and report.rows == 18 and not report.bad_masks and report.mask_classes == ("lesion",)
    code, out, _ = run_cli("datasets", "check", "ham10000_seg", "--data", str(root))
    assert code == 0 and out.strip().endswith("OK") and "mask classes: lesion" in out
    folder = root / sl.HAM_MASK_DIR
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "ISIC_0024306_segmentation.png")
    (folder / "ISIC_0025030_segmentation.png").write_bytes(b"not a png")
    report = check_dataset("ham10000_seg", root)
    assert not report.ok and [r for r, _ in report.bad_masks] == ["ISIC_0025030", "ISIC_0024306"]
    assert "cannot read mask" in report.bad_masks[0][1] and "ISIC_0025030_segmentation.png" in report.bad_masks[0][1]
    assert "ISIC_0024306_segmentation.png is 10 x 10 (H x W) but its image is 45 x 60" in report.bad_masks[1][1]
    code, out, _ = run_cli("datasets", "check", "ham10000_seg", "--data", str(root))
    assert code == 1 and "2 of 18 masks" in out and "ISIC_0024306_segmentation.png is 10 x 10" in out


# ---------------------------------------------------------------------------- Montgomery County CXR


@pytest.fixture(scope="module")
def montgomery_root(tmp_path_factory) -> Path:
    return sl.write_montgomery(tmp_path_factory.mktemp("montgomery"))


def test_montgomery_table_groups_and_splits(montgomery_root):
    ds = load_dataset("montgomery", data=montgomery_root, seed=0)
    t = ds.table
    assert list(t["id"]) == [r[0] for r in sl.MONTGOMERY_ROWS] and ds.spec.mask_classes == ("left lung", "right lung")
    assert t["subject"].nunique() == 9
    assert t["subject"].iloc[row_of(ds, "MCUCXR_0163_1")] == t["subject"].iloc[row_of(ds, "MCUCXR_0162_1")]
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 4, "unknown": 1}
    assert counts(t["sa/age"], AGE) == {"young": 6, "old": 4, "unknown": 0}
    first = t.iloc[0]
    assert first["sa_raw/sex"] == "F" and first["sa_raw/age"] == "027Y" and first["sa/age"] == 0
    assert t["sa_raw/sex"].iloc[row_of(ds, "MCUCXR_0003_0")] == "O"
    assert first["path"] == f"{sl.MONTGOMERY_SET}/CXR_png/MCUCXR_0001_0.png"
    assert_segmentation_table(ds)
    for seed in (1, 2, 3):
        other = load_dataset("montgomery", data=montgomery_root, seed=seed).table
        assert (other.groupby("subject")["split"].nunique() == 1).all()


def test_montgomery_masks_equal_the_files(montgomery_root):
    ds = load_dataset("montgomery", data=montgomery_root / sl.MONTGOMERY_SET)  # --data MontgomerySet/ itself
    assert_masks_fit(ds)
    masks = montgomery_root / sl.MONTGOMERY_SET / "ManualMask"
    for i, stem in enumerate(ds.table["id"]):
        left = np.asarray(Image.open(masks / "leftMask" / f"{stem}.png")) // 255
        right = np.asarray(Image.open(masks / "rightMask" / f"{stem}.png")) // 255
        assert np.array_equal(ds.mask(i), left + 2 * right) and set(np.unique(ds.mask(i))) == {0, 1, 2}
        assert ds.image(i).size == sl.montgomery_shape(i)[::-1]


def test_montgomery_errors_name_the_file(tmp_path):
    root = sl.write_montgomery(tmp_path)
    base = root / sl.MONTGOMERY_SET
    ds = load_dataset("montgomery", data=root)
    left = base / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png"
    Image.fromarray(np.full(sl.montgomery_shape(0), 255, np.uint8)).save(left)
    with pytest.raises(DatasetError, match=r"MCUCXR_0001_0\.png marks pixels as both left and right lung"):
        ds.mask(0)
    (base / "ClinicalReadings" / "MCUCXR_0002_0.txt").write_text("Patient's Age: 064Y\nnormal\n")
    with pytest.raises(DatasetError, match=r"MCUCXR_0002_0\.txt has no line \"Patient's Sex:\"; replace"):
        load_dataset("montgomery", data=root)
    (base / "ClinicalReadings" / "MCUCXR_0002_0.txt").write_text("Patient's Sex: M \nPatient's Age: 64 years\n")
    with pytest.raises(DatasetError, match=r"unexpected age value '64 years'"):
        load_dataset("montgomery", data=root)
    with pytest.raises(DatasetError, match=r"CXR_png/ not found"):
        load_dataset("montgomery", data=base / "ManualMask")


def test_montgomery_check_passes_and_names_a_damaged_mask(tmp_path):
    root = sl.write_montgomery(tmp_path)
    assert check_dataset("montgomery", root).ok
    right = root / sl.MONTGOMERY_SET / "ManualMask" / "rightMask" / "MCUCXR_0170_1.png"
    right.write_bytes(right.read_bytes()[:40])  # truncated
    report = check_dataset("montgomery", root)
    assert not report.ok and [r for r, _ in report.bad_masks] == ["MCUCXR_0170_1"]
    assert "rightMask/MCUCXR_0170_1.png" in report.bad_masks[0][1]


# ---------------------------------------------------------------------------- Harvard-FairSeg


@pytest.fixture(scope="module")
def fairseg_root(tmp_path_factory) -> Path:
    return sl.write_fairseg(tmp_path_factory.mktemp("fairseg"))


def test_fairseg_table_groups_and_splits(fairseg_root):
    ds = load_dataset("fairseg", data=fairseg_root, seed=0)
    t = ds.table
    assert list(t["id"]) == [f"data_{i:05d}" for i in range(1, 13)] and ds.spec.mask_classes == ("optic cup", "rim")
    assert t["subject"].nunique() == 12 and t["subject"].iloc[11] == "P0012" and t["subject"].iloc[0] == "data_00001"
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 7, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 6, "old": 6, "unknown": 0}  # 59.99 young, 60.00 old
    assert counts(t["sa/race"], {"white": 0, "non-white": 1, "unknown": -1}) == {"white": 6, "non-white": 6, "unknown": 0}
    assert counts(t["sa/ethnicity"], {"non-hispanic": 0, "hispanic": 1, "unknown": -1}) == {
        "non-hispanic": 9, "hispanic": 2, "unknown": 1}
    assert counts(t["sa/language"], {"english": 0, "non-english": 1, "unknown": -1}) == {
        "english": 8, "non-english": 3, "unknown": 1}
    assert counts(t["sa/marital_status"], {"partnered": 0, "not partnered": 1, "unknown": -1}) == {
        "partnered": 4, "not partnered": 7, "unknown": 1}
    last = t.iloc[11]  # age stored in days, race as the raw code 7
    assert last["sa_raw/age"] == "41.9" and last["sa_raw/race"] == "white" and last["sa/age"] == 0
    assert_segmentation_table(ds)


def test_fairseg_masks_and_images_equal_the_files(fairseg_root):
    ds = load_dataset("fairseg", data=fairseg_root)
    assert_masks_fit(ds)
    for i, sample_id in enumerate(ds.table["id"]):
        with np.load(fairseg_root / f"{sample_id}.npz") as z:
            stored = next(z[k] for k in ("disc_cup_mask", "disc_cup_borders", "disc_cup") if k in z.files)
            image = next(z[k] for k in ("slo_fundus", "fundus_slo") if k in z.files)
        expected = np.where(stored == -2, 1, np.where(stored == -1, 2, 0))
        assert np.array_equal(ds.mask(i), expected) and set(np.unique(expected)) == {0, 1, 2}
        assert np.array_equal(np.asarray(ds.image(i))[..., 0], image)


def test_fairseg_errors_name_the_file(tmp_path):
    root = sl.write_fairseg(tmp_path)
    ds = load_dataset("fairseg", data=root)
    ol._npz(root / "data_00002.npz", slo_fundus=np.zeros(sl.FAIRSEG_SHAPE, np.uint8),
            disc_cup_mask=np.full(sl.FAIRSEG_SHAPE, 255, np.uint8))
    with pytest.raises(DatasetError, match=r"data_00002\.npz holds value 255; expected 0 \(background\), -2"):
        ds.mask(1)
    ol._npz(root / "data_00003.npz", slo_fundus=np.zeros(sl.FAIRSEG_SHAPE, np.uint8), disc_cup_mask=sl.fairseg_mask(3),
            gender=5)
    with pytest.raises(DatasetError, match=r"data_00003\.npz has gender=5; known codes: 0 female, 1 male"):
        load_dataset("fairseg", data=root)
    ol._npz(root / "data_00003.npz", slo_fundus=np.zeros(sl.FAIRSEG_SHAPE, np.uint8))
    with pytest.raises(DatasetError, match=r"data_00003\.npz has no array disc_cup_mask or disc_cup_borders"):
        load_dataset("fairseg", data=root)
    with pytest.raises(DatasetError, match=r"no data_NNNNN\.npz files below"):
        load_dataset("fairseg", data=root / "ReadMe")


def test_fairseg_check_names_a_mask_of_another_size(tmp_path):
    root = sl.write_fairseg(tmp_path)
    assert check_dataset("fairseg", root).ok
    with np.load(root / "data_00004.npz") as z:
        arrays = dict(z)
    arrays["disc_cup_mask"] = arrays["disc_cup_mask"][:10]
    np.savez(root / "data_00004.npz", **arrays)
    report = check_dataset("fairseg", root)
    assert not report.ok and report.bad_masks == [
        ("data_00004", "mask data_00004.npz is 10 x 20 (H x W) but its image is 24 x 20")]


# ---------------------------------------------------------------------------- TUSC


@pytest.fixture(scope="module")
def tusc_root(tmp_path_factory) -> Path:
    return sl.write_tusc(tmp_path_factory.mktemp("tusc"))


def test_tusc_table_groups_and_clips_stay_whole(tusc_root):
    ds = load_dataset("tusc", data=tusc_root, seed=0)
    t = ds.table
    assert len(t) == 20 and t["subject"].nunique() == 9 and ds.spec.mask_classes == ("nodule",)
    assert list(t["id"][:4]) == ["1_frame0", "1_frame1", "1_frame2", "2_frame0"]
    assert counts(t["sa/sex"], SEX) == {"male": 6, "female": 14, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 11, "old": 7, "unknown": 2}
    assert_segmentation_table(ds)
    for seed in (1, 2, 3):  # every frame of a clip on one side, whatever the seed
        other = load_dataset("tusc", data=tusc_root, seed=seed).table
        assert (other.groupby("subject")["split"].nunique() == 1).all()


def test_tusc_frames_and_masks_equal_the_file(tusc_root):
    import h5py

    ds = load_dataset("tusc", data=tusc_root)
    assert_masks_fit(ds)
    with h5py.File(tusc_root / "dataset.hdf5", "r") as h:
        images, masks = h["image"][:], h["mask"][:]
    for i in range(len(ds.table)):
        assert np.array_equal(ds.mask(i), (masks[i] == 255).astype(np.uint8)) and ds.mask(i).any()
        assert np.array_equal(np.asarray(ds.image(i))[..., 0], images[i])


def test_tusc_three_d_frames_are_averaged(tmp_path):
    import h5py

    root = sl.write_tusc(tmp_path, frame_axes=2)
    ds = load_dataset("tusc", data=root)
    with h5py.File(root / "dataset.hdf5", "r") as h:
        first = h["image"][0]
    assert np.array_equal(np.asarray(ds.image(0))[..., 0], np.rint(first.mean(axis=0)).astype(np.uint8))
    assert ds.mask(0).shape == ds.image(0).size[::-1]


def test_tusc_errors_and_check(tmp_path):
    import h5py

    root = sl.write_tusc(tmp_path)
    assert check_dataset("tusc", root).ok
    with h5py.File(root / "dataset.hdf5", "r+") as h:
        h["mask"][5] = np.full(sl.TUSC_SHAPE, 7, np.uint8)
    report = check_dataset("tusc", root)
    assert not report.ok and [r for r, _ in report.bad_masks] == ["3_frame0"]
    assert "mask frame 5 of" in report.bad_masks[0][1] and "dataset.hdf5 holds value 7" in report.bad_masks[0][1]
    meta = root / "metadata.csv"
    meta.write_text("\n".join(meta.read_text().splitlines()[:-1]) + "\n")  # 9_ has no row
    with pytest.raises(DatasetError, match=r"annot_id '9_' of dataset\.hdf5 has no row in metadata\.csv"):
        load_dataset("tusc", data=root)
    (root / "dataset.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match=r"cannot read .*dataset\.hdf5.*not HDF5"):
        load_dataset("tusc", data=root)


# ---------------------------------------------------------------------------- shared


def test_segmentation_keys_are_listed(run_cli):
    code, out, _ = run_cli("datasets")
    assert code == 0
    for key in ("ham10000_seg", "montgomery", "fairseg", "tusc"):
        assert key in out
    code, out, _ = run_cli("datasets", "ham10000_seg")
    assert code == 0 and "task segmentation" in out and "mask lesion" in " ".join(out.split())


def test_a_mask_value_beyond_the_classes_names_the_file(ham_root):
    ds = load_dataset("ham10000_seg", data=ham_root)
    ds.spec = replace(ds.spec, mask=lambda root, row: np.array([[0, 1], [2, 1]]))
    with pytest.raises(DatasetError, match=r"mask HAM10000_segmentations_lesion_tschandl/ISIC_0027419_segmentation\.png "
                       r"of ISIC_0027419 holds value 2; its labels are 0 \(background\) to 1 \(lesion\)"):
        ds.mask(0)
    ds.spec = replace(ds.spec, mask=lambda root, row: np.zeros((2, 2, 3)))
    with pytest.raises(DatasetError, match=r"has shape \(2, 2, 3\), expected \(H, W\)"):
        ds.mask(0)


def test_balanced_test_split_without_labels(fairseg_root):
    ds = load_dataset("fairseg", data=fairseg_root, options={"split": "balanced-test:race"}, seed=0)
    test = ds.table[ds.table["split"] == 2]
    assert len(test) > 0 and (test["sa/race"] == 0).sum() == (test["sa/race"] == 1).sum()
    assert ds.name == "fairseg_split-balanced-test-race"
    assert ds.group_attrs()["split_policy"].startswith("patient-level, stratified by first attribute; test balanced")


def test_classification_still_needs_a_label(ham_root):
    from fmcache.datasets.registry import get_dataset
    from fmcache.datasets.samples import build_samples
    from fmcache.datasets.spec import RawTable

    frame = pd.DataFrame({"id": ["a"], "subject": ["a"], "path": [""]})
    with pytest.raises(DatasetError, match=r"label/<name>"):
        build_samples(get_dataset("ham10000"), RawTable(frame))
    table, _ = build_samples(get_dataset("ham10000_seg"), RawTable(frame))
    assert list(table["split"]) in ([0], [1], [2])
