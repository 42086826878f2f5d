"""Harvard-GF3300: OCT retinal nerve fibre layer thickness (RNFLT) maps in NPZ files, glaucoma vs not."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import as_gray, cache_name, option, read_npz_array
from fmcache.datasets.adapters.fairvlmed10k import (
    GROUPS_OPTION,
    SUMMARY,
    ethnicity_rule,
    find_summary,
    language_rule,
    marital_rule,
    npz_index,
    npz_paths,
    race_rule,
    raw_attributes,
    read_summary,
    sex_rule,
    yes_no,
)
from fmcache.datasets.attributes import threshold
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

KEY = "gf3300"
COLUMNS = ("filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "glaucoma")
# FairMedFM's copy: dataset-001/Training/...; Harvard-GF's training code: train/ and test/
CONTAINERS = (".", "dataset-001")
SPLIT_DIRS = {
    "training": ("Training", "train"),
    "validation": ("Validation", "val", "validation"),
    "test": ("Test", "Testing", "test"),
}
NPZ_NAME = re.compile(r"^data_\d{4}\.npz$")
IMAGE_KEY = "rnflt"
# RNFL thickness in micrometres: FairMedFM maps (x + 2) / 352 * 255, one fixed scale for every
# map, so that the same grey level means the same thickness in every patient
RNFLT_RANGE = (-2.0, 350.0)
# the README's name of marital state 0, lower-cased as the summary spells values
MARITAL_ALIASES = {"married/civil union/life partner": "married or partnered"}


def _rules(groups: str) -> dict[str, AttributeRule]:
    src = f"{SUMMARY} column "
    return {
        "sex": sex_rule(src + "gender"),
        "age": threshold(60, source=src + "age"),
        "race": race_rule(groups, src + "race"),
        "language": language_rule(groups, src + "language", other="other languages"),
        "ethnicity": ethnicity_rule(src + "ethnicity"),
        "marital_status": marital_rule(groups, src + "maritalstatus", MARITAL_ALIASES),
    }


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of Harvard-GF3300, one row per NPZ (one per patient, as the README says).

    Parameters
    ----------
    root
        ``--data``: the folder with ``data_summary.csv`` and the NPZ folders (``Training/``,
        ``Validation/``, ``Test/``, directly or under ``dataset-001/``; or ``train/``,
        ``val/``, ``test/``).
    options
        ``groups`` (binary | multi).

    Returns
    -------
    RawTable
        id (filename stem), subject (= id), path (the NPZ), label/glaucoma, raw/sex, raw/age,
        raw/race, raw/language, raw/ethnicity, raw/marital_status.
    """
    groups = option(options, KEY, "groups", ("binary", "multi"), "binary")
    base, summary_path = find_summary(
        root, KEY, (".", "dataset-001"), "pass --data the folder that holds data_summary.csv and the NPZ folders"
    )
    summary = read_summary(summary_path, KEY, COLUMNS)
    split_dirs = list(dict.fromkeys(d for names in SPLIT_DIRS.values() for d in names))
    index, folders = npz_index(base, KEY, CONTAINERS, split_dirs, NPZ_NAME)
    if not folders:
        raise DatasetError(
            f"{KEY}: no NPZ folder in {base}: expected Training/, Validation/, Test/ (or under dataset-001/, "
            f"or train/, val/, test/) holding data_NNNN.npz"
        )
    ids = summary["filename"].str.replace(r"\.npz$", "", regex=True)
    paths = npz_paths(summary, index, folders, SPLIT_DIRS, KEY)
    raw = pd.DataFrame({"id": ids, "subject": ids, "path": paths})
    raw["path"] = [p if base == root else (base / p).relative_to(root).as_posix() for p in raw["path"]]
    raw["label/glaucoma"] = yes_no(summary["glaucoma"], KEY, f"{SUMMARY} column glaucoma")
    for c, v in raw_attributes(summary).items():
        raw[c] = v
    return RawTable(
        raw,
        name=cache_name(KEY, {"groups": groups}, {"groups": "binary"}),
        attribute_rules=_rules(groups) if groups == "multi" else None,
    )


def rnflt_to_uint8(array: np.ndarray) -> np.ndarray:
    """Thickness (µm) to 8 bits on the fixed scale -2 .. 350 µm; NaN and out-of-range values clip."""
    lo, hi = RNFLT_RANGE
    x = np.nan_to_num(array.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    return np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def load(root: Path, row: pd.Series) -> Image.Image:
    """The RNFLT map of a row as an RGB image (gray replicated; see :func:`rnflt_to_uint8`)."""
    path = Path(row["path"])
    path = path if path.is_absolute() else root / path
    array = as_gray(read_npz_array(path, KEY, (IMAGE_KEY,)), path)
    return Image.fromarray(rnflt_to_uint8(array), mode="L").convert("RGB")


LAYOUT = """\
data_summary.csv beside Training/, Validation/, Test/
(or dataset-001/Training/ ..., or train/ val/ test/) of data_NNNN.npz
<data>/
  data_summary.csv
      filename,age,gender,race,ethnicity,language,maritalstatus,glaucoma,use
  dataset-001/Training/data_0001.npz ...   2,100 files
  dataset-001/Validation/                  300 files
  dataset-001/Test/                        900 files
      (the folder may also sit directly in <data>, or be named train/,
      val/, test/)
  Each NPZ holds rnflt (200 x 200 RNFL thickness map, µm), oct_bscans,
  glaucoma, md, tds, race, male, hispanic, language, maritalstatus, age; only
  rnflt is read (labels and groups come from data_summary.csv).
Image: rnflt mapped to 8 bits on one fixed scale, (x + 2) / 352 * 255, clipped
(as FairMedFM).
One map per patient (README); the release has no patient id column, so the
subject is the file name. Our own patient-level split replaces the release's
`use` column.
Label: glaucoma yes -> 1, no -> 0. Sex: gender male / female. Age: old if
>= 60.
Race: white vs non-white (asian, black). Language: english vs non-english
(spanish, `other languages`; unknown -> unknown). Ethnicity:
non-hispanic / hispanic (unknown -> unknown).
Marital status: partnered vs not, as FairVLMed10k spells it (married or
partnered, single, divorced, widowed, legally separated, unknown).
groups=multi keeps race, language and marital status in all their groups.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="Harvard-GF3300",
    modality="OCT RNFL thickness map",
    version="1",
    read=read,
    labels=("glaucoma",),
    task="binary",
    attributes=_rules("binary"),
    layout=LAYOUT,
    obtain=(
        "Harvard Ophthalmology AI Lab (CC BY-NC-ND 4.0): Hugging Face harvardairobotics/Harvard-GF "
        "(earlier a Google Drive link in github.com/Harvard-Ophthalmology-AI-Lab/Harvard-GF)"
    ),
    prompts={
        "default": PromptSet(
            # FairMedFM's one template first (configs/datasets/GF3300.json), for --templates first
            templates=(
                "a photo of a {}",
                "a retinal nerve fiber layer thickness map of a {} eye",
                "an OCT RNFL thickness map of a {} eye",
            ),
            classes=("normal", "glaucoma"),
            label="glaucoma",
        )
    },
    load=load,
    options={"groups": GROUPS_OPTION},
)
