"""HAM10000 (dermatoscopy): malignant vs benign, or the 7 diagnoses."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

KEY = "ham10000"
METADATA_FILES = ("HAM10000_metadata", "HAM10000_metadata.csv")
# Dataverse zip names, the spelling of its description text, and Kaggle's lower-case copies
IMAGE_DIRS = (
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "HAM10000_images_part1",
    "HAM10000_images_part2",
    "ham10000_images_part_1",
    "ham10000_images_part_2",
)
# class index of labels=dx: the column order of the ISIC 2018 Task 3 ground truth
DX = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
DX_NAMES = (
    "melanoma",
    "melanocytic nevus",
    "basal cell carcinoma",
    "actinic keratosis",
    "benign keratosis",
    "dermatofibroma",
    "vascular lesion",
)
MALIGNANT = {"scope": ("mel", "bcc", "akiec"), "reference": ("mel", "akiec")}


def read_metadata(root: Path) -> pd.DataFrame:
    for name in METADATA_FILES:
        if (root / name).is_file():
            df = read_csv(root / name, KEY)
            require_columns(df, ("lesion_id", "image_id", "dx", "age", "sex"), key=KEY, file=name)
            return df
    raise DatasetError(
        f"HAM10000: metadata file not found in {root}: expected {METADATA_FILES[0]} or {METADATA_FILES[1]} "
        f"(pass --data the folder that holds it and the HAM10000_images_part_1/ and _part_2/ folders)"
    )


def _image_index(root: Path) -> dict[str, str]:
    """image_id -> path relative to root, over every image folder present (first one wins)."""
    index: dict[str, str] = {}
    present = [d for d in IMAGE_DIRS if (root / d).is_dir()]
    if not present:
        raise DatasetError(
            f"HAM10000: no image folder in {root}: expected HAM10000_images_part_1/ and HAM10000_images_part_2/ "
            f"(the two Dataverse zips, unpacked)"
        )
    for d in present:
        for p in sorted((root / d).iterdir()):
            if p.suffix.lower() == ".jpg":
                index.setdefault(p.stem, f"{d}/{p.name}")
    return index


def image_paths(ids: pd.Series, root: Path) -> pd.Series:
    index = _image_index(root)
    paths = ids.map(index)
    if paths.isna().any():
        missing = ids[paths.isna()]
        raise DatasetError(
            f"HAM10000: {len(missing)} image(s) of the metadata not found, e.g. {missing.iloc[0]}.jpg, in "
            f"{', '.join(d for d in IMAGE_DIRS if (root / d).is_dir())} below {root}; unpack both image zips"
        )
    return paths


def image_ids(meta: pd.DataFrame) -> pd.Series:
    # one copy seen with ".jpg" appended to image_id (a user edit); the id stays the stem
    return meta["image_id"].str.strip().str.replace(r"\.jpg$", "", regex=True)


def _labels(dx: pd.Series, labels_opt: str, malignant: str) -> tuple[str, np.ndarray]:
    unknown = sorted(set(dx) - set(DX))
    if unknown:
        raise DatasetError(f"HAM10000: unexpected dx value {unknown[0]!r} in the metadata column dx (known: {', '.join(DX)})")
    if labels_opt == "dx":
        return "dx", dx.map({d: i for i, d in enumerate(DX)}).to_numpy().astype(np.int8)
    return "malignant", dx.isin(MALIGNANT[malignant]).to_numpy().astype(np.int8)


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of HAM10000, one row per image; lesion_id stands in for the patient.

    Parameters
    ----------
    root
        ``--data``: the folder with ``HAM10000_metadata`` (or ``.csv``) and the image folders.
    options
        ``labels`` (malignant | dx), ``malignant`` (scope | reference).

    Returns
    -------
    RawTable
        id (image_id), subject (lesion_id), path, label/malignant or label/dx, raw/sex,
        raw/age.
    """
    labels_opt = option(options, KEY, "labels", ("malignant", "dx"), "malignant")
    malignant = option(options, KEY, "malignant", tuple(MALIGNANT), "scope")
    meta = read_metadata(root)
    ids = image_ids(meta)
    name, codes = _labels(meta["dx"].str.strip(), labels_opt, malignant)

    raw = pd.DataFrame({"id": ids, "subject": meta["lesion_id"].str.strip(), "path": image_paths(ids, root)})
    raw[f"label/{name}"] = codes
    raw["raw/sex"] = blank_to_none(meta["sex"])
    raw["raw/age"] = blank_to_none(meta["age"])

    chosen = {"labels": labels_opt, "malignant": malignant}
    name = cache_name(KEY, chosen, {"labels": "malignant", "malignant": "scope"})
    if labels_opt == "dx":
        return RawTable(raw, name=name, task="multiclass", group_attrs={"classes": list(DX)})
    return RawTable(raw, name=name)


# also the lesion-mask dataset's rules: same metadata file
ATTRIBUTES = {
    "sex": categorical(
        {"male": "male", "female": "female"},
        groups=("male", "female"),
        unknown=("unknown",),
        source="HAM10000_metadata column sex",
    ),
    "age": threshold(60, source="HAM10000_metadata column age"),
}

LAYOUT = """\
HAM10000_metadata (or .csv) beside HAM10000_images_part_1/ and _part_2/
<data>/
  HAM10000_metadata
      lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
      (no extension, as on Dataverse; HAM10000_metadata.csv also accepted;
      older / Kaggle copies lack `dataset`, which is not read)
  HAM10000_images_part_1/ISIC_0024306.jpg ...   (5,000 images)
  HAM10000_images_part_2/ISIC_0029306.jpg ...   (5,015 images)
  The folders may also be spelled HAM10000_images_part1/ part2/ or, as on
  Kaggle, ham10000_images_part_1/ _part_2/.
There is no patient id in HAM10000: lesion_id is the subject (a lesion's
images never straddle splits), but one person may have several lesions and
these cannot be linked.
Label: malignant = dx in {mel, bcc, akiec} (option malignant=reference: {mel,
akiec}, the reference code's definition, which counts bcc as benign); option
labels=dx: the 7-class diagnosis, index in the order mel, nv, bcc, akiec, bkl,
df, vasc. Sex: male / female, `unknown` -> unknown. Age: old if >= 60 ("80"
and "80.0" both read), empty -> unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="HAM10000",
    modality="dermatoscopy",
    version="1",
    read=read,
    labels=("malignant",),
    task="binary",
    attributes=ATTRIBUTES,
    layout=LAYOUT,
    obtain=(
        "Harvard Dataverse, open download (CC BY-NC 4.0): https://doi.org/10.7910/DVN/DBW86T - "
        "HAM10000_images_part_1.zip, HAM10000_images_part_2.zip and HAM10000_metadata; unzip beside each other"
    ),
    prompts={
        "default": PromptSet(
            templates=("a photo of a {}", "a dermoscopy image of a {}", "a close-up photo of a {} on the skin"),
            classes=("benign lesion", "malignant lesion"),
            label="malignant",
        ),
        "dx": PromptSet(
            templates=("a dermoscopy image of {}", "a photo of a skin lesion showing {}"),
            classes=DX_NAMES,
            label="dx",
        ),
    },
    options={
        "labels": "malignant (default): benign vs malignant; dx: the 7 diagnoses (multi-class, "
        "index order mel, nv, bcc, akiec, bkl, df, vasc)",
        "malignant": "scope (default): dx in {mel, bcc, akiec}; reference: {mel, akiec} as the reference code",
    },
)
