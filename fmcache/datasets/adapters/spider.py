"""SPIDER (lumbar spine MRI, Zenodo 10159290): vertebrae, spinal canal and discs per series; sex.

Choices the scope leaves open, made here:

* One row per MR series (``<patient>_t1``, ``_t2``, ``_t2_SPACE``); the subject is the
  stem's prefix before the first ``_``, so a patient's series share a split.
* The 15 classes are FairMedFM's list: vertebrae 1-7 (counted from the bottom: 1 is
  usually L5), the spinal canal (100) and discs 201-207 (201 usually L5/S1). Higher
  vertebrae and discs, and the partially visible vertebrae (101-125), become background.
* Sex is read per series from overview.csv, the row whose ``new_file_name`` is the
  series' stem (FairMedFM's reader gives every series row 0's sex: a defect). The exact
  header and spellings are not published: the column may be ``sex``, ``Sex``,
  ``PatientSex``, ``Patient Sex``, ``gender`` or ``Gender``, the values ``M`` / ``F`` /
  ``male`` / ``female`` (lower, capitalised or upper case); ``O`` / ``U`` / ``unknown`` and
  blanks are unknown; any other value is an error naming the file.
* Only the series whose image is in ``images/`` are rows (overview.csv may list more);
  the release's own ``subset`` (training / validation) is not used: the split is
  fmcache's seeded patient-level split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, read_csv, require_columns
from fmcache.datasets.attributes import categorical
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.datasets.volume_grid import Volume, class_volume, read_image_volume
from fmcache.datasets.volumes import percentile_normalise
from fmcache.errors import DatasetError

KEY = "spider"
IMAGES, MASKS, OVERVIEW = "images", "masks", "overview.csv"
SUFFIX = ".mha"
NAME_COLUMN = "new_file_name"
SEX_COLUMNS = ("sex", "Sex", "SEX", "PatientSex", "Patient Sex", "patient_sex", "gender", "Gender")
SEXES = {"M": "male", "F": "female", "m": "male", "f": "female", "male": "male", "female": "female",
         "Male": "male", "Female": "female", "MALE": "male", "FEMALE": "female"}
UNKNOWN_SEXES = ("O", "U", "unknown", "Unknown", "UNKNOWN")
# (mask value, class name) in class order: class id = position + 1
STRUCTURES = (
    *((v, f"vertebra {v}") for v in range(1, 8)),
    (100, "spinal canal"),
    *((200 + v, f"disc {v}") for v in range(1, 8)),
)
LABELS = {value: i + 1 for i, (value, _) in enumerate(STRUCTURES)}


def _overview(root: Path) -> tuple[pd.DataFrame, str]:
    """overview.csv indexed by new_file_name, and the name of its sex column."""
    path = root / OVERVIEW
    if not path.is_file():
        raise DatasetError(f"{KEY}: {OVERVIEW} not found in {root}; pass --data the folder holding {OVERVIEW}, "
                           f"{IMAGES}/ and {MASKS}/")
    df = read_csv(path, KEY)
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df, (NAME_COLUMN,), key=KEY, file=str(path))
    sex_col = next((c for c in SEX_COLUMNS if c in df.columns), None)
    if sex_col is None:
        raise DatasetError(f"{KEY}: no sex column in {path}: expected one of {', '.join(SEX_COLUMNS)}, found "
                           f"{', '.join(df.columns)}; report the file's header so the adapter can learn it")
    df[NAME_COLUMN] = df[NAME_COLUMN].str.strip()
    dup = df[NAME_COLUMN][df[NAME_COLUMN].duplicated()]
    if len(dup):
        raise DatasetError(f"{KEY}: {NAME_COLUMN} {dup.iloc[0]!r} occurs twice in {path}")
    return df.set_index(NAME_COLUMN), sex_col


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of SPIDER, one row per MR series.

    Returns
    -------
    RawTable
        id (the file stem, e.g. ``1_t2``), subject (the patient: stem before the first
        ``_``), path (``images/<stem>.mha``), meta/mask (``masks/<stem>.mha``), raw/sex
        (that series' row of overview.csv).
    """
    if not (root / IMAGES).is_dir():
        raise DatasetError(f"{KEY}: {root / IMAGES}/ not found; unzip {IMAGES}.zip and {MASKS}.zip into --data")
    overview, sex_col = _overview(root)
    stems = sorted((p.name[: -len(SUFFIX)] for p in (root / IMAGES).iterdir() if p.name.endswith(SUFFIX)),
                   key=lambda s: (int(s.split("_")[0]) if s.split("_")[0].isdigit() else s, s))
    if not stems:
        raise DatasetError(f"{KEY}: no {SUFFIX} file in {root / IMAGES}; unzip {IMAGES}.zip there")
    unlisted = [s for s in stems if s not in overview.index]
    if unlisted:
        raise DatasetError(f"{KEY}: {IMAGES}/{unlisted[0]}{SUFFIX} has no row in {OVERVIEW} (column {NAME_COLUMN}); "
                           f"{len(unlisted)} series lack one: use the {OVERVIEW} of the same release")
    raw = pd.DataFrame({"id": stems, "subject": [s.split("_")[0] for s in stems],
                        "path": [f"{IMAGES}/{s}{SUFFIX}" for s in stems]})
    raw["meta/mask"] = [f"{MASKS}/{s}{SUFFIX}" for s in stems]
    raw["raw/sex"] = blank_to_none(overview.loc[stems, sex_col].str.strip().reset_index(drop=True))
    return RawTable(raw, group_attrs={"sex_column": sex_col})


def volume(root: Path, row: pd.Series) -> Volume:
    """The series on its grid (canonical RAS+, whatever the file's axis order)."""
    return read_image_volume(Path(root) / str(row["path"]))


def mask(root: Path, row: pd.Series) -> Volume:
    """masks/<stem>.mha: vertebrae 1-7, canal 100, discs 201-207 as classes 1-15; other values background."""
    return class_volume(Path(root) / str(row["meta/mask"]), LABELS, KEY)


def load(root: Path, row: pd.Series) -> np.ndarray:
    """Axial slices (inferior -> superior) in [0, 1]: 0.5 - 99.5 percentile min-max of the series."""
    return percentile_normalise(volume(root, row).slices())


LAYOUT = """\
images.zip and masks.zip unzipped beside overview.csv (Zenodo 10159290)
<data>/
  overview.csv    new_file_name (= file stem, e.g. 1_t2), subset, sex, ...
                  (sex column: sex / Sex / PatientSex / Patient Sex / gender)
  images/1_t1.mha, 1_t2.mha, 1_t2_SPACE.mha, ...   sagittal MR series
  masks/1_t1.mha, ...                               label volumes
  radiological_gradings.csv                         not read
Classes (mask value): 1-7 vertebra 1-7 (1-7; counted from the bottom, 1
usually L5), 8 spinal canal (100), 9-15 disc 1-7 (201-207, 201 usually
L5/S1); other values -> 0.
Rows: the series in images/; subject: the stem before the first _ (a
patient's series stay on one side of the split). Sex: each series' own row
of overview.csv, M / F / male / female; O / U / unknown -> unknown.
Volume: canonical RAS+ with spacing (`Dataset.volume`, the .mha direction
matrix applied); slices axial, 0.5-99.5 percentile min-max -> [0, 1].
"""

SPEC = DatasetSpec(
    key=KEY,
    title="SPIDER lumbar spine MRI",
    modality="spine MRI",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical(SEXES, groups=("male", "female"), unknown=UNKNOWN_SEXES,
                           source=f"{OVERVIEW} sex column ({' / '.join(SEX_COLUMNS)})"),
    },
    layout=LAYOUT,
    obtain="Zenodo record 10159290 (CC BY 4.0): download images.zip, masks.zip and overview.csv; unzip both zips",
    load=load,
    dim="3d",
    mask=mask,
    mask_classes=tuple(name for _, name in STRUCTURES),
    volume=volume,
)
