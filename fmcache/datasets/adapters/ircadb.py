"""3D-IRCADb-01 (abdominal CT, 20 patients): six organs from the per-organ DICOM masks; sex.

Choices the scope leaves open, made here:

* The six organs: liver, spleen, left kidney, right kidney, lungs and portal vein, each
  read from its ``MASKS_DICOM/<organ>/`` folder under any of the names the release uses
  for it (``portalvein`` or ``portalvein1``; ``lungs``, or ``leftlung`` + ``rightlung``
  merged into one class; names compared without case). A patient without an organ's
  folder simply lacks that class. Where two organ masks overlap (the portal vein runs
  into the liver) the later class in this order wins, so the vessel is kept.
* A mask voxel is foreground when its stored value is not 0 (the release writes 0 / 255).
* Sex is not in the release's files as a table. It is read from the first
  ``PATIENT_DICOM`` slice's PatientSex when that is ``M`` or ``F``; otherwise from a
  user-supplied CSV with columns ``name`` (the patient folder, ``3Dircadb1.7``, or its
  number ``7``) and ``sex`` (``M`` / ``F`` / ``male`` / ``female``): the option
  ``sex_file`` names it, by default ``overview.csv`` in --data when there is one (the
  file FairMedFM made from the table on IRCAD's page); otherwise unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import read_csv, require_columns
from fmcache.datasets.attributes import categorical
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.datasets.volume_grid import Volume, read_dicom_volume
from fmcache.datasets.volumes import ABDOMEN_WINDOW, window
from fmcache.errors import DatasetError

KEY = "ircadb"
COLLECTION = "3Dircadb1"
PATIENT = re.compile(r"^3Dircadb1\.(\d+)$")
IMAGES, MASKS = "PATIENT_DICOM", "MASKS_DICOM"
SEX_FILE = "overview.csv"
SEX_COLUMNS = ("name", "sex")
# (class name, organ folder names meaning it, compared in lower case); later classes win overlaps
ORGANS = (
    ("liver", ("liver",)),
    ("spleen", ("spleen",)),
    ("left kidney", ("leftkidney",)),
    ("right kidney", ("rightkidney",)),
    ("lungs", ("lungs", "leftlung", "rightlung")),
    ("portal vein", ("portalvein", "portalvein1")),
)
SEXES = {"M": "male", "F": "female", "male": "male", "female": "female", "Male": "male", "Female": "female"}


def _collection(root: Path) -> Path:
    """The folder holding the 3Dircadb1.N patient folders: --data itself or its 3Dircadb1/."""
    for base in (root, root / COLLECTION):
        if base.is_dir() and any(PATIENT.match(p.name) and p.is_dir() for p in base.iterdir()):
            return base
    raise DatasetError(f"{KEY}: no 3Dircadb1.N patient folder in {root} or {root / COLLECTION}; unzip 3Dircadb1.zip "
                       f"into --data")


def _dicom_sex(folder: Path) -> str | None:
    """PatientSex of the series' first file when it says M or F; None otherwise."""
    import pydicom

    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
    if not files:
        return None
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds; the message names the file
        raise DatasetError(f"{KEY}: cannot read DICOM {files[0]}: {e.__class__.__name__}: {e} (file corrupt?)") from None
    sex = str(ds.get("PatientSex") or "").strip().upper()
    return sex if sex in ("M", "F") else None


def _natural(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _sex_table(root: Path, options: Mapping[str, str]) -> dict[str, str]:
    """Patient number -> sex from the user's CSV (the option sex_file, else overview.csv if present)."""
    name = options.get("sex_file")
    path = (Path(name).expanduser() if Path(name).expanduser().is_absolute() else root / name) if name else root / SEX_FILE
    if not path.is_file():
        if name:
            raise DatasetError(f"{KEY}: sex_file {path} not found")
        return {}
    df = read_csv(path, KEY)
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df, SEX_COLUMNS, key=KEY, file=str(path))
    out = {}
    for value, sex in zip(df["name"].str.strip(), df["sex"].str.strip()):
        m = PATIENT.match(value) or re.fullmatch(r"(\d+)", value)
        if m is None:
            raise DatasetError(f"{KEY}: name {value!r} in {path} is neither a patient folder (3Dircadb1.7) nor its number")
        out[str(int(m.group(1)))] = sex
    return out


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of 3D-IRCADb-01, one row per patient (one CT series each).

    Returns
    -------
    RawTable
        id and subject (the patient folder, e.g. ``3Dircadb1.7``), path (its ``PATIENT_DICOM``
        folder), raw/sex (DICOM PatientSex, else the sex CSV, else blank), meta/sex_source.
    """
    base = _collection(root)
    patients = sorted((p for p in base.iterdir() if p.is_dir() and PATIENT.match(p.name)),
                      key=lambda p: int(PATIENT.match(p.name).group(1)))  # type: ignore[union-attr]
    zipped = [p for p in patients if not (p / IMAGES).is_dir()]
    if zipped:
        raise DatasetError(f"{KEY}: {zipped[0] / IMAGES}/ not found; unzip {IMAGES}.zip and {MASKS}.zip inside each "
                           f"patient folder ({len(zipped)} patient(s) lack it)")
    table = _sex_table(root, options)
    sexes, sources = [], []
    for p in patients:
        dicom = _dicom_sex(p / IMAGES)
        number = PATIENT.match(p.name).group(1)  # type: ignore[union-attr]
        from_csv = table.get(str(int(number)))
        sexes.append(dicom or from_csv)
        sources.append("dicom" if dicom else "csv" if from_csv else "")
    rel = base.relative_to(root).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    names = [p.name for p in patients]
    raw = pd.DataFrame({"id": names, "subject": names, "path": [f"{prefix}{n}/{IMAGES}" for n in names]})
    raw["meta/mask"] = [f"{prefix}{n}/{MASKS}" for n in names]
    raw["meta/sex_source"] = sources
    raw["raw/sex"] = pd.Series(sexes, dtype=object)
    return RawTable(raw)


def volume(root: Path, row: pd.Series) -> Volume:
    """The patient's CT in HU on its grid (canonical RAS+); slices are files without extension."""
    return read_dicom_volume(Path(root) / str(row["path"]), any_name=True)


def organ_folders(masks: Path) -> dict[int, list[Path]]:
    """Class id -> the patient's organ folders that make it (see :data:`ORGANS`)."""
    if not masks.is_dir():
        raise DatasetError(f"{KEY}: {masks}/ not found; unzip {MASKS}.zip inside the patient folder")
    by_name = {p.name.lower(): p for p in masks.iterdir() if p.is_dir()}
    return {i + 1: [by_name[n] for n in names if n in by_name] for i, (_, names) in enumerate(ORGANS)}


def mask(root: Path, row: pd.Series) -> Volume:
    """The six organs as classes 1-6 from their MASKS_DICOM folders (later classes win overlaps)."""
    masks = Path(root) / str(row["meta/mask"])
    reference: tuple[Path, Volume] | None = None
    out = np.zeros(0, np.uint8)
    for cls, folders in organ_folders(masks).items():
        for folder in folders:
            organ = read_dicom_volume(folder, any_name=True, labels=True)
            if reference is None:
                reference, out = (folder, organ), np.zeros(organ.shape, np.uint8)
            elif not organ.same_grid(reference[1]):
                raise DatasetError(f"{KEY}: the mask series {folder} is not on the grid of {reference[0]} "
                                   f"(shape {organ.shape} vs {reference[1].shape}); replace it with the release's copy")
            out[organ.array != 0] = cls
    if reference is None:
        raise DatasetError(f"{KEY}: {masks} holds none of the organ folders "
                           f"{', '.join(n for _, names in ORGANS for n in names)}")
    return Volume(out, reference[1].affine)


def load(root: Path, row: pd.Series) -> np.ndarray:
    """Axial slices (inferior -> superior) in [0, 1]: HU through the abdominal window [-160, 240]."""
    return window(volume(root, row).slices(), *ABDOMEN_WINDOW)


LAYOUT = """\
3Dircadb1.zip unzipped, and the zips inside each patient folder unzipped
<data>/   --data: the folder holding 3Dircadb1/, or 3Dircadb1/ itself
  3Dircadb1/3Dircadb1.1/PATIENT_DICOM/image_0, image_1, ...  CT slices
                        (DICOM files without extension)
  3Dircadb1/3Dircadb1.1/MASKS_DICOM/<organ>/image_0, ...   0 / 255 per organ
                        (liver, spleen, leftkidney, rightkidney, lungs or
                        leftlung + rightlung, portalvein or portalvein1, ...)
  3Dircadb1/3Dircadb1.1/LABELLED_DICOM/, MESHES_VTK/        not read
  overview.csv   optional: name,sex (e.g. 3Dircadb1.1,F): the sex of patients
                 whose DICOM PatientSex is empty (option sex_file names
                 another file)
Classes: 1 liver, 2 spleen, 3 left kidney, 4 right kidney, 5 lungs (left and
right merged), 6 portal vein; where masks overlap the later class wins.
Subject: the patient folder (one CT each). Sex: DICOM PatientSex M / F, else
the sex file, else unknown.
Volume: canonical RAS+ with spacing (`Dataset.volume`); slices axial, HU
through the abdominal window [-160, 240] (level 40, width 400) -> [0, 1].
"""

SPEC = DatasetSpec(
    key=KEY,
    title="3D-IRCADb-01",
    modality="abdominal CT",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical(SEXES, groups=("male", "female"), unknown=("O",),
                           source=f"{IMAGES} PatientSex, else {SEX_FILE} column sex"),
    },
    layout=LAYOUT,
    obtain=(
        "IRCAD (https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/): download "
        "3Dircadb1.zip, unzip it and the PATIENT_DICOM / MASKS_DICOM zips in every patient folder; the "
        "per-patient sex is in the table on that page (write it to overview.csv as name,sex)"
    ),
    load=load,
    dim="3d",
    mask=mask,
    mask_classes=tuple(name for name, _ in ORGANS),
    volume=volume,
    options={"sex_file": f"CSV with columns name,sex giving each patient's sex when its DICOM PatientSex is empty "
                         f"(default: {SEX_FILE} in --data, if present)"},
)
