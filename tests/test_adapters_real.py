"""The CheXpert, MIMIC-CXR and HAM10000 adapters on copies laid out like the releases.

Expected counts are worked out by hand from the rows listed in helpers/official_layouts.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmcache.datasets import load_dataset
from fmcache.errors import DatasetError

from helpers import official_layouts as ol

SEX = {"male": 0, "female": 1, "unknown": -1}
AGE = {"young": 0, "old": 1, "unknown": -1}
RACE = {"white": 0, "non-white": 1, "unknown": -1}


def counts(values: pd.Series | np.ndarray, names: dict[str, int]) -> dict[str, int]:
    v = np.asarray(values)
    return {name: int((v == code).sum()) for name, code in names.items()}


def row(ds, sample_id: str) -> pd.Series:
    return ds.table.set_index("id").loc[sample_id]


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    return ol.write_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> Path:
    return ol.write_mimic_cxr(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory) -> Path:
    return ol.write_ham10000(tmp_path_factory.mktemp("ham"))


# ---------------------------------------------------------------------------- CheXpert


def test_chexpert_default_groups_and_labels(chexpert_root):
    ds = load_dataset("chexpert", data=chexpert_root, seed=0)
    t = ds.table
    assert len(t) == 19 and t["subject"].nunique() == 15
    assert ds.label_names == ["No Finding"] and ds.group_attrs()["task"] == "binary"
    assert counts(t["label/No Finding"], {"neg": 0, "pos": 1}) == {"neg": 10, "pos": 9}
    assert counts(t["sa/sex"], SEX) == {"male": 8, "female": 10, "unknown": 1}
    assert counts(t["sa/age"], AGE) == {"young": 7, "old": 10, "unknown": 2}
    assert counts(t["sa/race"], RACE) == {"white": 5, "non-white": 8, "unknown": 6}
    # Age 0 is a placeholder: unknown, but the raw value is kept
    age0 = row(ds, "train/patient64538/study1/view1_frontal.jpg")
    assert age0["sa/age"] == -1 and age0["sa_raw/age"] == "0"
    # 60 is old; the refused race is unknown, not non-white
    p6 = row(ds, "train/patient00006/study1/view1_frontal.jpg")
    assert p6["sa/age"] == 1 and p6["sa/race"] == -1 and p6["sa_raw/race"] == "Patient Refused"
    assert ds.name == "chexpert" and ds.extra_attrs["demographics_file"] == "CHEXPERT DEMO.xlsx"
    img = ds.image(0)
    assert img.mode == "RGB" and img.size == (32, 32)


def test_chexpert_data_may_be_the_release_folder_itself(chexpert_root):
    outer = load_dataset("chexpert", data=chexpert_root, seed=0)
    inner = load_dataset("chexpert", data=chexpert_root / "CheXpert-v1.0-small", seed=0)
    assert list(inner.table["id"]) == list(outer.table["id"])
    assert list(inner.table["split"]) == list(outer.table["split"])
    assert inner.table["path"].iloc[0] == "train/patient00001/study1/view1_frontal.jpg"
    assert counts(inner.table["sa/race"], RACE) == {"white": 5, "non-white": 8, "unknown": 6}
    assert inner.image(len(inner.table) - 1).size == (32, 32)


def test_chexpert_full_release_folder(tmp_path):
    ds = load_dataset("chexpert", data=ol.write_chexpert(tmp_path, folder="CheXpert-v1.0"), seed=0)
    assert len(ds.table) == 19
    assert ds.table["path"].str.startswith("CheXpert-v1.0/").all()
    assert ds.table["id"].iloc[0] == "train/patient00001/study1/view1_frontal.jpg"


def test_chexpert_frontal_only(chexpert_root):
    ds = load_dataset("chexpert", data=chexpert_root, options={"views": "frontal"}, seed=0)
    t = ds.table
    assert len(t) == 16 and t["subject"].nunique() == 15
    assert not t["id"].str.contains("lateral").any()
    assert int((t["label/No Finding"] == 1).sum()) == 7
    assert ds.name == "chexpert_views-frontal"


@pytest.mark.parametrize(
    "uncertain, edema, cardiomegaly",
    [
        ("zero", {"neg": 18, "pos": 1, "unknown": 0}, {"neg": 18, "pos": 1, "unknown": 0}),
        ("one", {"neg": 16, "pos": 3, "unknown": 0}, {"neg": 17, "pos": 2, "unknown": 0}),
        ("unknown", {"neg": 16, "pos": 1, "unknown": 2}, {"neg": 17, "pos": 1, "unknown": 1}),
    ],
)
def test_chexpert_all_labels_and_uncertain_policy(chexpert_root, uncertain, edema, cardiomegaly):
    ds = load_dataset("chexpert", data=chexpert_root, options={"labels": "all", "uncertain": uncertain}, seed=0)
    assert ds.label_names == list(ol.CHEXPERT_OBS)
    assert ds.group_attrs()["task"] == "multilabel"
    codes = {"neg": 0, "pos": 1, "unknown": -1}
    assert counts(ds.table["label/Edema"], codes) == edema
    assert counts(ds.table["label/Cardiomegaly"], codes) == cardiomegaly
    assert counts(ds.table["label/No Finding"], codes) == {"neg": 10, "pos": 9, "unknown": 0}


def test_chexpert_race_file_is_optional_and_may_be_csv(tmp_path):
    no_demo = load_dataset("chexpert", data=ol.write_chexpert(tmp_path / "a", demo=None), seed=0)
    assert no_demo.attribute_names == ["sex", "age"]
    as_csv = load_dataset("chexpert", data=ol.write_chexpert(tmp_path / "b", demo="csv"), seed=0)
    assert counts(as_csv.table["sa/race"], RACE) == {"white": 5, "non-white": 8, "unknown": 6}


def test_chexpert_errors_name_the_file_and_column(tmp_path):
    root = ol.write_chexpert(tmp_path / "c", demo=None)
    train = root / "CheXpert-v1.0-small" / "train.csv"
    pd.read_csv(train, dtype=str, keep_default_na=False).drop(columns=["Sex"]).to_csv(train, index=False)
    with pytest.raises(DatasetError, match=r"'Sex'.*train\.csv"):
        load_dataset("chexpert", data=root)
    (root / "CheXpert-v1.0-small" / "valid.csv").unlink()
    train.unlink()
    with pytest.raises(DatasetError, match=r"train\.csv not found.*CheXpert-v1\.0-small"):
        load_dataset("chexpert", data=root)


def test_chexpert_missing_valid_csv_and_bad_option(tmp_path):
    root = ol.write_chexpert(tmp_path, demo=None)
    with pytest.raises(DatasetError, match="uncertain"):
        load_dataset("chexpert", data=root, options={"uncertain": "maybe"})
    (root / "CheXpert-v1.0-small" / "valid.csv").unlink()
    with pytest.raises(DatasetError, match=r"valid\.csv not found"):
        load_dataset("chexpert", data=root)


def test_chexpert_demo_sheet_and_spellings_are_checked(tmp_path):
    root = ol.write_chexpert(tmp_path, demo=None)
    pd.DataFrame(ol.CHEXPERT_DEMO, columns=ol.DEMO_HEADER).to_excel(root / "CHEXPERT DEMO.xlsx", sheet_name="Sheet1", index=False)
    with pytest.raises(DatasetError, match="CheXpert Demo 11-13"):
        load_dataset("chexpert", data=root)
    (root / "CHEXPERT DEMO.xlsx").unlink()
    train = root / "CheXpert-v1.0-small" / "train.csv"
    train.write_text(train.read_text().replace(",Male,", ",M,", 1))
    with pytest.raises(DatasetError, match=r"sex value 'M'.*Sex"):
        load_dataset("chexpert", data=root)


# ---------------------------------------------------------------------------- MIMIC-CXR


def test_mimic_default_groups_and_labels(mimic_root):
    ds = load_dataset("mimic_cxr", data=mimic_root, seed=0)
    t = ds.table
    assert len(t) == 15 and t["subject"].nunique() == 9
    assert counts(t["label/No Finding"], {"neg": 0, "pos": 1}) == {"neg": 9, "pos": 6}
    assert counts(t["sa/sex"], SEX) == {"male": 7, "female": 6, "unknown": 2}
    assert counts(t["sa/age"], AGE) == {"young": 7, "old": 6, "unknown": 2}
    assert counts(t["sa/race"], RACE) == {"white": 5, "non-white": 5, "unknown": 5}
    by_subject = t.drop_duplicates("subject").set_index("subject")
    # absent from patients.csv: kept, with unknown sex and age
    assert by_subject.loc["10001122", ["sa/sex", "sa/age", "sa/race"]].tolist() == [-1, -1, -1]
    assert by_subject.loc["10000764", "sa/age"] == 1 and by_subject.loc["10000764", "sa_raw/age"] == "91"
    # race over admissions: majority (10000032), known beats UNKNOWN (10000764),
    # a tie goes to the earlier admittime, not the earlier line (10000898)
    assert by_subject.loc["10000032", "sa_raw/race"] == "WHITE"
    assert by_subject.loc["10000764", "sa_raw/race"] == "ASIAN - CHINESE"
    assert by_subject.loc["10000898", "sa_raw/race"] == "WHITE"
    assert by_subject.loc["10001217", "sa/race"] == -1
    first = row(ds, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014")
    assert first["path"] == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    assert ds.image(0).mode == "RGB"


def test_mimic_frontal_only(mimic_root):
    ds = load_dataset("mimic_cxr", data=mimic_root, options={"views": "frontal"}, seed=0)
    t = ds.table
    assert len(t) == 11 and t["subject"].nunique() == 9
    assert int((t["label/No Finding"] == 1).sum()) == 4
    assert ds.name == "mimic_cxr_views-frontal"



def test_mimic_demographics_cohort_drops_subjects_missing_from_patients(mimic_root):
    meta = pd.read_csv(mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    patients = pd.read_csv(mimic_root / "mimic-iv" / "hosp" / "patients.csv.gz", dtype=str)
    absent = ~meta["subject_id"].isin(patients["subject_id"])
    assert absent.any()  # else the cohort would have nothing to drop
    ds = load_dataset("mimic_cxr", data=mimic_root, options={"cohort": "demographics"}, seed=0)
    t = ds.table
    assert len(t) == int((~absent).sum())
    assert not t["subject"].isin(meta.loc[absent, "subject_id"]).any()
    assert (t["sa/sex"] != -1).all() and (t["sa/age"] != -1).all()
    assert ds.name == "mimic_cxr_cohort-demographics"
    assert load_dataset("mimic_cxr", data=mimic_root, options={"cohort": "all"}, seed=0).name == "mimic_cxr"
    with pytest.raises(DatasetError, match=r"^mimic_cxr: option cohort='paper' is not one of all, demographics$"):
        load_dataset("mimic_cxr", data=mimic_root, options={"cohort": "paper"})

@pytest.mark.parametrize(
    "uncertain, edema",
    [("zero", {"neg": 14, "pos": 1, "unknown": 0}), ("one", {"neg": 12, "pos": 3, "unknown": 0}),
     ("unknown", {"neg": 12, "pos": 1, "unknown": 2})],
)
def test_mimic_all_labels_and_uncertain_policy(mimic_root, uncertain, edema):
    ds = load_dataset("mimic_cxr", data=mimic_root, options={"labels": "all", "uncertain": uncertain}, seed=0)
    assert ds.label_names == list(ol.CHEXPERT_OBS)  # CheXpert's order, not the file's
    assert ds.group_attrs()["task"] == "multilabel"
    assert counts(ds.table["label/Edema"], {"neg": 0, "pos": 1, "unknown": -1}) == edema


def test_mimic_iv_tables_in_other_places(tmp_path):
    flat = load_dataset("mimic_cxr", data=ol.write_mimic_cxr(tmp_path / "a", mimic_iv=".", gz=False), seed=0)
    assert counts(flat.table["sa/race"], RACE) == {"white": 5, "non-white": 5, "unknown": 5}
    root = ol.write_mimic_cxr(tmp_path / "b", mimic_iv="../elsewhere")
    ds = load_dataset("mimic_cxr", data=root, options={"mimic_iv": str(tmp_path / "elsewhere")}, seed=0)
    assert counts(ds.table["sa/sex"], SEX) == {"male": 7, "female": 6, "unknown": 2}


def test_mimic_errors_name_the_file_and_column(tmp_path):
    root = ol.write_mimic_cxr(tmp_path)
    (root / "mimic-iv" / "hosp" / "admissions.csv.gz").unlink()
    assert load_dataset("mimic_cxr", data=root).attribute_names == ["sex", "age"]  # race is optional
    (root / "mimic-iv" / "hosp" / "patients.csv.gz").unlink()
    with pytest.raises(DatasetError, match=r"patients\.csv"):
        load_dataset("mimic_cxr", data=root)
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    pd.read_csv(meta, dtype=str).drop(columns=["ViewPosition"]).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"'ViewPosition'.*metadata"):
        load_dataset("mimic_cxr", data=root)
    meta.unlink()
    with pytest.raises(DatasetError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz not found"):
        load_dataset("mimic_cxr", data=root)


# ---------------------------------------------------------------------------- HAM10000


def test_ham_default_groups_and_labels(ham_root):
    ds = load_dataset("ham10000", data=ham_root, seed=0)
    t = ds.table
    assert len(t) == 18 and t["subject"].nunique() == 15
    assert ds.label_names == ["malignant"]
    assert int(t["label/malignant"].sum()) == 7
    assert counts(t["sa/sex"], SEX) == {"male": 9, "female": 8, "unknown": 1}
    assert counts(t["sa/age"], AGE) == {"young": 7, "old": 10, "unknown": 1}
    assert row(ds, "ISIC_0027419")["sa_raw/age"] == "80.0"
    assert row(ds, "ISIC_0031633")["path"] == "HAM10000_images_part_2/ISIC_0031633.jpg"
    img = ds.image(0)
    assert img.mode == "RGB" and img.size == (60, 45)


def test_ham_reference_malignancy_and_dx(ham_root):
    ref = load_dataset("ham10000", data=ham_root, options={"malignant": "reference"}, seed=0)
    assert int(ref.table["label/malignant"].sum()) == 5
    assert row(ref, "ISIC_0025837")["label/malignant"] == 0  # bcc counts as benign there
    dx = load_dataset("ham10000", data=ham_root, options={"labels": "dx"}, seed=0)
    assert dx.label_names == ["dx"] and dx.group_attrs()["task"] == "multiclass"
    # index order mel, nv, bcc, akiec, bkl, df, vasc
    assert np.bincount(dx.table["label/dx"], minlength=7).tolist() == [3, 4, 2, 2, 5, 1, 1]
    assert dx.name == "ham10000_labels-dx"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metadata": "HAM10000_metadata.csv", "dataset_column": False},
        {"image_dirs": ("HAM10000_images_part1", "HAM10000_images_part2")},
        {"image_dirs": ("ham10000_images_part_1", "ham10000_images_part_2")},
    ],
)
def test_ham_accepted_spellings(tmp_path, kwargs):
    ds = load_dataset("ham10000", data=ol.write_ham10000(tmp_path, **kwargs), seed=0)
    assert len(ds.table) == 18 and int(ds.table["label/malignant"].sum()) == 7


def test_ham_errors_name_the_file_and_column(tmp_path):
    root = ol.write_ham10000(tmp_path)
    meta = root / "HAM10000_metadata"
    good = meta.read_text()
    meta.write_text(good.replace(",male,", ",M,", 1))
    with pytest.raises(DatasetError, match=r"sex value 'M'"):
        load_dataset("ham10000", data=root)
    pd.read_csv(meta, dtype=str).drop(columns=["dx"]).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"'dx'.*HAM10000_metadata"):
        load_dataset("ham10000", data=root)
    meta.write_text(good)
    (root / "HAM10000_images_part_2" / "ISIC_0031633.jpg").unlink()
    with pytest.raises(DatasetError, match="ISIC_0031633"):
        load_dataset("ham10000", data=root)
    meta.unlink()
    with pytest.raises(DatasetError, match=r"HAM10000_metadata or HAM10000_metadata\.csv"):
        load_dataset("ham10000", data=root)
    shutil.rmtree(root)
    with pytest.raises(DatasetError):
        load_dataset("ham10000", data=root)


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize("key, root", [("chexpert", "chexpert_root"), ("mimic_cxr", "mimic_root"), ("ham10000", "ham_root")])
def test_splits_by_subject_seeded(request, key, root):
    data = request.getfixturevalue(root)
    a = load_dataset(key, data=data, seed=0)
    again = load_dataset(key, data=data, seed=0)
    other = load_dataset(key, data=data, seed=1)
    assert (a.table.groupby("subject")["split"].nunique() == 1).all()
    assert (other.table.groupby("subject")["split"].nunique() == 1).all()
    assert np.array_equal(a.table["split"], again.table["split"]) and a.fingerprint == again.fingerprint
    assert not np.array_equal(a.table["split"], other.table["split"])
    assert set(a.table["split"]) <= {0, 1, 2}
