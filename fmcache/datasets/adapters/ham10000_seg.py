"""HAM10000 lesion masks (dermatoscopy): one binary lesion mask per HAM10000 image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters import ham10000
from fmcache.datasets.adapters._common import blank_to_none
from fmcache.datasets.masks import read_binary_mask
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.errors import DatasetError

KEY = "ham10000_seg"
MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
MASK_NAME = re.compile(r"^(ISIC_\d+)_segmentation\.png$")


def _mask_folder(root: Path) -> Path:
    """The mask folder; the zip unpacks either flat or into a nested folder of the same name."""
    for folder in (root / MASK_DIR / MASK_DIR, root / MASK_DIR):
        if folder.is_dir() and any(MASK_NAME.match(p.name) for p in folder.iterdir()):
            return folder
    raise DatasetError(
        f"{KEY}: no lesion masks in {root / MASK_DIR}: unpack {MASK_DIR}.zip from the HAM10000 Dataverse "
        f"record beside the image folders"
    )


def _mask_paths(ids: pd.Series, root: Path) -> list[str]:
    """Each image's mask, relative to root; a missing one keeps its expected name so checks can list it."""
    folder = _mask_folder(root)
    rel = folder.relative_to(root).as_posix()
    return [f"{rel}/{i}_segmentation.png" for i in ids]


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of the HAM10000 lesion masks, one row per image; lesion_id is the subject.

    Returns
    -------
    RawTable
        id (image_id), subject (lesion_id), path (the JPEG), meta/mask (the mask PNG),
        raw/sex, raw/age.
    """
    meta = ham10000.read_metadata(root)
    ids = ham10000.image_ids(meta)
    raw = pd.DataFrame({"id": ids, "subject": meta["lesion_id"].str.strip(), "path": ham10000.image_paths(ids, root)})
    raw["meta/mask"] = _mask_paths(ids, root)
    raw["raw/sex"] = blank_to_none(meta["sex"])
    raw["raw/age"] = blank_to_none(meta["age"])
    return RawTable(raw)


def mask(root: Path, row: pd.Series) -> np.ndarray:
    return read_binary_mask(root / row["meta/mask"])


LAYOUT = """\
HAM10000 as for `ham10000`, plus HAM10000_segmentations_lesion_tschandl/
<data>/
  HAM10000_metadata   (or .csv; sex and age as for `ham10000`)
  HAM10000_images_part_1/ISIC_0024306.jpg ...
  HAM10000_images_part_2/ISIC_0029306.jpg ...
  HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png
      one grey PNG per image, the image's size: 0 background, 255 lesion
      (the zip may unpack into a nested folder of the same name)
These are Tschandl's masks of the HAM10000 images, not the ISIC 2018 Task 1
set (other image ids). Class 1: lesion. Subject: lesion_id.
Sex: male / female, `unknown` -> unknown (never merged into male). Age: old
if >= 60, empty -> unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="HAM10000 lesion masks",
    modality="dermatoscopy",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes=ham10000.ATTRIBUTES,
    layout=LAYOUT,
    obtain=(
        "Harvard Dataverse, open download (CC BY-NC 4.0): https://doi.org/10.7910/DVN/DBW86T - the HAM10000 "
        "files as for `ham10000` plus HAM10000_segmentations_lesion_tschandl.zip; unzip beside each other"
    ),
    mask=mask,
    mask_classes=("lesion",),
)
