"""The FairVLMed10k, GF3300, PAPILA and BRSET adapters, the balanced-test split and `datasets check`.

Expected counts are worked out by hand from the rows listed in helpers/official_layouts.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmcache.datasets import load_dataset
from fmcache.datasets.check import check_dataset
from fmcache.datasets.splits import balance_test
from fmcache.errors import DatasetError

from helpers import official_layouts as ol

SEX = {"male": 0, "female": 1, "unknown": -1}
AGE = {"young": 0, "old": 1, "unknown": -1}
RACE = {"white": 0, "non-white": 1, "unknown": -1}
LANGUAGE = {"english": 0, "non-english": 1, "unknown": -1}
ETHNICITY = {"non-hispanic": 0, "hispanic": 1, "unknown": -1}
MARITAL = {"partnered": 0, "not partnered": 1, "unknown": -1}
BINARY = {"neg": 0, "pos": 1, "unknown": -1}


def counts(values, names: dict[str, int]) -> dict[str, int]:
    v = np.asarray(values)
    return {name: int((v == code).sum()) for name, code in names.items()}


def row(ds, sample_id: str) -> pd.Series:
    return ds.table.set_index("id").loc[sample_id]


@pytest.fixture(scope="module")
def vlmed_root(tmp_path_factory) -> Path:
    return ol.write_fairvlmed10k(tmp_path_factory.mktemp("fairvlmed"))


@pytest.fixture(scope="module")
def gf_root(tmp_path_factory) -> Path:
    return ol.write_gf3300(tmp_path_factory.mktemp("gf"))


@pytest.fixture(scope="module")
def papila_root(tmp_path_factory) -> Path:
    return ol.write_papila(tmp_path_factory.mktemp("papila"))


@pytest.fixture(scope="module")
def brset_root(tmp_path_factory) -> Path:
    return ol.write_brset(tmp_path_factory.mktemp("brset"))


# ---------------------------------------------------------------------------- FairVLMed10k


def test_fairvlmed_groups_labels_and_pixels(vlmed_root):
    ds = load_dataset("fairvlmed10k", data=vlmed_root, seed=0)
    t = ds.table
    assert len(t) == 12 and t["subject"].nunique() == 12 and ds.name == "fairvlmed10k"
    assert counts(t["label/glaucoma"], BINARY) == {"neg": 7, "pos": 5, "unknown": 0}
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 7, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 6, "old": 6, "unknown": 0}  # 59.99 young, 60.00 old
    assert counts(t["sa/race"], RACE) == {"white": 6, "non-white": 6, "unknown": 0}
    assert counts(t["sa/ethnicity"], ETHNICITY) == {"non-hispanic": 9, "hispanic": 2, "unknown": 1}
    assert counts(t["sa/language"], LANGUAGE) == {"english": 8, "non-english": 3, "unknown": 1}
    assert counts(t["sa/marital_status"], MARITAL) == {"partnered": 4, "not partnered": 7, "unknown": 1}
    r = row(ds, "data_00006")
    assert r["sa/marital_status"] == -1 and r["sa_raw/marital_status"] == "unknown" and r["sa/age"] == 0
    assert row(ds, "data_00009")["path"] == "FairVLMed/Test/data_00009.npz"
    img = ds.image(0)
    pixels = np.asarray(img)
    expected = np.random.default_rng(0).integers(0, 87, (24, 20), dtype=np.uint8)
    assert img.mode == "RGB" and img.size == (20, 24)
    assert np.array_equal(pixels[..., 0], expected)  # uint8 kept as is: no contrast stretch


def test_fairvlmed_multi_groups(vlmed_root):
    ds = load_dataset("fairvlmed10k", data=vlmed_root, options={"groups": "multi"}, seed=0)
    t = ds.table
    assert ds.name == "fairvlmed10k_groups-multi"
    assert counts(t["sa/race"], {"asian": 0, "black": 1, "white": 2}) == {"asian": 3, "black": 3, "white": 6}
    assert counts(t["sa/language"], {"english": 0, "spanish": 1, "other": 2, "unknown": -1}) == {
        "english": 8, "spanish": 2, "other": 1, "unknown": 1}
    marital = dict(zip(ds.rules["marital_status"].groups, np.bincount(t["sa/marital_status"][t["sa/marital_status"] >= 0])))
    assert marital == {"married or partnered": 4, "single": 3, "divorced": 2, "widowed": 1, "legally separated": 1}
    assert ds.group_attrs()["attributes"]["race"]["groups"] == ["asian", "black", "white"]
    assert list(t["sa/sex"]) == list(load_dataset("fairvlmed10k", data=vlmed_root).table["sa/sex"])


@pytest.mark.parametrize(
    "kwargs", [{"test_dir": "Testing"}, {"summary_dir": "ReadMe"}, {"jpg_export": 3}],
)
def test_fairvlmed_accepted_variants(tmp_path, kwargs):
    root = ol.write_fairvlmed10k(tmp_path, **kwargs)
    ds = load_dataset("fairvlmed10k", data=root / "FairVLMed", seed=0)
    assert len(ds.table) == 12 and int(ds.table["label/glaucoma"].sum()) == 5
    if "jpg_export" in kwargs:
        i = int(np.flatnonzero(ds.table["id"] == "data_00003")[0])
        assert ds.table["path"].iloc[i] == "Training/slo_fundus_00003.jpg" and ds.image(i).mode == "RGB"


def test_fairvlmed_errors_name_the_file_and_value(tmp_path):
    root = ol.write_fairvlmed10k(tmp_path)
    summary = root / "FairVLMed" / "data_summary.csv"
    good = summary.read_text()
    summary.write_text(good.replace(",male,", ",M,", 1))
    with pytest.raises(DatasetError, match=r"sex value 'M'.*gender"):
        load_dataset("fairvlmed10k", data=root)
    summary.write_text(good.replace(",yes,training", ",maybe,training", 1))
    with pytest.raises(DatasetError, match=r"glaucoma value 'maybe'"):
        load_dataset("fairvlmed10k", data=root)
    pd.read_csv(summary, dtype=str, keep_default_na=False).drop(columns=["race"]).to_csv(summary, index=False)
    with pytest.raises(DatasetError, match=r"'race'.*data_summary\.csv"):
        load_dataset("fairvlmed10k", data=root)
    summary.write_text(good)
    np.savez(root / "FairVLMed" / "Training" / "data_00001.npz", fundus=np.zeros((4, 4), np.uint8))
    ds = load_dataset("fairvlmed10k", data=root)
    with pytest.raises(DatasetError, match=r"data_00001\.npz has no array slo_fundus.*found: fundus"):
        ds.image(int(np.flatnonzero(ds.table["id"] == "data_00001")[0]))
    summary.unlink()
    with pytest.raises(DatasetError, match=r"data_summary\.csv not found"):
        load_dataset("fairvlmed10k", data=root)


# ---------------------------------------------------------------------------- Harvard-GF3300


def test_gf3300_groups_labels_and_rnflt_scale(gf_root):
    ds = load_dataset("gf3300", data=gf_root, seed=0)
    t = ds.table
    assert len(t) == 10 and t["subject"].nunique() == 10
    assert counts(t["label/glaucoma"], BINARY) == {"neg": 5, "pos": 5, "unknown": 0}
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 5, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 4, "old": 6, "unknown": 0}
    assert counts(t["sa/race"], RACE) == {"white": 4, "non-white": 6, "unknown": 0}
    assert counts(t["sa/language"], LANGUAGE) == {"english": 6, "non-english": 3, "unknown": 1}
    assert counts(t["sa/ethnicity"], ETHNICITY) == {"non-hispanic": 8, "hispanic": 1, "unknown": 1}
    assert counts(t["sa/marital_status"], MARITAL) == {"partnered": 3, "not partnered": 6, "unknown": 1}
    assert row(ds, "data_0002")["sa_raw/language"] == "other languages"
    assert row(ds, "data_0008")["path"] == "dataset-001/Test/data_0008.npz"
    img = np.asarray(ds.image(0))
    assert img.shape == (20, 20, 3)
    assert img[0, :3, 0].tolist() == [0, 255, 128]  # (x + 2) / 352 * 255 on -2, 350, 174 um
    multi = load_dataset("gf3300", data=gf_root, options={"groups": "multi"}, seed=0)
    assert counts(multi.table["sa/language"], {"english": 0, "spanish": 1, "other": 2, "unknown": -1}) == {
        "english": 6, "spanish": 1, "other": 2, "unknown": 1}


def test_gf3300_lower_case_split_folders(tmp_path):
    root = ol.write_gf3300(tmp_path, container="", split_dirs=("train", "val", "test"))
    ds = load_dataset("gf3300", data=root, seed=0)
    assert len(ds.table) == 10 and row(ds, "data_0001")["path"] == "train/data_0001.npz"
    assert ds.image(0).size == (20, 20)


def test_gf3300_errors(tmp_path):
    root = ol.write_gf3300(tmp_path)
    summary = root / "data_summary.csv"
    summary.write_text(summary.read_text().replace(",other languages,", ",Other,", 1))
    with pytest.raises(DatasetError, match=r"language value 'Other'"):
        load_dataset("gf3300", data=root)
    shutil.rmtree(root / "dataset-001")
    with pytest.raises(DatasetError, match=r"no NPZ folder"):
        load_dataset("gf3300", data=root)


# ---------------------------------------------------------------------------- PAPILA


def test_papila_default_excludes_suspects(papila_root):
    ds = load_dataset("papila", data=papila_root, seed=0)
    t = ds.table
    assert len(t) == 13 and t["subject"].nunique() == 7 and "#002" not in set(t["subject"])
    assert counts(t["label/glaucoma"], BINARY) == {"neg": 7, "pos": 6, "unknown": 0}
    assert counts(t["sa/sex"], SEX) == {"male": 6, "female": 7, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 4, "old": 7, "unknown": 2}
    assert row(ds, "RET007OD")["label/glaucoma"] == 0 and row(ds, "RET007OS")["label/glaucoma"] == 1
    assert row(ds, "RET013OD")["sa_raw/sex"] == "1" and row(ds, "RET016OS")["sa_raw/age"] == "81"
    assert row(ds, "RET004OD")["path"] == f"{ol.PAPILA_RELEASE}/FundusImages/RET004OD.jpg"
    assert ds.image(0).size == (40, 30)


def test_papila_label_options_and_csv_sheets(papila_root, tmp_path):
    unknown = load_dataset("papila", data=papila_root, options={"suspect": "unknown"}, seed=0)
    assert counts(unknown.table["label/glaucoma"], BINARY) == {"neg": 7, "pos": 6, "unknown": 3}
    assert unknown.name == "papila_suspect-unknown"
    positive = load_dataset("papila", data=papila_root, options={"suspect": "positive"}, seed=0)
    assert counts(positive.table["label/glaucoma"], BINARY) == {"neg": 7, "pos": 9, "unknown": 0}
    dx = load_dataset("papila", data=papila_root / ol.PAPILA_RELEASE, options={"labels": "diagnosis"}, seed=0)
    assert np.bincount(dx.table["label/diagnosis"]).tolist() == [7, 6, 3] and dx.group_attrs()["task"] == "multiclass"
    assert dx.table["path"].iloc[0].startswith("FundusImages/")
    as_csv = load_dataset("papila", data=ol.write_papila(tmp_path, csv_sheets=True), seed=0)
    assert counts(as_csv.table["sa/age"], AGE) == {"young": 4, "old": 7, "unknown": 2}


def test_papila_errors(tmp_path):
    root = ol.write_papila(tmp_path)
    clinical = root / ol.PAPILA_RELEASE / "ClinicalData"
    (clinical / "patient_data_os.xlsx").unlink()
    with pytest.raises(DatasetError, match=r"patient_data_os\.xlsx not found"):
        load_dataset("papila", data=root)
    sheet = [list(ol.PAPILA_ROW1), [None, "Age", "Sex", "Diagnosis"] + list(ol.PAPILA_ROW2[4:]), ["ID"] + [None] * 12]
    pd.DataFrame(sheet).to_excel(clinical / "patient_data_os.xlsx", header=False, index=False)
    with pytest.raises(DatasetError, match=r"Gender.*row 2 of patient_data_os\.xlsx"):
        load_dataset("papila", data=root)


# ---------------------------------------------------------------------------- BRSET


def test_brset_groups_and_labels(brset_root):
    ds = load_dataset("brset", data=brset_root, seed=0)
    t = ds.table
    assert len(t) == 16 and t["subject"].nunique() == 10
    assert counts(t["label/dr"], BINARY) == {"neg": 9, "pos": 7, "unknown": 0}
    assert counts(t["sa/sex"], SEX) == {"male": 5, "female": 11, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 6, "old": 7, "unknown": 3}
    # the grade decides, not the disagreeing diabetic_retinopathy column
    assert row(ds, "img00007")["label/dr"] == 1 and row(ds, "img00010")["label/dr"] == 0
    assert row(ds, "img00003")["sa_raw/age"] == "NA" and row(ds, "img00003")["sa/age"] == -1
    assert ds.image(0).size == (36, 36)


def test_brset_options(brset_root):
    icdr = load_dataset("brset", data=brset_root, options={"labels": "icdr"}, seed=0)
    assert np.bincount(icdr.table["label/icdr"]).tolist() == [9, 2, 2, 2, 1] and icdr.name == "brset_labels-icdr"
    adequate = load_dataset("brset", data=brset_root, options={"quality": "adequate"}, seed=0)
    assert len(adequate.table) == 14 and adequate.table["subject"].nunique() == 9
    assert int(adequate.table["label/dr"].sum()) == 6


def test_brset_errors(tmp_path):
    root = ol.write_brset(tmp_path)
    labels = root / "labels.csv"
    good = labels.read_text()
    labels.write_text(good.replace("img00001,1,Canon CR,48,diabetes1,5,yes,1,", "img00001,1,Canon CR,48,diabetes1,5,yes,M,"))
    with pytest.raises(DatasetError, match=r"sex value 'M'.*patient_sex"):
        load_dataset("brset", data=root)
    pd.read_csv(labels, dtype=str, keep_default_na=False).drop(columns=["DR_ICDR"]).to_csv(labels, index=False)
    with pytest.raises(DatasetError, match=r"'DR_ICDR'.*labels\.csv"):
        load_dataset("brset", data=root)
    labels.unlink()
    with pytest.raises(DatasetError, match=r"labels\.csv not found"):
        load_dataset("brset", data=root)


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "key, root", [("fairvlmed10k", "vlmed_root"), ("gf3300", "gf_root"), ("papila", "papila_root"), ("brset", "brset_root")]
)
def test_splits_by_subject_seeded(request, key, root):
    data = request.getfixturevalue(root)
    a = load_dataset(key, data=data, seed=0)
    again = load_dataset(key, data=data, seed=0)
    others = [load_dataset(key, data=data, seed=s) for s in (1, 2)]
    assert (a.table.groupby("subject")["split"].nunique() == 1).all()
    assert np.array_equal(a.table["split"], again.table["split"]) and a.fingerprint == again.fingerprint
    assert any(not np.array_equal(a.table["split"], o.table["split"]) for o in others)
    assert set(a.table["split"]) <= {0, 1, 2}


def _assert_balanced(ds, attr: str) -> None:
    t = ds.table
    test = t[t["split"] == 2]
    assert len(test) > 0 and set(test[f"sa/{attr}"]) == {0, 1}
    assert int((test[f"sa/{attr}"] == 0).sum()) == int((test[f"sa/{attr}"] == 1).sum())
    assert (t.groupby("subject")["split"].nunique() == 1).all()


@pytest.mark.parametrize("attr, seed", [("sex", 0), ("age", 0), ("sex", 3)])
def test_balanced_test_on_a_larger_set(attr, seed):
    plain = load_dataset("synthetic", options={"size": "200"}, seed=seed)
    ds = load_dataset("synthetic", options={"size": "200", "split": f"balanced-test:{attr}"}, seed=seed)
    _assert_balanced(ds, attr)
    moved = (plain.table["split"] != ds.table["split"]).to_numpy()
    # only test rows move, and only to train; validation is untouched
    assert (plain.table["split"][moved] == 2).all() and (ds.table["split"][moved] == 0).all()
    assert ds.name == f"synthetic_split-balanced-test-{attr}" and "balanced" in ds.group_attrs()["split_policy"]
    again = load_dataset("synthetic", options={"size": "200", "split": f"balanced-test:{attr}"}, seed=seed)
    assert np.array_equal(again.table["split"], ds.table["split"]) and again.fingerprint == ds.fingerprint


def test_balanced_test_on_eye_fixtures(brset_root, vlmed_root):
    _assert_balanced(load_dataset("brset", data=brset_root, options={"split": "balanced-test:sex"}, seed=0), "sex")
    _assert_balanced(load_dataset("fairvlmed10k", data=vlmed_root, options={"split": "balanced-test:race"}, seed=0), "race")
    plain = load_dataset("brset", data=brset_root, options={"split": "patient"}, seed=0)
    assert plain.name == "brset" and plain.fingerprint == load_dataset("brset", data=brset_root, seed=0).fingerprint


def test_balance_test_whole_subjects_with_several_rows():
    # test subjects: a (2 rows, g0), b (1, g0), c (1, g0), d (3, g1), e (1, g1 then unknown), f (1, unknown)
    subject = np.array(["a", "a", "b", "c", "d", "d", "d", "e", "e", "f", "t1", "t2"])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1, 0, 1])
    split = np.array([2] * 10 + [0, 1])
    for seed in range(5):
        out = balance_test(split, subject, groups, seed=seed)
        test = out == 2
        assert (groups[test] == 0).sum() == (groups[test] == 1).sum() == 3  # d's 3 rows vs 3 of a, b, c
        assert out[7] == out[8] == 0 and out[9] == 0  # mixed and unknown subjects go to train
        assert out[10] == 0 and out[11] == 1


def test_balanced_test_errors(brset_root):
    with pytest.raises(DatasetError, match=r"split='balanced'"):
        load_dataset("brset", data=brset_root, options={"split": "balanced"})
    with pytest.raises(DatasetError, match=r"balanced-test:race names no sensitive attribute.*sex, age"):
        load_dataset("brset", data=brset_root, options={"split": "balanced-test:race"})
    with pytest.raises(ValueError):
        balance_test(np.array([2, 2]), np.array(["a", "b"]), np.array([0, 0]))


# ---------------------------------------------------------------------------- datasets check


def test_check_passes_on_a_good_copy(papila_root, run_cli):
    report = check_dataset("papila", papila_root)
    assert report.ok and report.rows == 13 and report.subjects == 7 and report.files == 13 and not report.missing
    assert report.label_counts == {"glaucoma": {0: 7, 1: 6}}
    assert report.group_counts["age"] == {"young": 4, "old": 7, "unknown": 2}
    code, out, _ = run_cli("datasets", "check", "papila", "--data", str(papila_root))
    assert code == 0 and out.strip().endswith("OK") and "rows 13, subjects 7" in out and "unknown 2" in out
    assert sum(report.split_counts.values()) == 13 and "split: train" in out


def test_check_names_missing_images_and_columns(tmp_path, run_cli):
    root = ol.write_brset(tmp_path)
    (root / "fundus_photos" / "img00005.jpg").unlink()
    (root / "fundus_photos" / "img00012.jpg").unlink()
    report = check_dataset("brset", root)
    assert not report.ok and report.missing == ["fundus_photos/img00005.jpg", "fundus_photos/img00012.jpg"]
    code, out, _ = run_cli("datasets", "check", "brset", "--path", str(root))
    assert code == 1 and "2 of 16 image files missing" in out and "img00005.jpg, fundus_photos/img00012.jpg" in out
    labels = root / "labels.csv"
    pd.read_csv(labels, dtype=str, keep_default_na=False).drop(columns=["patient_sex"]).to_csv(labels, index=False)
    code, out, _ = run_cli("datasets", "check", "brset", "--data", str(root))
    assert code == 1 and "'patient_sex' not found in labels.csv" in out and "problem" in out


def test_check_reports_unreadable_pixels(tmp_path):
    root = ol.write_gf3300(tmp_path)
    np.savez(root / "dataset-001" / "Training" / "data_0001.npz", oct_bscans=np.zeros((2, 2, 2)))
    report = check_dataset("gf3300", root)
    assert not report.ok and "1 of 10 images cannot be decoded" in report.problems[0]
    assert [row for row, _ in report.unreadable] == ["data_0001"] and "no array rnflt" in report.unreadable[0][1]


def test_cli_listing_and_show_still_work(run_cli):
    code, out, _ = run_cli("datasets")
    assert code == 0 and all(k in out for k in ("fairvlmed10k", "gf3300", "papila", "brset"))
    code, out, _ = run_cli("datasets", "papila")
    assert code == 0 and "patient_data_od.xlsx" in out and "balanced-test" in out
    code, _, err = run_cli("datasets", "check")
    assert code == 2 and "needs a dataset key" in err  # a usage error
