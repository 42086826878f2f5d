"""CANDI Share (child and adolescent brain MRI, SchizBull 2008): six CMA structures; sex, age, handedness.

Choices the scope leaves open, made here:

* The six structures: FairMedFM's reader marks seven CMA values (2, 3, 4, 16, 41, 42, 43);
  the six kept are the left / right pairs among them, cerebral white matter (2 / 41),
  cerebral cortex (3 / 42) and lateral ventricle (4 / 43), so that every class has its
  contralateral twin; brain-stem (16) and every other label become background.
* Age: ``old`` (the 10-and-over group) if ``Age`` >= 10 years, else ``young``.
* Handedness: ``RH`` right, ``LH`` left; spellings of mixed / ambidextrous handedness
  (``AH``, ``MH``, ``Ambi``...) and blanks are unknown; any other value is an error.
* Gender: ``male`` / ``female`` in any case (also ``M`` / ``F``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.datasets.volume_grid import Volume, class_volume, read_nifti_volume
from fmcache.datasets.volumes import percentile_normalise
from fmcache.errors import DatasetError

KEY = "candi"
DEMOGRAPHICS = "_Basic_Demographics.csv"  # HC_Basic_Demographics.csv, BPDwithPsy_..., ...
COLUMNS = ("Subject", "Gender", "Age", "Handedness")
IMAGE, SEG = "_procimg.nii.gz", "_seg.nii.gz"
SEG_VARIANT = ".seg.nii.gz"  # how one script names the SS subjects' label maps (SS_084.seg.nii.gz)
# (CMA label value, class name) in class order: class id = position + 1
STRUCTURES = (
    (2, "left cerebral white matter"),
    (3, "left cerebral cortex"),
    (4, "left lateral ventricle"),
    (41, "right cerebral white matter"),
    (42, "right cerebral cortex"),
    (43, "right lateral ventricle"),
)
LABELS = {value: i + 1 for i, (value, _) in enumerate(STRUCTURES)}
AGE_THRESHOLD = 10
HANDS = {"RH": "right", "LH": "left", "R": "right", "L": "left", "Right": "right", "Left": "left",
         "right": "right", "left": "left"}
MIXED_HANDS = ("AH", "MH", "A", "Ambi", "ambi", "Ambidextrous", "ambidextrous", "Mixed", "mixed", "unknown", "Unknown")
SEXES = {"male": "male", "female": "female", "Male": "male", "Female": "female", "MALE": "male", "FEMALE": "female",
         "M": "male", "F": "female"}


def _demographic_files(root: Path) -> list[Path]:
    """Every ``<group>_Basic_Demographics.csv`` in --data or one or two folders below it (one per
    unpacked tarball)."""
    found = [p for pattern in (f"*{DEMOGRAPHICS}", f"*/*{DEMOGRAPHICS}", f"*/*/*{DEMOGRAPHICS}")
             for p in sorted(root.glob(pattern)) if p.is_file()]
    if not found:
        raise DatasetError(
            f"{KEY}: no <group>{DEMOGRAPHICS} (e.g. HC{DEMOGRAPHICS}) in {root} or the folders below it; unpack the "
            f"SchizBull_2008_<group>_segimg.tar.gz archives into --data"
        )
    return found


def _seg_name(folder: Path, subject: str) -> str | None:
    """The subject's label-map file name: ``<Subject>_seg.nii.gz``, else ``<Subject>.seg.nii.gz``."""
    for name in (f"{subject}{SEG}", f"{subject}{SEG_VARIANT}"):
        if (folder / subject / name).is_file():
            return name
    return None


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of CANDI Share, one row per subject (one T1 volume each).

    Returns
    -------
    RawTable
        id and subject (``Subject``), path (``<Subject>/<Subject>_procimg.nii.gz`` beside the
        group's demographics file), meta/mask (``_seg.nii.gz``, or ``.seg.nii.gz``), raw/sex (``Gender``),
        raw/age (``Age``), raw/handedness (``Handedness``).
    """
    frames = []
    for path in _demographic_files(root):
        df = read_csv(path, KEY)
        df.columns = [str(c).strip() for c in df.columns]
        require_columns(df, COLUMNS, key=KEY, file=path.name)
        df = df[df["Subject"].str.strip() != ""].copy()  # trailing empty lines of a spreadsheet export
        df["Subject"] = df["Subject"].str.strip()
        folder = path.parent.relative_to(root).as_posix()
        df["_dir"] = "" if folder == "." else f"{folder}/"
        segs = [_seg_name(path.parent, s) for s in df["Subject"]]
        missing = [s for s, seg in zip(df["Subject"], segs) if seg is None]
        if missing:
            raise DatasetError(f"{KEY}: {len(missing)} subject(s) of {path.name} have no {missing[0]}/{missing[0]}{SEG} "
                               f"in {path.parent}; unpack the whole archive beside its demographics file")
        df["_seg"] = segs
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    dup = df["Subject"][df["Subject"].duplicated()]
    if len(dup):
        raise DatasetError(f"{KEY}: Subject {dup.iloc[0]!r} is listed twice in the demographics files; keep one copy")
    base = df["_dir"] + df["Subject"] + "/" + df["Subject"]
    raw = pd.DataFrame({"id": df["Subject"], "subject": df["Subject"], "path": base + IMAGE})
    raw["meta/mask"] = df["_dir"] + df["Subject"] + "/" + df["_seg"]
    raw["raw/sex"] = blank_to_none(df["Gender"].str.strip())
    raw["raw/age"] = blank_to_none(df["Age"].str.strip())
    raw["raw/handedness"] = blank_to_none(df["Handedness"].str.strip())
    return RawTable(raw)


def volume(root: Path, row: pd.Series) -> Volume:
    """The subject's T1 (``_procimg``, MNI-normalised) on its grid (canonical RAS+)."""
    return read_nifti_volume(Path(root) / str(row["path"]))


def mask(root: Path, row: pd.Series) -> Volume:
    """``_seg``: the six chosen CMA labels as classes 1-6, every other label background."""
    return class_volume(Path(root) / str(row["meta/mask"]), LABELS, KEY)


def load(root: Path, row: pd.Series) -> np.ndarray:
    """Axial slices (inferior -> superior) in [0, 1]: 0.5 - 99.5 percentile min-max of the volume."""
    return percentile_normalise(volume(root, row).slices())


LAYOUT = """\
the four SchizBull_2008_<group>_segimg.tar.gz archives unpacked into --data
<data>/   (each archive's content here, or in a folder of its own)
  HC_Basic_Demographics.csv     Subject,Gender,Age,Handedness
                                e.g. HC_001,male,13.5,RH
  HC_001/HC_001_procimg.nii.gz  T1, normalised to MNI152 and cropped
  HC_001/HC_001_seg.nii.gz      CMA label map (FreeSurfer-style values;
                                SS_084.seg.nii.gz also read)
  BPDwithoutPsy_Basic_Demographics.csv, BPDwoPsy_030/..., BPDwithPsy_...,
  BPDwPsy_065/..., SS_Basic_Demographics.csv, SS_084/...
Classes (CMA value): 1 left cerebral white matter (2), 2 left cerebral cortex
(3), 3 left lateral ventricle (4), 4 right cerebral white matter (41), 5 right
cerebral cortex (42), 6 right lateral ventricle (43); other labels -> 0.
Subject: Subject (one scan each). Sex: Gender male / female (M / F). Age: old
if >= 10 years. Handedness: RH right, LH left; AH / MH / Ambi (mixed) ->
unknown.
Volume: canonical RAS+ with spacing (`Dataset.volume`); slices axial,
0.5-99.5 percentile min-max per volume -> [0, 1].
"""

SPEC = DatasetSpec(
    key=KEY,
    title="CANDI Share",
    modality="brain MRI",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical(SEXES, groups=("male", "female"), source=f"<group>{DEMOGRAPHICS} column Gender"),
        "age": threshold(AGE_THRESHOLD, source=f"<group>{DEMOGRAPHICS} column Age"),
        "handedness": categorical(HANDS, groups=("right", "left"), unknown=MIXED_HANDS,
                                  source=f"<group>{DEMOGRAPHICS} column Handedness"),
    },
    layout=LAYOUT,
    obtain=(
        "NITRC project candi_share (https://www.nitrc.org/projects/candi_share; account and terms of use): "
        "download the SchizBull_2008 <group>_segimg archives and unpack them into one folder"
    ),
    load=load,
    dim="3d",
    mask=mask,
    mask_classes=tuple(name for _, name in STRUCTURES),
    volume=volume,
)
