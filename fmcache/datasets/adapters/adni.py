"""ADNI 1.5T (ADNI1 screening, T1 MPRAGE, NIfTI): Alzheimer's disease vs cognitively normal, 2.5D."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, PromptSet, RawTable
from fmcache.datasets.volumes import is_nifti, load_nifti, percentile_normalise, slice_minmax_normalise
from fmcache.errors import DatasetError

KEY = "adni"
COLUMNS = ("Image Data ID", "Subject", "Group", "Sex", "Age", "Description")
# the header IDA writes into every collection export, in order
HEADER = ("Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type",
          "Acq Date", "Format", "Downloaded")
LABEL = {"CN": 0, "AD": 1}
EXCLUDED = ("MCI",)  # neither class of the AD-vs-CN task
PLANES = ("axial", "coronal", "sagittal")
INTENSITIES = ("percentile", "slice_minmax")
_IMAGE_DIR = re.compile(r"^I\d+$")
_IMAGE_FILE = re.compile(r"_(I\d+)\.nii(\.gz)?$", re.IGNORECASE)


def _collection_csvs(root: Path) -> list[Path]:
    """CSV files in root whose first header cell is 'Image Data ID' (IDA collection exports)."""
    found = []
    for p in sorted(root.glob("*.csv")):
        try:
            with open(p, encoding="utf-8-sig", errors="replace") as f:
                first = f.readline()
        except OSError:
            continue
        if first.split(",", 1)[0].strip().strip('"') == HEADER[0]:
            found.append(p)
    return found


def _collection(root: Path, name: str) -> tuple[pd.DataFrame, str]:
    if name:
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{KEY}: collection file {name} not found in {root}")
    else:
        found = _collection_csvs(root)
        if not found:
            raise DatasetError(
                f"{KEY}: no collection CSV in {root}: expected the file IDA exports with the download, e.g. "
                f"ADNI1_Screening_1.5T_2_20_2024.csv, whose header starts with {','.join(HEADER[:4])}"
            )
        if len(found) > 1:
            raise DatasetError(
                f"{KEY}: several collection CSVs in {root} ({', '.join(p.name for p in found)}); "
                f"choose one with the option collection=<file name>"
            )
        path = found[0]
    df = read_csv(path, KEY)
    require_columns(df, COLUMNS, key=KEY, file=path.name)
    for c in COLUMNS:
        df[c] = df[c].str.strip()
    return df, path.name


def _labels(group: pd.Series, file: str) -> tuple[pd.Series, np.ndarray]:
    """(rows to keep, AD=1 / CN=0 codes of those rows); MCI rows are dropped."""
    unknown = sorted(set(group) - set(LABEL) - set(EXCLUDED))
    if unknown:
        raise DatasetError(
            f"{KEY}: unexpected Group {unknown[0]!r} in {file} (known: {', '.join([*LABEL, *EXCLUDED])})"
        )
    keep = group.isin(list(LABEL))
    return keep, group[keep].map(LABEL).to_numpy().astype(np.int8)


def _image_id(path: Path, root: Path) -> str | None:
    """The image id of a NIfTI file: its nearest I<digits> folder, else the file name's _I<digits>."""
    for parent in path.relative_to(root).parents:
        if _IMAGE_DIR.match(parent.name):
            return parent.name
    m = _IMAGE_FILE.search(path.name)
    return m.group(1) if m else None


def _image_index(root: Path) -> dict[str, str]:
    """image id -> NIfTI path relative to root, over the whole tree (any depth below I<id>)."""
    index: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not (is_nifti(p.name) and p.is_file()):
            continue
        image = _image_id(p, root)
        if image is None:
            continue
        rel = p.relative_to(root).as_posix()
        if image in index:
            raise DatasetError(f"{KEY}: two NIfTI files for image {image}: {index[image]} and {rel}; keep one")
        index[image] = rel
    return index


def _paths(ids: pd.Series, root: Path) -> pd.Series:
    paths = ids.map(_image_index(root))
    if paths.isna().any():
        missing = ids[paths.isna()]
        raise DatasetError(
            f"{KEY}: {len(missing)} image(s) of the collection not found as NIfTI below {root}, e.g. {missing.iloc[0]} "
            f"(expected ADNI/<Subject>/<Description>/<date>/{missing.iloc[0]}/...{missing.iloc[0]}.nii); "
            f"download the collection in NIfTI format and unpack it into --data"
        )
    return paths


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of an ADNI collection: one row per AD or CN image, MCI left out.

    Parameters
    ----------
    root
        ``--data``: the folder holding the collection CSV and the unpacked ``ADNI/`` tree.
    options
        ``collection`` (the CSV's file name, needed only when several are present),
        ``plane`` (axial | coronal | sagittal), ``intensity`` (percentile | slice_minmax).

    Returns
    -------
    RawTable
        id (Image Data ID), subject (Subject, never the image id: a subject has several
        images), path (the .nii file), label/AD, raw/sex, raw/age, meta/plane,
        meta/intensity.
    """
    plane = option(options, KEY, "plane", PLANES, "axial")
    intensity = option(options, KEY, "intensity", INTENSITIES, "percentile")
    df, file = _collection(root, str(options.get("collection", "")).strip())
    keep, codes = _labels(df["Group"], file)
    df = df[keep].reset_index(drop=True)
    dup = df["Image Data ID"][df["Image Data ID"].duplicated()]
    if len(dup):
        raise DatasetError(f"{KEY}: Image Data ID {dup.iloc[0]!r} occurs twice in {file}")
    raw = pd.DataFrame({"id": df["Image Data ID"], "subject": df["Subject"], "path": _paths(df["Image Data ID"], root)})
    raw["label/AD"] = codes
    raw["raw/sex"] = blank_to_none(df["Sex"])
    raw["raw/age"] = blank_to_none(df["Age"])
    # the slicing plane and the intensity scaling change the pixels, so `load` must see them
    raw["meta/plane"] = plane
    raw["meta/intensity"] = intensity
    chosen = {"plane": plane, "intensity": intensity}
    name = cache_name(KEY, chosen, {"plane": "axial", "intensity": "percentile"})
    return RawTable(raw, name=name, group_attrs={"collection_file": file})


def load(root: Path, row: pd.Series) -> np.ndarray:
    """The T1 volume as float32 ``(slices, H, W)`` in [0, 1].

    Reoriented to RAS+ and cut in the ``plane`` option's plane (axial by default: inferior
    -> superior, anterior at the top), then min-max scaled between the volume's 0.5th and
    99.5th percentiles (``intensity`` slice_minmax: each slice between its own minimum and
    maximum). Not yet resampled to 32 slices.
    """
    plane = str(row.get("meta/plane", "axial"))
    volume = load_nifti(Path(root) / str(row["path"]), plane=plane)  # type: ignore[arg-type]
    if str(row.get("meta/intensity", "percentile")) == "slice_minmax":
        return slice_minmax_normalise(volume)
    return percentile_normalise(volume)


LAYOUT = """\
The IDA collection CSV beside the unpacked ADNI/ tree of NIfTI files
<data>/
  ADNI1_Screening_1.5T_2_20_2024.csv
      Image Data ID,Subject,Group,Sex,Age,Visit,Modality,Description,Type,
      Acq Date,Format,Downloaded  (any file name; the header is recognised)
  ADNI/<Subject>/<Description, non-alphanumerics as _>/
    <YYYY-MM-DD_HH_MM_SS.0>/I<image id>/<file>.nii
      (.nii.gz also read; files may sit one folder deeper; an image is found
      by its I<id> folder or _I<id> suffix)
  where <file> is
    ADNI_<Subject>_MR_<Description>_Br_<timestamp>_S<series id>_I<image id>
With several collection CSVs in --data, name one with the option
collection=<file>.
Label: AD = Group AD (1) vs CN (0); MCI images are left out; any other Group
is an error.
Subject: Subject (e.g. 941_S_1363); a subject's images (Scaled / Scaled_2,
MPR / MPR-R repeats) stay on one side of the split. Sex: M / F. Age: old if
>= 75.
Volume: reoriented to RAS+, axial slices inferior -> superior (option plane),
intensities min-max scaled between the 0.5th and 99.5th percentiles of the
volume (option intensity=slice_minmax: each slice between its own minimum and
maximum, as FairMedFM's datasets/ADNI.py does).
"""

SPEC = DatasetSpec(
    key=KEY,
    title="ADNI 1.5T",
    modality="brain MRI",
    version="1",
    read=read,
    labels=("AD",),
    task="binary",
    attributes={
        "sex": categorical(
            {"M": "male", "F": "female"},
            groups=("male", "female"),
            source="collection CSV column Sex",
        ),
        "age": threshold(75, source="collection CSV column Age"),
    },
    layout=LAYOUT,
    obtain=(
        "ADNI through LONI IDA (https://ida.loni.usc.edu; application and data use agreement, not "
        "redistributable): search the ADNI1 'Screening 1.5T' standardized collection, download it as NIfTI "
        "together with its CSV, and unpack both into one folder"
    ),
    prompts={
        "default": PromptSet(
            templates=("a brain MRI of {}", "a T1-weighted brain MRI showing {}", "an MRI scan of the brain with {}"),
            classes=("normal", "Alzheimer's disease"),
            label="AD",
        ),
    },
    load=load,
    dim="3d",
    options={
        "collection": "the collection CSV's file name; needed only when --data holds several",
        "plane": "axial (default): slices inferior -> superior; coronal: posterior -> anterior; "
        "sagittal: left -> right",
        "intensity": "percentile (default): min-max between the volume's 0.5th and 99.5th percentiles; "
        "slice_minmax: each slice min-max scaled on its own, as FairMedFM's datasets/ADNI.py get_img does",
    },
)
