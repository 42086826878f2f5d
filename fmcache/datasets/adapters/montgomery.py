"""Montgomery County chest X-ray set (NLM): left and right lung masks, sex and age from the readings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.attributes import categorical, dicom_age
from fmcache.datasets.masks import read_binary_mask
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.errors import DatasetError

KEY = "montgomery"
SET = "MontgomerySet"
OUTER = "NLM-MontgomeryCXRSet"
IMAGES, READINGS = "CXR_png", "ClinicalReadings"
MASKS = {"left": "ManualMask/leftMask", "right": "ManualMask/rightMask"}  # class 1, class 2
STEM = re.compile(r"^MCUCXR_\d{4}_[01]$")
SEX_LINE, AGE_LINE = "Patient's Sex:", "Patient's Age:"
# free text of a reading that names another file of the same person, e.g.
# "NO REPORT (same pt as MCUCXR_0162_1)"
SAME_PATIENT = re.compile(r"same\s+pt\s+as\s+(MCUCXR_\d{4}_[01])", re.IGNORECASE)


def _base(root: Path) -> Path:
    """The MontgomerySet folder: --data itself, inside it, or inside the outer NLM folder."""
    for base in (root, root / SET, root / OUTER / SET):
        if (base / IMAGES).is_dir():
            return base
    raise DatasetError(
        f"{KEY}: {IMAGES}/ not found in {root}, {root / SET} or {root / OUTER / SET}; pass --data the unzipped "
        f"{SET}/ folder (with {IMAGES}/, ManualMask/ and {READINGS}/)"
    )


def _line_value(lines: list[str], start: str, path: Path) -> str | None:
    for line in lines:
        if line.startswith(start):
            return line[len(start):].strip() or None  # the sex letter carries a trailing space
    raise DatasetError(f"{KEY}: {path} has no line {start!r}; replace it with the release's copy")


def _reading(path: Path) -> tuple[str | None, str | None, str | None]:
    """(sex, age text, same-patient stem) from a ClinicalReadings file."""
    if not path.is_file():
        raise DatasetError(f"{KEY}: clinical reading {path} not found; unpack {READINGS}/ with the images")
    lines = path.read_text(errors="replace").splitlines()
    same = SAME_PATIENT.search("\n".join(lines[2:]))
    return _line_value(lines, SEX_LINE, path), _line_value(lines, AGE_LINE, path), same.group(1) if same else None


def _subjects(stems: list[str], same: dict[str, str]) -> list[str]:
    """Files that name each other as the same patient share a subject: the first stem of their group."""
    parent = {s: s for s in stems}

    def find(s: str) -> str:
        while parent.setdefault(s, s) != s:
            s = parent[s]
        return s

    for a, b in same.items():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(s) for s in stems]


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of the Montgomery set, one row per radiograph.

    Returns
    -------
    RawTable
        id (file stem), subject (the stem, shared by files that say they are the same
        patient), path, meta/mask (the left-lung mask), raw/sex, raw/age.
    """
    base = _base(root)
    stems = sorted(p.stem for p in (base / IMAGES).iterdir() if p.suffix.lower() == ".png" and STEM.match(p.stem))
    if not stems:
        raise DatasetError(f"{KEY}: no MCUCXR_NNNN_N.png in {base / IMAGES}; unpack the release's images there")
    readings = {s: _reading(base / READINGS / f"{s}.txt") for s in stems}
    rel = base.relative_to(root).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    raw = pd.DataFrame({
        "id": stems,
        "subject": _subjects(stems, {s: r[2] for s, r in readings.items() if r[2]}),
        "path": [f"{prefix}{IMAGES}/{s}.png" for s in stems],
    })
    raw["meta/mask"] = [f"{prefix}{MASKS['left']}/{s}.png" for s in stems]
    raw["raw/sex"] = pd.Series([readings[s][0] for s in stems], dtype=object)
    raw["raw/age"] = pd.Series([readings[s][1] for s in stems], dtype=object)
    return RawTable(raw)


def mask(root: Path, row: pd.Series) -> np.ndarray:
    """Left lung 1, right lung 2, from the two mask files (which must not overlap)."""
    left_path = root / row["meta/mask"]
    right_path = Path(str(left_path).replace(MASKS["left"], MASKS["right"]))
    left, right = read_binary_mask(left_path), read_binary_mask(right_path)
    if left.shape != right.shape:
        raise DatasetError(f"{KEY}: {right_path} is {right.shape} but {left_path} is {left.shape}; both must fit the image")
    if (left & right).any():
        raise DatasetError(f"{KEY}: {left_path.name} marks pixels as both left and right lung; replace the mask files")
    return left + 2 * right


LAYOUT = """\
NLM-MontgomeryCXRSet/MontgomerySet/ with CXR_png/, ManualMask/,
ClinicalReadings/
<data>/   --data: MontgomerySet/, or a folder holding it or the outer folder
  CXR_png/MCUCXR_0001_0.png ...     138 grey PNGs; _0 normal, _1 TB
  ManualMask/leftMask/MCUCXR_0001_0.png    0 background, 255 left lung
  ManualMask/rightMask/MCUCXR_0001_0.png   0 background, 255 right lung
  ClinicalReadings/MCUCXR_0001_0.txt
      Patient's Sex: F
      Patient's Age: 027Y
      normal
      (line 3 on is free text, e.g. NO REPORT (same pt as MCUCXR_0162_1))
Classes: 1 left lung, 2 right lung (the mask folders' names), one label map.
Subject: the file stem; files whose reading names another as the same
patient share a subject. Sex: M -> male, F -> female, O -> unknown. Age:
old if >= 60 (027Y = 27).
"""

SPEC = DatasetSpec(
    key=KEY,
    title="Montgomery County CXR",
    modality="chest X-ray",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical({"M": "male", "F": "female"}, groups=("male", "female"), unknown=("O",),
                           source=f"{READINGS}/<stem>.txt line {SEX_LINE!r}"),
        "age": dicom_age(60, source=f"{READINGS}/<stem>.txt line {AGE_LINE!r}"),
    },
    layout=LAYOUT,
    obtain=(
        "U.S. National Library of Medicine (LHNCBC), open download of the Montgomery County chest X-ray set "
        "(NLM-MontgomeryCXRSet.zip, also on academictorrents); unzip it"
    ),
    mask=mask,
    mask_classes=("left lung", "right lung"),
)
