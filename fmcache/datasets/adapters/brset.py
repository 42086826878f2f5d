"""BRSET 1.0.0: colour fundus photographs, diabetic retinopathy (DR_ICDR != 0) vs none."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

KEY = "brset"
LABELS_FILE = "labels.csv"
IMAGES = "fundus_photos"
COLUMNS = ("image_id", "patient_id", "patient_age", "patient_sex", "DR_ICDR", "quality")
ICDR = (
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
)
QUALITY = ("Adequate", "Inadequate")


def _labels_file(root: Path) -> Path:
    path = root / LABELS_FILE
    if not path.is_file():
        raise DatasetError(
            f"{KEY}: {LABELS_FILE} not found in {root}; pass --data the release folder "
            f"(brazilian-ophthalmological/1.0.0/ with labels.csv and fundus_photos/)"
        )
    return path


def _grades(values: pd.Series) -> np.ndarray:
    allowed = {str(i): i for i in range(len(ICDR))}
    text = values.str.strip().str.replace(r"\.0$", "", regex=True)
    bad = values[~text.isin(allowed)]
    if len(bad):
        raise DatasetError(f"{KEY}: unexpected DR_ICDR value {bad.iloc[0]!r} in {LABELS_FILE} (expected 0 to 4)")
    return text.map(allowed).to_numpy().astype(np.int8)


def _image_paths(root: Path, ids: pd.Series) -> list[str]:
    """fundus_photos/<image_id>.jpg (any case of the extension); a missing image keeps the expected name."""
    folder = root / IMAGES
    present = {p.stem: p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")} if folder.is_dir() else {}
    return [f"{IMAGES}/{present.get(i, i + '.jpg')}" for i in ids]


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of BRSET, one row per image; patient_id is the subject.

    Parameters
    ----------
    root
        ``--data``: the folder with ``labels.csv`` and ``fundus_photos/``.
    options
        ``labels`` (dr | icdr), ``quality`` (all | adequate).

    Returns
    -------
    RawTable
        id (image_id), subject (patient_id), path, label/dr or label/icdr, raw/sex, raw/age.
    """
    labels_opt = option(options, KEY, "labels", ("dr", "icdr"), "dr")
    quality = option(options, KEY, "quality", ("all", "adequate"), "all")
    table = read_csv(_labels_file(root), KEY)
    require_columns(table, COLUMNS, key=KEY, file=LABELS_FILE)
    if quality == "adequate":
        q = table["quality"].str.strip()
        bad = q[~q.isin(QUALITY)]
        if len(bad):
            raise DatasetError(f"{KEY}: unexpected quality value {bad.iloc[0]!r} in {LABELS_FILE} (expected Adequate or Inadequate)")
        table = table[q == "Adequate"].reset_index(drop=True)
    ids = table["image_id"].str.strip()
    grades = _grades(table["DR_ICDR"])

    raw = pd.DataFrame({"id": ids, "subject": table["patient_id"].str.strip(), "path": _image_paths(root, ids)})
    if labels_opt == "icdr":
        raw["label/icdr"] = grades
    else:
        # DR_ICDR, not the diabetic_retinopathy column: the two disagree in some rows and the
        # benchmark defines the label by the grade
        raw["label/dr"] = (grades != 0).astype(np.int8)
    raw["raw/sex"] = blank_to_none(table["patient_sex"])
    raw["raw/age"] = blank_to_none(table["patient_age"])  # the literal NA is read as missing by the rule

    chosen = {"labels": labels_opt, "quality": quality}
    name = cache_name(KEY, chosen, {"labels": "dr", "quality": "all"})
    if labels_opt == "icdr":
        return RawTable(raw, name=name, task="multiclass", group_attrs={"classes": list(ICDR)})
    return RawTable(raw, name=name)


LAYOUT = """\
labels.csv beside fundus_photos/
(the PhysioNet folder brazilian-ophthalmological/1.0.0/)
<data>/
  labels.csv
      image_id,patient_id,camera,patient_age,comorbidities,diabetes_time_y,
      insuline,patient_sex,exam_eye,diabetes,nationality,optic_disc,vessels,
      macula,DR_SDRG,DR_ICDR,focus,iluminaton,image_field,artifacts,
      diabetic_retinopathy,...,quality
  fundus_photos/img00001.jpg ... img16266.jpg
Subject: patient_id (1-4 images per patient). Label: DR_ICDR != 0 -> 1 (the
diabetic_retinopathy column is not used: it disagrees with the grade in some
rows); labels=icdr: the five ICDR grades (multi-class, index = grade). Sex:
patient_sex 1 -> male, 2 -> female. Age: patient_age, old if >= 60; the
literal NA and blanks -> unknown. Option quality=adequate drops `Inadequate`
images.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="BRSET 1.0.0",
    modality="colour fundus",
    version="1",
    read=read,
    labels=("dr",),
    task="binary",
    attributes={
        "sex": categorical({"1": "male", "2": "female"}, groups=("male", "female"), source="labels.csv column patient_sex"),
        "age": threshold(60, source="labels.csv column patient_age"),
    },
    layout=LAYOUT,
    obtain=(
        "PhysioNet, credentialed access: https://physionet.org/content/brazilian-ophthalmological/1.0.0/ "
        "(labels.csv and fundus_photos/)"
    ),
    prompts={
        "default": PromptSet(
            templates=("a fundus image of a {}", "a colour fundus photograph, diagnosis: {}", "a retinal photograph: {}"),
            classes=("normal", "retinopathy"),
            label="dr",
        ),
        "icdr": PromptSet(
            templates=("a fundus image with {}", "a colour fundus photograph showing {}"),
            classes=ICDR,
            label="icdr",
        ),
    },
    options={
        "labels": "dr (default): DR_ICDR != 0; icdr: the five ICDR grades 0-4 (multi-class)",
        "quality": "all (default): every image; adequate: only quality == Adequate",
    },
)
