"""The volumetric segmentation adapters (KiTS23, CANDI, 3D-IRCADb-01, SPIDER): tables, groups,
splits, label volumes remapped and on their image's grid, checks, and the 2D models' refusal.

Expected counts are worked out by hand from the rows in helpers/seg3d_layouts.py; expected
class volumes come from the objects the fixtures plant (helpers' ``expected_*``), and the
expected voxel order from the files' affines / direction matrices, not from the adapters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fmcache.datasets import load_dataset
from fmcache.datasets.check import check_dataset
from fmcache.errors import DatasetError, FmcacheError

from helpers import official_layouts as ol
from helpers import seg3d_layouts as s3

SEX = {"male": 0, "female": 1, "unknown": -1}


def counts(values, names: dict[str, int]) -> dict[str, int]:
    v = np.asarray(values)
    return {name: int((v == code).sum()) for name, code in names.items()}


def by_id(ds, column: str) -> dict[str, object]:
    return dict(zip(ds.table["id"], ds.table[column]))


def assert_volumetric_table(ds) -> None:
    """No labels, whole subjects per split, every split used, classes recorded."""
    t = ds.table
    assert not [c for c in t.columns if c.startswith("label/")]
    assert (t.groupby("subject")["split"].nunique() == 1).all()
    assert set(t["split"]) == {0, 1, 2}
    attrs = ds.group_attrs()
    assert attrs["task"] == "segmentation" and attrs["mask_classes"] == list(ds.spec.mask_classes)
    assert ds.spec.volumetric_segmentation and ds.missing_files() == []


def slices_of(canonical: np.ndarray) -> np.ndarray:
    """Axial slices of a RAS+ array written out by hand: slice z, row = anterior first, column =
    the patient's right first."""
    x, y, z = canonical.shape
    out = np.empty((z, y, x), canonical.dtype)
    for k in range(z):
        for r in range(y):
            for c in range(x):
                out[k, r, c] = canonical[x - 1 - c, y - 1 - r, k]
    return out


@pytest.fixture(scope="module")
def kits23_root(tmp_path_factory) -> Path:
    return s3.write_kits23(tmp_path_factory.mktemp("kits23"))


@pytest.fixture(scope="module")
def candi_root(tmp_path_factory) -> Path:
    return s3.write_candi(tmp_path_factory.mktemp("candi"))


@pytest.fixture(scope="module")
def ircadb_root(tmp_path_factory) -> Path:
    return s3.write_ircadb(tmp_path_factory.mktemp("ircadb"))


@pytest.fixture(scope="module")
def spider_root(tmp_path_factory) -> Path:
    return s3.write_spider(tmp_path_factory.mktemp("spider"))


# ---------------------------------------------------------------------------- KiTS23


def test_kits23_table_groups_and_bmi_boundaries(kits23_root):
    ds = load_dataset("kits23", data=kits23_root, seed=0)
    assert list(ds.table["id"]) == [c[0] for c in s3.KITS_CASES]  # case_00299 has no folder: left out
    assert ds.spec.mask_classes == ("kidney", "tumor", "cyst")
    assert counts(ds.table["sa/sex"], SEX) == {"male": 6, "female": 4, "unknown": 1}
    sex = by_id(ds, "sa/sex")
    assert sex["case_00005"] == -1 and by_id(ds, "sa_raw/sex")["case_00005"] == "transgender_male_to_female"
    bmi = {k: ds.rules["bmi"].groups[v] if v >= 0 else "unknown" for k, v in by_id(ds, "sa/bmi").items()}
    assert bmi == {
        "case_00000": "overweight", "case_00001": "underweight", "case_00002": "normal", "case_00003": "normal",
        "case_00004": "overweight", "case_00005": "overweight", "case_00400": "obese", "case_00401": "obese",
        "case_00461": "unknown", "case_00587": "underweight", "case_00588": "overweight",
    }
    assert ds.rules["bmi"].groups == ("underweight", "normal", "overweight", "obese")
    # age_at_nephrectomy 0 is a missing age; 60 is old
    assert counts(ds.table["sa/age"], {"young": 0, "old": 1, "unknown": -1}) == {"young": 5, "old": 4, "unknown": 2}
    age = by_id(ds, "sa/age")
    assert age["case_00401"] == 1 and age["case_00400"] == -1 and by_id(ds, "sa_raw/age")["case_00400"] == "0"
    assert_volumetric_table(ds)


def test_kits23_label_volume_is_remapped_canonical_and_on_the_image_grid(kits23_root):
    ds = load_dataset("kits23", data=kits23_root, seed=0)
    for i in range(len(ds.table)):
        vol, labels = ds.volume(i), ds.mask_volume(i)
        np.testing.assert_array_equal(labels.array, s3.expected_kits(i))  # the stray value 5 is background
        assert labels.array.dtype == np.uint8 and labels.same_grid(vol)
        # the image's HU say which class each voxel holds: same grid, voxel for voxel
        np.testing.assert_array_equal(vol.array, np.vectorize(s3.KITS_HU.get)(labels.array))
    vol = ds.volume(0)
    assert vol.shape == (16, 16, 8) and vol.orientation == ("R", "A", "S")
    np.testing.assert_allclose(vol.spacing, (0.92, 0.92, 0.5), rtol=1e-6)
    # a canonical voxel is where the file's voxel (7 - z, 15 - y, 15 - x) is: the same mm position
    for x, y, z in [(0, 0, 0), (15, 3, 2), (4, 9, 7)]:
        np.testing.assert_allclose(vol.affine @ [x, y, z, 1], s3.KITS_AFFINE @ [7 - z, 15 - y, 15 - x, 1], atol=1e-4)


def test_kits23_slices_of_image_and_mask_match(kits23_root):
    ds = load_dataset("kits23", data=kits23_root, seed=0)
    for i in (0, 3):
        mask, image = ds.mask(i), ds.image(i)
        assert mask.shape == image.shape == (8, 16, 16) and mask.dtype == np.uint8 and image.dtype == np.float32
        np.testing.assert_array_equal(mask, slices_of(s3.expected_kits(i)))
        # the file's slices run inferior (axis 0 is 'I'): the axial stack is the stored one reversed
        stored = s3.kits_labels(i, s3.KITS_CASES[i][4])
        np.testing.assert_array_equal(mask, np.where(np.isin(stored, (1, 2, 3)), stored, 0)[::-1])
        hu = np.vectorize(s3.KITS_HU.get)(mask)
        np.testing.assert_allclose(image, (hu + 160.0) / 400.0, atol=1e-6)  # the abdominal window


def test_kits23_refuses_a_metadata_file_without_the_official_keys(tmp_path):
    root = s3.write_kits23(tmp_path)
    (root / "dataset" / "kits23.json").write_text('[{"case_id": "case_00000", "sex": "male", "bmi": 20.1}]')
    with pytest.raises(DatasetError, match="key 'gender' not found.*kits23.json"):
        load_dataset("kits23", data=root)


# ---------------------------------------------------------------------------- CANDI


def test_candi_table_groups_and_splits(candi_root):
    ds = load_dataset("candi", data=candi_root, seed=0)
    assert sorted(ds.table["id"]) == sorted(s3.candi_subjects())
    assert len(ds.spec.mask_classes) == 6
    t = ds.table
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 5, "unknown": 0}
    assert counts(t["sa/age"], {"young": 0, "old": 1, "unknown": -1}) == {"young": 4, "old": 5, "unknown": 1}
    assert by_id(ds, "sa/age")["HC_003"] == 1  # 10 years: the threshold is >= 10
    assert counts(t["sa/handedness"], {"right": 0, "left": 1, "unknown": -1}) == {"right": 6, "left": 2, "unknown": 2}
    assert by_id(ds, "path")["SS_084"] == "SchizBull_2008_SS_segimg/SS_084/SS_084_procimg.nii.gz"
    assert by_id(ds, "meta/mask")["SS_085"] == "SchizBull_2008_SS_segimg/SS_085/SS_085.seg.nii.gz"
    assert_volumetric_table(ds)


def test_candi_six_structures_and_image_grid(candi_root):
    ds = load_dataset("candi", data=candi_root, seed=0)
    for i, subject in enumerate(ds.table["id"]):
        k = s3.candi_subjects().index(subject)
        labels, vol = ds.mask_volume(i), ds.volume(i)
        np.testing.assert_array_equal(labels.array, s3.expected_candi(k))  # 16 and 17 are background
        assert labels.same_grid(vol) and vol.spacing == (1.5, 1.5, 1.5)
        np.testing.assert_allclose(vol.array, s3.candi_intensity(labels.array))
        np.testing.assert_array_equal(ds.mask(i), slices_of(s3.expected_candi(k)))


def test_candi_refuses_an_unknown_handedness_spelling(tmp_path):
    root = s3.write_candi(tmp_path)
    path = root / "HC_Basic_Demographics.csv"
    path.write_text(path.read_text().replace("HC_004,male,6.2,AH", "HC_004,male,6.2,XH"))
    with pytest.raises(DatasetError, match="handedness value 'XH'.*Handedness"):
        load_dataset("candi", data=root)


# ---------------------------------------------------------------------------- 3D-IRCADb-01


def test_ircadb_sex_from_dicom_then_the_sex_file(ircadb_root):
    ds = load_dataset("ircadb", data=ircadb_root, seed=0)
    assert list(ds.table["id"]) == [f"3Dircadb1.{p[0]}" for p in s3.IRCADB_PATIENTS]
    assert counts(ds.table["sa/sex"], SEX) == {"male": 4, "female": 3, "unknown": 1}
    sex = by_id(ds, "sa/sex")
    assert sex["3Dircadb1.6"] == 0  # the DICOM's M wins over overview.csv's F
    assert sex["3Dircadb1.2"] == 1 and sex["3Dircadb1.8"] == 0 and sex["3Dircadb1.3"] == -1
    assert by_id(ds, "meta/sex_source") == {
        "3Dircadb1.1": "dicom", "3Dircadb1.2": "csv", "3Dircadb1.3": "", "3Dircadb1.4": "dicom",
        "3Dircadb1.5": "csv", "3Dircadb1.6": "dicom", "3Dircadb1.7": "dicom", "3Dircadb1.8": "csv",
    }
    assert_volumetric_table(ds)


def test_ircadb_without_a_sex_file_leaves_empty_dicom_sex_unknown(tmp_path, ircadb_root):
    root = tmp_path / "copy"
    shutil.copytree(ircadb_root, root)
    (root / "overview.csv").rename(root / "sexes.csv")
    ds = load_dataset("ircadb", data=root, seed=0)
    assert counts(ds.table["sa/sex"], SEX) == {"male": 2, "female": 2, "unknown": 4}
    ds = load_dataset("ircadb", data=root, seed=0, options={"sex_file": "sexes.csv"})
    assert counts(ds.table["sa/sex"], SEX) == {"male": 4, "female": 3, "unknown": 1}
    with pytest.raises(DatasetError, match="sex_file .*missing.csv not found"):
        load_dataset("ircadb", data=root, options={"sex_file": "missing.csv"})


def test_ircadb_organ_folder_variants_make_the_six_classes(ircadb_root):
    ds = load_dataset("ircadb", data=ircadb_root, seed=0)
    assert ds.spec.mask_classes == ("liver", "spleen", "left kidney", "right kidney", "lungs", "portal vein")
    for k in range(len(ds.table)):
        expected = s3.expected_ircadb(k)
        # axial slices of a DICOM series keep its stored rows and columns, slices inferior -> superior
        np.testing.assert_array_equal(ds.mask(k), expected)
        assert set(np.unique(ds.mask(k))) - {0} == {s3.IRCADB_CLASS[o] for o in s3.IRCADB_PATIENTS[k][3]
                                                    if o in s3.IRCADB_CLASS}
        vol, labels = ds.volume(k), ds.mask_volume(k)
        assert labels.same_grid(vol) and vol.orientation == ("R", "A", "S")
        np.testing.assert_allclose(vol.spacing, (s3.IRCADB_PIXEL, s3.IRCADB_PIXEL, s3.IRCADB_DZ), rtol=1e-6)
        np.testing.assert_allclose(vol.slices(), s3.ircadb_hu(expected))  # HU: rescale applied to the image only
    # patient 2: leftlung + rightlung and portalvein1; its numbering runs from the top
    assert (ds.mask(1) == 5).sum() == 2 * 11 * 14 and (ds.mask(1) == 6).sum() == 2 * 2 * 3


def test_ircadb_zipped_patient_folder_is_named(tmp_path):
    root = s3.write_ircadb(tmp_path, overview=False)
    shutil.rmtree(root / "3Dircadb1" / "3Dircadb1.4" / "PATIENT_DICOM")
    with pytest.raises(DatasetError, match=r"3Dircadb1\.4/PATIENT_DICOM/ not found; unzip PATIENT_DICOM.zip"):
        load_dataset("ircadb", data=root)


# ---------------------------------------------------------------------------- SPIDER


def test_spider_sex_per_series_and_patient_splits(spider_root):
    ds = load_dataset("spider", data=spider_root, seed=0)
    t = ds.table
    assert list(t["id"]) == [r[0] for r in s3.SPIDER_SERIES]  # 9_t1 is listed but has no image
    assert t["subject"].nunique() == 8 and by_id(ds, "subject")["1_t2_SPACE"] == "1"
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 6, "unknown": 2}
    sex = by_id(ds, "sa/sex")
    assert sex["1_t1"] == 1 and sex["2_t1"] == 0 and sex["6_t1"] == -1  # each row its own sex, not row 0's
    assert len(ds.spec.mask_classes) == 15 and ds.spec.mask_classes[7] == "spinal canal"
    assert_volumetric_table(ds)


def test_spider_both_storage_orders_come_out_canonical(spider_root):
    ds = load_dataset("spider", data=spider_root, seed=0)
    for i in range(len(ds.table)):
        vol, labels = ds.volume(i), ds.mask_volume(i)
        assert vol.shape == s3.SPIDER_SHAPE and vol.orientation == ("R", "A", "S")
        np.testing.assert_allclose(vol.spacing, s3.SPIDER_SPACING, rtol=1e-6)
        np.testing.assert_allclose(vol.affine, s3.spider_affine(), atol=1e-6)
        assert labels.same_grid(vol)
        np.testing.assert_array_equal(labels.array, s3.expected_spider(i))
        np.testing.assert_allclose(vol.array, s3.spider_intensity(labels.array))
    np.testing.assert_array_equal(ds.mask(1), slices_of(s3.expected_spider(1)))
    # class ids: vertebra 1 -> 1, canal (100) -> 8, disc 201 -> 9; vertebra 8, disc 208, 101 -> 0
    m = ds.mask_volume(0).array
    assert m[1, 2, 0] == 1 and m[2, 8, 5] == 8 and m[1, 3, 1] == 9 and m[1, 2, 14] == 0 and m[1, 3, 15] == 0


@pytest.mark.parametrize("column, bom", [("Sex", False), ("PatientSex", True), ("gender", False)])
def test_spider_accepts_the_plausible_sex_spellings(tmp_path, column, bom):
    root = s3.write_spider(tmp_path, sex_column=column, spelling={"F": "female", "M": "Male", "O": "unknown"}, bom=bom)
    ds = load_dataset("spider", data=root, seed=0)
    assert counts(ds.table["sa/sex"], SEX) == {"male": 5, "female": 6, "unknown": 2}


def test_spider_without_a_sex_column_names_the_file_and_its_columns(tmp_path):
    root = s3.write_spider(tmp_path, sex_column="patient_gender_code")
    with pytest.raises(DatasetError, match=r"no sex column in .*overview.csv.*found new_file_name, subset.*"
                                           r"patient_gender_code"):
        load_dataset("spider", data=root)


# ---------------------------------------------------------------------------- checks


@pytest.mark.parametrize("key", ["kits23", "candi", "ircadb", "spider"])
def test_check_passes_on_every_fixture(key, request, run_cli):
    root = request.getfixturevalue(f"{key}_root")
    report = check_dataset(key, root)
    assert report.ok and not report.bad_masks and not report.unreadable, report.lines()
    assert report.mask_classes and report.rows == len(load_dataset(key, data=root).table)
    code, out, _ = run_cli("datasets", "check", key, "--data", str(root))
    assert code == 0 and out.strip().endswith("OK") and "mask classes:" in out


def test_check_names_a_label_volume_off_its_image_grid(tmp_path):
    root = s3.write_kits23(tmp_path)
    seg = s3.kits_labels(0, True)
    shifted = s3.KITS_AFFINE.copy()
    shifted[2, 3] += 5.0  # the same voxels 5 mm further up: another grid
    ol.write_nifti(root / "dataset" / "case_00000" / "segmentation.nii.gz", seg, shifted)
    (root / "dataset" / "case_00001" / "imaging.nii.gz").write_bytes(b"not a nifti")
    report = check_dataset("kits23", root)
    assert not report.ok
    assert [r for r, _ in report.bad_masks] == ["case_00000"] and "not on its image's voxel grid" in report.bad_masks[0][1]
    assert [r for r, _ in report.unreadable] == ["case_00001"]


# ---------------------------------------------------------------------------- which model reads what


def test_a_2d_model_reads_volumes_only_through_their_slices(kits23_root, tmp_path):
    from fmcache.segment.features import embed_features

    ds = load_dataset("kits23", data=kits23_root, seed=0)
    with pytest.raises(FmcacheError, match="holds volumes: a 2D model reads their slices"):
        embed_features(ds, "sam", root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_3d_model_refuses_a_2d_dataset(tmp_path):
    from helpers import seg_layouts

    from fmcache.segment.features import embed_features

    ds = load_dataset("montgomery", data=seg_layouts.write_montgomery(tmp_path / "m"))
    with pytest.raises(FmcacheError, match="sam_med3d is a 3D segmentation model; montgomery is not a volumetric"):
        embed_features(ds, "sam_med3d", root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cli_segment_refuses_a_prompt_type_the_3d_model_lacks(run_cli, kits23_root, tmp_path):
    code, out, err = run_cli("segment", "-m", "sam_med3d", "-d", "kits23", "--data", str(kits23_root),
                             "--root", str(tmp_path / "cache"), "--prompts", "center,bbox")
    assert code == 1 and "Traceback" not in err
    assert "sam_med3d takes the prompt types center, box_center, rand, rands, not bbox" in err


def test_classification_embedding_of_volumes_is_2_5d(candi_root, tmp_path):
    """Not refused: a 2D encoder embeds each volume's axial slices (2.5D), as for the 3D
    classification datasets; the features serve the representation analyses."""
    import fmcache
    from fmcache.embed.encode import embed

    from helpers import fake_encoder

    ds = load_dataset("candi", data=candi_root, seed=0)
    embed(ds, fake_encoder.MODEL, root=tmp_path / "cache", encoder=fake_encoder.encoder(), **fake_encoder.embed_kwargs())
    emb = fmcache.open_cache(tmp_path / "cache").embeddings("candi", fake_encoder.MODEL)
    assert emb.provenance["volume"] == {"slices": 32, "pool": "max"} and emb.dataset_info["task"] == "segmentation"
    assert list(emb.samples()["id"]) == list(ds.table["id"])
