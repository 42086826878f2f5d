"""KiTS23 (kidney tumour CT, neheller/kits23): kidney, tumour and cyst label volumes; sex and BMI.

Choices the scope leaves open, made here:

* ``gender`` ``transgender_male_to_female`` (one case) is **unknown** for sex: the
  benchmark's sex groups are male / female, and assigning the case to either would be a
  guess; the raw value stays in ``sa_raw/sex``.
* ``bmi`` ``null`` (case_00461) is unknown; the four classes are < 18.5, 18.5 to < 25,
  25 to < 30 and >= 30 (a boundary value belongs to the class above it).
* ``age_at_nephrectomy`` is not a sensitive attribute of the benchmark's KiTS23 but is
  offered as ``age`` (old if >= 60, the scope's default threshold); its ``0`` (four cases)
  marks a missing age and is unknown.
* Label values other than 1 (kidney), 2 (tumor), 3 (cyst) become background.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none
from fmcache.datasets.attributes import bins, categorical, threshold
from fmcache.datasets.spec import AttributeRule, DatasetSpec, RawTable
from fmcache.datasets.volume_grid import Volume, class_volume, read_nifti_volume
from fmcache.datasets.volumes import ABDOMEN_WINDOW, window
from fmcache.errors import DatasetError

KEY = "kits23"
DATASET = "dataset"
METADATA = "kits23.json"
IMAGE, SEGMENTATION = "imaging.nii.gz", "segmentation.nii.gz"
CASE = re.compile(r"^case_\d{5}$")
CLASSES = ("kidney", "tumor", "cyst")
LABELS = {1: 1, 2: 2, 3: 3}  # kits23/configuration/labels.py: 1 kidney, 2 tumor, 3 cyst
KEYS = ("case_id", "gender", "bmi", "age_at_nephrectomy")
BMI_EDGES = (18.5, 25.0, 30.0)
BMI_GROUPS = ("underweight", "normal", "overweight", "obese")


def _base(root: Path) -> Path:
    """The folder holding kits23.json: ``--data`` itself or its ``dataset/`` (the repository's root)."""
    for base in (root, root / DATASET):
        if (base / METADATA).is_file():
            return base
    raise DatasetError(
        f"{KEY}: {METADATA} not found in {root} or {root / DATASET}; pass --data the kits23 repository "
        f"(or its {DATASET}/ folder) after `kits23_download_data` has fetched the imaging"
    )


def _metadata(path: Path) -> pd.DataFrame:
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{KEY}: cannot read {path}: {e.__class__.__name__}: {e} (file corrupt?)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DatasetError(f"{KEY}: {path} is not a JSON list of case records; replace it with the repository's copy")
    missing = [k for k in KEYS if records and k not in records[0]]
    if missing:
        raise DatasetError(f"{KEY}: key {missing[0]!r} not found in the records of {path} "
                           f"(found: {', '.join(records[0])}); the file must keep the official keys")
    df = pd.DataFrame({k: pd.Series([r.get(k) for r in records], dtype=object) for k in KEYS})
    bad = [c for c in df["case_id"] if not CASE.match(str(c))]
    if bad:
        raise DatasetError(f"{KEY}: case_id {bad[0]!r} in {path} is not of the form case_00000")
    return df


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of KiTS23, one row per case (one CT volume each).

    Returns
    -------
    RawTable
        id and subject (``case_id``), path (``case_XXXXX/imaging.nii.gz`` below the folder
        holding kits23.json), meta/mask (the segmentation), raw/sex (``gender``), raw/bmi,
        raw/age (``age_at_nephrectomy``).
        Cases of kits23.json whose folder is absent are left out (the repository lists
        every case but imaging comes by a separate download); none at all is an error.
    """
    base = _base(root)
    df = _metadata(base / METADATA)
    if not len(df):
        raise DatasetError(f"{KEY}: {base / METADATA} lists no cases")
    present = df["case_id"].map(lambda c: (base / c / SEGMENTATION).is_file())
    if not present.any():
        raise DatasetError(f"{KEY}: no case folder of {METADATA} holds {SEGMENTATION} below {base}; "
                           f"expected e.g. {base / df['case_id'].iloc[0] / SEGMENTATION}")
    df = df[present].reset_index(drop=True)
    rel = base.relative_to(root).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    raw = pd.DataFrame({"id": df["case_id"], "subject": df["case_id"], "path": prefix + df["case_id"] + f"/{IMAGE}"})
    raw["meta/mask"] = prefix + df["case_id"] + f"/{SEGMENTATION}"
    raw["raw/sex"] = blank_to_none(df["gender"])
    raw["raw/bmi"] = blank_to_none(df["bmi"])
    raw["raw/age"] = blank_to_none(df["age_at_nephrectomy"])
    return RawTable(raw)


def _zero_age_unknown(rule: AttributeRule) -> AttributeRule:
    """age_at_nephrectomy 0 (four cases, none of them infants) marks a missing age."""

    def assign(values: pd.Series) -> pd.Series:
        groups = rule.assign(values)
        zero = pd.to_numeric(values, errors="coerce") == 0
        return groups.astype(object).where(~zero.to_numpy(), None)

    return replace(rule, assign=assign, description=rule.description + "; 0 -> unknown (a missing age in kits23.json)")


def volume(root: Path, row: pd.Series) -> Volume:
    """The case's CT in HU on its grid (canonical RAS+)."""
    return read_nifti_volume(Path(root) / str(row["path"]))


def mask(root: Path, row: pd.Series) -> Volume:
    """segmentation.nii.gz: 1 kidney, 2 tumor, 3 cyst; any other value background."""
    return class_volume(Path(root) / str(row["meta/mask"]), LABELS, KEY)


def load(root: Path, row: pd.Series) -> np.ndarray:
    """Axial slices (inferior -> superior) in [0, 1]: HU through the abdominal window [-160, 240]."""
    return window(volume(root, row).slices(), *ABDOMEN_WINDOW)


LAYOUT = """\
the kits23 repository (github.com/neheller/kits23) with its imaging downloaded
<data>/   --data: the repository, or its dataset/ folder
  dataset/kits23.json     a JSON list of case records: case_id, gender, bmi,
                          age_at_nephrectomy, ... (the official keys)
  dataset/case_00000/imaging.nii.gz        CT (HU), from kits23_download_data
  dataset/case_00000/segmentation.nii.gz   0 background, 1 kidney, 2 tumor,
                                           3 cyst (other values -> background)
  dataset/case_00000/instances/...         not read
Cases of kits23.json without a folder are left out.
Classes: 1 kidney, 2 tumor, 3 cyst. Subject: case_id (one CT each).
Sex: gender male / female; transgender_male_to_female -> unknown (neither
group; the raw value is kept). BMI: underweight < 18.5 <= normal < 25 <=
overweight < 30 <= obese; null -> unknown. Age (not one of the benchmark's
attributes for KiTS23): age_at_nephrectomy, old if >= 60; 0 -> unknown.
Volume: canonical RAS+ with spacing (`Dataset.volume`); slices axial, HU
through the abdominal window [-160, 240] (level 40, width 400) -> [0, 1].
"""

SPEC = DatasetSpec(
    key=KEY,
    title="KiTS23",
    modality="abdominal CT",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical({"male": "male", "female": "female"}, groups=("male", "female"),
                           unknown=("transgender_male_to_female",), source=f"{METADATA} key gender"),
        "bmi": bins(BMI_EDGES, groups=BMI_GROUPS, valid=(5.0, 150.0), source=f"{METADATA} key bmi"),
        "age": _zero_age_unknown(threshold(60, source=f"{METADATA} key age_at_nephrectomy")),
    },
    layout=LAYOUT,
    obtain=(
        "git clone https://github.com/neheller/kits23 (segmentations and kits23.json, CC BY-NC-SA), then "
        "`pip install -e .` and `kits23_download_data` inside it to fetch the imaging from Hugging Face"
    ),
    load=load,
    dim="3d",
    mask=mask,
    mask_classes=CLASSES,
    volume=volume,
)
