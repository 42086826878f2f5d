"""The COVID-CT-MD and ADNI adapters on copies laid out like the releases.

Expected counts are worked out by hand from the rows listed in helpers/official_layouts.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmcache.datasets import get_dataset, load_dataset
from fmcache.datasets.attributes import parse_age
from fmcache.datasets.volumes import LUNG_WINDOW, window
from fmcache.errors import DatasetError

from helpers import official_layouts as ol

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

SEX = {"male": 0, "female": 1, "unknown": -1}
AGE = {"young": 0, "old": 1, "unknown": -1}


def counts(values, names: dict[str, int]) -> dict[str, int]:
    v = np.asarray(values)
    return {name: int((v == code).sum()) for name, code in names.items()}


def row(ds, sample_id: str) -> pd.Series:
    return ds.table.set_index("id").loc[sample_id]


def image_of(ds, sample_id: str) -> np.ndarray:
    return ds.image(int(np.flatnonzero(ds.table["id"] == sample_id)[0]))


@pytest.fixture(scope="module")
def covid_root(tmp_path_factory) -> Path:
    return ol.write_covid_ct_md(tmp_path_factory.mktemp("covid"))


@pytest.fixture(scope="module")
def adni_root(tmp_path_factory) -> Path:
    return ol.write_adni(tmp_path_factory.mktemp("adni"))


def test_both_are_registered_as_3d():
    for key in ("covid_ct_md", "adni"):
        spec = get_dataset(key)
        assert spec.dim == "3d" and spec.load is not None
        assert len(spec.prompts["default"].templates) == 3
    assert get_dataset("covid_ct_md").prompts["default"].templates[0] == "a computed tomography of a {}"
    assert get_dataset("covid_ct_md").prompts["default"].classes == ("normal", "pneumonia")
    assert get_dataset("adni").prompts["default"].templates[0] == "a brain MRI of {}"
    assert get_dataset("adni").prompts["default"].classes == ("normal", "Alzheimer's disease")


# ---------------------------------------------------------------------------- COVID-CT-MD


def test_covid_default_groups_and_labels(covid_root):
    ds = load_dataset("covid_ct_md", data=covid_root, seed=0)
    t = ds.table
    assert len(t) == 11 and t["subject"].nunique() == 11 and (t["id"] == t["subject"]).all()
    assert ds.label_names == ["not_normal"] and ds.name == "covid_ct_md"
    assert counts(t["label/not_normal"], {"neg": 0, "pos": 1}) == {"neg": 3, "pos": 8}
    assert counts(t["sa/sex"], SEX) == {"male": 6, "female": 5, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 6, "old": 5, "unknown": 0}
    # 105Y is 105 (the reference's x[1:3] reads 5); 50 is old, 49 young
    assert row(ds, "P005")["sa/age"] == 1 and row(ds, "P005")["sa_raw/age"] == "105Y"
    assert row(ds, "P004")["sa/age"] == 1 and row(ds, "cap002")["sa/age"] == 0
    assert row(ds, "cap001")["path"] == "Cap Cases/cap001"


def test_covid_volume_is_windowed_and_in_anatomical_order(covid_root):
    ds = load_dataset("covid_ct_md", data=covid_root, seed=0)
    vol = image_of(ds, "P003")
    assert vol.dtype == np.float32 and vol.shape == (6, *ol.COVID_SIZE)
    expected = np.stack([window(ol.covid_hu(k), *LUNG_WINDOW) for k in range(6)])
    np.testing.assert_allclose(vol, expected, atol=1e-6)
    assert vol.min() >= 0.0 and vol.max() <= 1.0


def test_covid_options(covid_root):
    dx = load_dataset("covid_ct_md", data=covid_root, options={"labels": "diagnosis"}, seed=0)
    assert dx.label_names == ["diagnosis"] and dx.group_attrs()["task"] == "multiclass"
    assert np.bincount(dx.table["label/diagnosis"], minlength=3).tolist() == [3, 5, 3]  # Normal, COVID-19, CAP
    assert dx.name == "covid_ct_md_labels-diagnosis"
    pct = load_dataset("covid_ct_md", data=covid_root, options={"window": "percentile"}, seed=0)
    assert pct.name == "covid_ct_md_window-percentile"
    vol = pct.image(0)
    assert vol.min() == 0.0 and vol.max() == 1.0
    with pytest.raises(DatasetError, match="window"):
        load_dataset("covid_ct_md", data=covid_root, options={"window": "bone"})


def test_covid_fairmedfm_window(covid_root):
    ds = load_dataset("covid_ct_md", data=covid_root, options={"window": "fairmedfm"}, seed=0)
    assert ds.name == "covid_ct_md_window-fairmedfm"
    vol = image_of(ds, "P003")
    # the reference's own arithmetic: clip HU to [-1250, 250], then scale by the width
    expected = np.stack([(np.clip(ol.covid_hu(k), -1250, 250) + 1250) / 1500 for k in range(6)])
    np.testing.assert_allclose(vol, expected, atol=1e-6)
    assert not np.allclose(vol, image_of(load_dataset("covid_ct_md", data=covid_root, seed=0), "P003"))
    with pytest.raises(DatasetError, match=r"^covid_ct_md: option window='minmax' is not one of lung, percentile, "
                       r"fairmedfm$"):
        load_dataset("covid_ct_md", data=covid_root, options={"window": "minmax"})


def test_covid_readme_folder_spelling(tmp_path):
    root = ol.write_covid_ct_md(tmp_path, case_dirs=("COVID-19 subjects", "CAP subjects", "Normal subjects"))
    ds = load_dataset("covid_ct_md", data=root, seed=0)
    assert len(ds.table) == 11 and row(ds, "cap004")["path"] == "CAP subjects/cap004"


def test_parse_age():
    assert [parse_age(v) for v in ("039Y", "105Y", "7Y", "45", " 060Y ", "006M", "", None)] == [
        39.0, 105.0, 7.0, 45.0, 60.0, 0.5, None, None
    ]
    with pytest.raises(ValueError):
        parse_age("39 years")


def test_covid_blank_and_bad_ages(tmp_path):
    root = ol.write_covid_ct_md(tmp_path)
    clinical = root / "Clinical-data.csv"
    good = clinical.read_text()
    clinical.write_text(good.replace(",039Y,", ",,", 1))  # P001's age blank
    ds = load_dataset("covid_ct_md", data=root, seed=0)
    assert counts(ds.table["sa/age"], AGE) == {"young": 5, "old": 5, "unknown": 1}
    assert row(ds, "P001")["sa/age"] == -1
    clinical.write_text(good.replace(",039Y,", ",thirty,", 1))
    with pytest.raises(DatasetError, match=r"age value 'thirty'.*Patient Age"):
        load_dataset("covid_ct_md", data=root)


def test_covid_errors_name_the_file_and_column(tmp_path):
    root = ol.write_covid_ct_md(tmp_path)
    clinical = root / "Clinical-data.csv"
    good = clinical.read_text()
    pd.read_csv(clinical, dtype=str).drop(columns=["Patient Age"]).to_csv(clinical, index=False)
    with pytest.raises(DatasetError, match=r"'Patient Age'.*Clinical-data\.csv"):
        load_dataset("covid_ct_md", data=root)
    clinical.write_text(good.replace(",CAP,", ",Pneumonia,", 1))
    with pytest.raises(DatasetError, match=r"Diagnosis 'Pneumonia'"):
        load_dataset("covid_ct_md", data=root)
    clinical.write_text(good.replace(",M,", ",Male,", 1))
    with pytest.raises(DatasetError, match=r"sex value 'Male'"):
        load_dataset("covid_ct_md", data=root)
    clinical.write_text(good)
    # a corrupt slice surfaces when the volume is read, naming the file
    victim = sorted((root / "Normal Cases" / "normal073").glob("*.dcm"))[2]
    victim.write_bytes(b"garbage")
    ds = load_dataset("covid_ct_md", data=root)
    with pytest.raises(DatasetError, match=victim.name):
        image_of(ds, "normal073")
    shutil.rmtree(root / "Normal Cases" / "normal073")
    with pytest.raises(DatasetError, match=r"patient folder.*normal073"):
        load_dataset("covid_ct_md", data=root)
    shutil.rmtree(root / "Cap Cases")
    with pytest.raises(DatasetError, match=r"CAP cases.*'Cap Cases' or 'CAP subjects'"):
        load_dataset("covid_ct_md", data=root)
    clinical.unlink()
    with pytest.raises(DatasetError, match=r"Clinical-data\.csv not found"):
        load_dataset("covid_ct_md", data=root)


# ---------------------------------------------------------------------------- ADNI


def test_adni_default_groups_and_labels(adni_root):
    ds = load_dataset("adni", data=adni_root, seed=0)
    t = ds.table
    assert len(t) == 12 and t["subject"].nunique() == 9
    assert not t["id"].isin(["I63897", "I97327"]).any()  # MCI left out
    assert ds.label_names == ["AD"] and ds.name == "adni"
    assert counts(t["label/AD"], {"CN": 0, "AD": 1}) == {"CN": 7, "AD": 5}
    assert counts(t["sa/sex"], SEX) == {"male": 7, "female": 5, "unknown": 0}
    assert counts(t["sa/age"], AGE) == {"young": 4, "old": 8, "unknown": 0}
    assert row(ds, "I31143")["sa/age"] == 1 and row(ds, "I40817")["sa/age"] == 0  # 75 old, 74 young
    assert row(ds, "I118673")["subject"] == "002_S_0413"
    assert row(ds, "I63874")["path"] == (
        "ADNI/941_S_1202/MPR_R__GradWarp__B1_Correction__N3__Scaled/2007-01-30_10_21_36.0/I63874/"
        "ADNI_941_S_1202_MR_MPR_R__GradWarp__B1_Correction__N3__Scaled_Br_20090130122825655_S25209_I63874.nii"
    )
    assert ds.extra_attrs["collection_file"] == ol.ADNI_FILE


def test_adni_volume_is_axial_inferior_to_superior(adni_root):
    ds = load_dataset("adni", data=adni_root, seed=0)
    vol = image_of(ds, "I45117")
    p, s, r = ol.ADNI_SHAPE
    assert vol.dtype == np.float32 and vol.shape == (s, p, r)
    assert vol.min() == 0.0 and vol.max() == 1.0
    assert np.all(np.diff(vol.mean(axis=(1, 2))) > 0)  # the fixture brightens toward superior
    sag = load_dataset("adni", data=adni_root, options={"plane": "sagittal"}, seed=0)
    assert sag.name == "adni_plane-sagittal" and image_of(sag, "I45117").shape == (r, s, p)


def test_adni_slice_minmax_intensity(adni_root):
    nib = pytest.importorskip("nibabel")
    ds = load_dataset("adni", data=adni_root, options={"intensity": "slice_minmax"}, seed=0)
    assert ds.name == "adni_intensity-slice_minmax"
    vol = image_of(ds, "I45117")
    data = np.asarray(nib.load(adni_root / row(ds, "I45117")["path"]).get_fdata())  # (P, S, R) in the file
    assert vol.shape[0] == data.shape[1]
    for s in range(data.shape[1]):
        v = data[:, s, :]
        # in-plane order is the reorientation's business (tested above); compare the values
        np.testing.assert_allclose(np.sort(vol[s].ravel()), np.sort(((v - v.min()) / (v.max() - v.min())).ravel()),
                                   atol=1e-6)
    both = load_dataset("adni", data=adni_root, options={"intensity": "slice_minmax", "plane": "sagittal"}, seed=0)
    assert both.name == "adni_intensity-slice_minmax_plane-sagittal"
    assert load_dataset("adni", data=adni_root, options={"intensity": "percentile"}, seed=0).name == "adni"
    with pytest.raises(DatasetError, match=r"^adni: option intensity='minmax' is not one of percentile, slice_minmax$"):
        load_dataset("adni", data=adni_root, options={"intensity": "minmax"})


def test_adni_subjects_never_straddle_splits(adni_root):
    for seed in range(5):
        t = load_dataset("adni", data=adni_root, seed=seed).table
        assert (t.groupby("subject")["split"].nunique() == 1).all()


def test_adni_tolerated_variants(tmp_path):
    root = ol.write_adni(tmp_path, csv_name="ADNI1_Screening_1.5T_5_02_2024.csv")
    ds = load_dataset("adni", data=root, seed=0)
    # one file a folder deeper below I<id> (as the reference globs) and one gzipped
    deep = root / row(ds, "I45108")["path"]
    deeper = deep.parent / "extra" / deep.name
    deeper.parent.mkdir()
    deep.rename(deeper)
    gz = root / row(ds, "I35475")["path"]
    import nibabel as nib

    nib.save(nib.load(str(gz)), str(gz) + ".gz")
    gz.unlink()
    ds = load_dataset("adni", data=root, seed=0)
    assert row(ds, "I45108")["path"].endswith("/I45108/extra/" + deep.name)
    assert row(ds, "I35475")["path"].endswith(".nii.gz")
    assert image_of(ds, "I35475").shape == (6, 7, 5)


def test_adni_several_collections_need_the_option(tmp_path):
    root = ol.write_adni(tmp_path)
    shutil.copy(root / ol.ADNI_FILE, root / "ADNI1_Complete_1Yr_1.5T_5_02_2024.csv")
    (root / "notes.csv").write_text("a,b\n1,2\n")  # not a collection: ignored
    with pytest.raises(DatasetError, match=r"several collection CSVs.*collection="):
        load_dataset("adni", data=root)
    ds = load_dataset("adni", data=root, options={"collection": ol.ADNI_FILE}, seed=0)
    assert len(ds.table) == 12


def test_adni_errors_name_the_file_and_column(tmp_path):
    root = ol.write_adni(tmp_path)
    csv = root / ol.ADNI_FILE
    good = csv.read_text()
    pd.read_csv(csv, dtype=str).drop(columns=["Group"]).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=rf"'Group'.*{ol.ADNI_FILE}"):
        load_dataset("adni", data=root)
    csv.write_text(good.replace(",AD,", ",EMCI,", 1))
    with pytest.raises(DatasetError, match=r"Group 'EMCI'"):
        load_dataset("adni", data=root)
    csv.write_text(good)
    ds = load_dataset("adni", data=root)
    victim = root / row(ds, "I59363")["path"]
    victim.write_bytes(victim.read_bytes()[:400])  # truncated
    with pytest.raises(DatasetError, match=victim.name):
        image_of(ds, "I59363")
    shutil.rmtree(victim.parent)
    with pytest.raises(DatasetError, match=r"not found as NIfTI.*I59363"):
        load_dataset("adni", data=root)
    csv.unlink()
    with pytest.raises(DatasetError, match=r"no collection CSV"):
        load_dataset("adni", data=root)


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize("key, root", [("covid_ct_md", "covid_root"), ("adni", "adni_root")])
def test_splits_by_subject_seeded(request, key, root):
    data = request.getfixturevalue(root)
    a = load_dataset(key, data=data, seed=0)
    again = load_dataset(key, data=data, seed=0)
    other = load_dataset(key, data=data, seed=1)
    assert (a.table.groupby("subject")["split"].nunique() == 1).all()
    assert np.array_equal(a.table["split"], again.table["split"]) and a.fingerprint == again.fingerprint
    assert not np.array_equal(a.table["split"], other.table["split"])
    assert set(a.table["split"]) <= {0, 1, 2}
