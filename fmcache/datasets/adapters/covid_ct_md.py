"""COVID-CT-MD (chest CT, DICOM series): normal vs pneumonia (COVID-19 or CAP), 2.5D."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, dicom_age
from fmcache.datasets.spec import DatasetSpec, PromptSet, RawTable
from fmcache.datasets.volumes import (
    FAIRMEDFM_CT_WINDOW,
    LUNG_WINDOW,
    load_dicom_series,
    percentile_normalise,
    window,
)
from fmcache.errors import DatasetError

KEY = "covid_ct_md"
CLINICAL = "Clinical-data.csv"
COLUMNS = ("Diagnosis", "Folder", "Patient Gender", "Patient Age")
# class index of labels=diagnosis
DIAGNOSES = ("Normal", "COVID-19", "CAP")
DIAGNOSIS_NAMES = ("normal", "COVID-19 pneumonia", "community-acquired pneumonia")
# Figshare's folder names (as the reference reader and the COVIDx-CT scripts spell them),
# then the README's / sample data's spelling
CASE_DIRS = {
    "COVID-19": ("COVID-19 Cases", "COVID-19 subjects"),
    "CAP": ("Cap Cases", "CAP subjects"),
    "Normal": ("Normal Cases", "Normal subjects"),
}
WINDOWS = ("lung", "percentile", "fairmedfm")


def _clinical(root: Path) -> pd.DataFrame:
    path = root / CLINICAL
    if not path.is_file():
        raise DatasetError(
            f"{KEY}: {CLINICAL} not found in {root}; pass --data the folder that holds it beside "
            f"'COVID-19 Cases/', 'Cap Cases/' and 'Normal Cases/'"
        )
    df = read_csv(path, KEY)
    require_columns(df, COLUMNS, key=KEY, file=CLINICAL)
    for c in COLUMNS:
        df[c] = df[c].str.strip()
    unknown = sorted(set(df["Diagnosis"]) - set(DIAGNOSES))
    if unknown:
        raise DatasetError(
            f"{KEY}: unexpected Diagnosis {unknown[0]!r} in {CLINICAL} (known: {', '.join(DIAGNOSES)})"
        )
    dup = df["Folder"][df["Folder"].duplicated()]
    if len(dup):
        raise DatasetError(f"{KEY}: Folder {dup.iloc[0]!r} occurs twice in {CLINICAL}; one scan per patient is expected")
    return df


def _case_dir(root: Path, diagnosis: str) -> str:
    for name in CASE_DIRS[diagnosis]:
        if (root / name).is_dir():
            return name
    raise DatasetError(
        f"{KEY}: no folder for {diagnosis} cases in {root}: expected {' or '.join(repr(n) for n in CASE_DIRS[diagnosis])}"
    )


def _paths(df: pd.DataFrame, root: Path) -> pd.Series:
    """Patient folder of each row, relative to root (the DICOM series is read from it)."""
    dirs = {d: _case_dir(root, d) for d in sorted(set(df["Diagnosis"]))}
    paths = df["Diagnosis"].map(dirs) + "/" + df["Folder"]
    missing = [p for p in paths if not (root / p).is_dir()]
    if missing:
        raise DatasetError(
            f"{KEY}: {len(missing)} patient folder(s) of {CLINICAL} not found below {root}, e.g. {missing[0]}/; "
            f"unpack every case archive"
        )
    return paths


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of COVID-CT-MD, one row per patient (one CT series each).

    Parameters
    ----------
    root
        ``--data``: the folder with ``Clinical-data.csv`` and the three case folders.
    options
        ``labels`` (not_normal | diagnosis), ``window`` (lung | percentile | fairmedfm).

    Returns
    -------
    RawTable
        id and subject (the ``Folder`` value, e.g. P001), path (the patient folder),
        label/not_normal or label/diagnosis, raw/sex, raw/age, meta/window.
    """
    labels_opt = option(options, KEY, "labels", ("not_normal", "diagnosis"), "not_normal")
    window_opt = option(options, KEY, "window", WINDOWS, "lung")
    df = _clinical(root)
    raw = pd.DataFrame({"id": df["Folder"], "subject": df["Folder"], "path": _paths(df, root)})
    if labels_opt == "diagnosis":
        raw["label/diagnosis"] = df["Diagnosis"].map({d: i for i, d in enumerate(DIAGNOSES)}).to_numpy().astype(np.int8)
    else:
        raw["label/not_normal"] = (df["Diagnosis"] != "Normal").to_numpy().astype(np.int8)
    raw["raw/sex"] = blank_to_none(df["Patient Gender"])
    raw["raw/age"] = blank_to_none(df["Patient Age"])
    raw["meta/window"] = window_opt  # pixels differ per window, so it travels with each row to `load`
    chosen = {"labels": labels_opt, "window": window_opt}
    name = cache_name(KEY, chosen, {"labels": "not_normal", "window": "lung"})
    if labels_opt == "diagnosis":
        return RawTable(raw, name=name, task="multiclass", group_attrs={"classes": list(DIAGNOSES)})
    return RawTable(raw, name=name)


def load(root: Path, row: pd.Series) -> np.ndarray:
    """The patient's CT as float32 ``(slices, H, W)`` in [0, 1], inferior -> superior.

    ``lung`` window: HU clipped to [-1350, 150] (level -600, width 1500) and scaled to
    [0, 1], the same mapping for every patient; ``fairmedfm``: likewise with [-1250, 250];
    ``percentile``: per-volume 0.5 - 99.5 percentile min-max. Not yet resampled to 32 slices.
    """
    hu = load_dicom_series(Path(root) / str(row["path"]))
    chosen = str(row.get("meta/window", "lung"))
    if chosen == "percentile":
        return percentile_normalise(hu)
    return window(hu, *(FAIRMEDFM_CT_WINDOW if chosen == "fairmedfm" else LUNG_WINDOW))


LAYOUT = """\
Clinical-data.csv beside COVID-19 Cases/, Cap Cases/ and Normal Cases/
(Figshare release)
<data>/
  Clinical-data.csv
      <index>,Diagnosis,Folder,Patient Gender,Patient Age,Weight,
      Clinical characteristics,Surgery,Follow-up,PCR
      (the first column's name is not read)
  COVID-19 Cases/P001/<StudyID>_<n>.dcm ...
      one folder of CT slices per patient
  Cap Cases/cap001/...   (spelt Cap, not CAP)
  Normal Cases/normal001/...
  Index.csv, Slice-level-labels.npy, Lobe-level-labels.npy   not read
The README's spelling of the case folders (COVID-19 subjects/, CAP subjects/,
Normal subjects/) is also accepted. Diagnosis must be COVID-19, CAP or Normal.
Label: not_normal = Diagnosis is COVID-19 or CAP (option labels=diagnosis: 3
classes, index order Normal, COVID-19, CAP). Subject: Folder (one scan per
patient). Sex: Patient Gender M / F. Age: Patient Age '039Y' (every digit
read, so '105Y' is 105), old if >= 50.
Volume: the folder's slices sorted by ImagePositionPatient (SliceLocation,
InstanceNumber as fallbacks), axial, inferior -> superior; HU through the lung
window [-1350, 150] -> [0, 1] (option window=percentile: 0.5-99.5 percentile
min-max per volume; window=fairmedfm: the window [-1250, 250] that FairMedFM's
datasets/COVID_CT_MD.py clips to, the same for every volume).
"""

SPEC = DatasetSpec(
    key=KEY,
    title="COVID-CT-MD",
    modality="chest CT",
    version="1",
    read=read,
    labels=("not_normal",),
    task="binary",
    attributes={
        "sex": categorical(
            {"M": "male", "F": "female"},
            groups=("male", "female"),
            source=f"{CLINICAL} column Patient Gender",
        ),
        "age": dicom_age(50, source=f"{CLINICAL} column Patient Age"),
    },
    layout=LAYOUT,
    obtain=(
        "Figshare, linked from https://github.com/ShahinSHH/COVID-CT-MD (licence stated there): download the "
        "case archives and Clinical-data.csv and unpack them into one folder"
    ),
    prompts={
        "default": PromptSet(
            templates=("a computed tomography of a {}", "a chest CT scan showing {}", "a CT image of the lungs: {}"),
            classes=("normal", "pneumonia"),
            label="not_normal",
        ),
        "diagnosis": PromptSet(
            templates=("a chest CT scan showing {}", "a computed tomography of the lungs with {}"),
            classes=DIAGNOSIS_NAMES,
            label="diagnosis",
        ),
    },
    load=load,
    dim="3d",
    options={
        "labels": "not_normal (default): COVID-19 or CAP vs Normal; diagnosis: the 3 classes "
        "(multi-class, index order Normal, COVID-19, CAP)",
        "window": "lung (default): HU window level -600 width 1500; percentile: 0.5-99.5 percentile min-max per "
        "volume; fairmedfm: HU window [-1250, 250] (level -500 width 1500), as FairMedFM's "
        "datasets/COVID_CT_MD.py get_img clips",
    },
)
