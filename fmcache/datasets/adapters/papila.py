"""PAPILA: colour fundus photographs of both eyes, glaucoma vs healthy (suspects excluded)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

KEY = "papila"
EYES = {"OD": "od", "OS": "os"}  # OD right eye, OS left eye: one spreadsheet each
CLINICAL = "ClinicalData"
IMAGES = "FundusImages"
RELEASE_DIR = re.compile(r"^PapilaDB-PAPILA-[0-9a-f]+$")
# the official sheets have a two-row header (row 2 names each column); data start on row 4
HEADER_ROW, FIRST_DATA_ROW = 1, 3
SHEET_COLUMNS = {"ID": 0, "Age": 1, "Gender": 2, "Diagnosis": 3}
ID_PATTERN = re.compile(r"^#?(\d+)$")
DIAGNOSES = ("healthy", "glaucoma", "suspect")  # Diagnosis codes 0, 1, 2
SUSPECT = {"exclude": None, "unknown": -1, "positive": 1}


def _base(root: Path) -> Path:
    """--data itself, or the unzipped PapilaDB-PAPILA-<commit>/ folder inside it."""
    if (root / CLINICAL).is_dir():
        return root
    found = sorted(p for p in root.iterdir() if p.is_dir() and RELEASE_DIR.match(p.name) and (p / CLINICAL).is_dir()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DatasetError(f"{KEY}: several PAPILA releases in {root} ({', '.join(p.name for p in found)}); pass --data one of them")
    raise DatasetError(
        f"{KEY}: {CLINICAL}/ not found in {root} or in a PapilaDB-PAPILA-<commit>/ folder inside it; "
        f"pass --data the unzipped release (with ClinicalData/ and FundusImages/)"
    )


def _number_text(v: object) -> str | None:
    """Cell value as text: 2.0 -> "2" (spreadsheets store codes as floats), blank -> None."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    s = str(v).strip()
    if s == "":
        return None
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() and "." in s else s


def _id_text(v: object) -> str | None:
    return None if v is None or pd.isna(v) else str(v).strip()


def _digits(v: str | None) -> str | None:
    m = ID_PATTERN.match(v or "")
    return m.group(1) if m else None


def _read_sheet(path: Path) -> pd.DataFrame:
    """ID, Age, Gender, Diagnosis from an official spreadsheet (two header rows, then an ID row)."""
    try:
        import openpyxl  # noqa: F401  (pandas needs it for .xlsx)
    except ImportError:
        raise DatasetError(f"{KEY}: reading {path.name} needs openpyxl (pip install openpyxl)") from None
    try:
        sheet = pd.read_excel(path, header=None, dtype=object)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{KEY}: cannot read {path}: {e.__class__.__name__}: {e} (file corrupt?)") from None
    if len(sheet) <= HEADER_ROW or sheet.shape[1] < len(SHEET_COLUMNS):
        raise DatasetError(f"{KEY}: {path.name} is too short to hold the official two-row header")
    header = {name: str(sheet.iat[HEADER_ROW, col]).strip() for name, col in SHEET_COLUMNS.items() if name != "ID"}
    wrong = [f"{n} (found {h!r})" for n, h in header.items() if h != n]
    if wrong:
        raise DatasetError(
            f"{KEY}: column {wrong[0]} not found in row 2 of {path.name}; the sheet must keep the official layout "
            f"(row 2: blank, Age, Gender, Diagnosis, ...; data from row 4)"
        )
    data = sheet.iloc[FIRST_DATA_ROW:, list(SHEET_COLUMNS.values())]
    data.columns = list(SHEET_COLUMNS)
    data = data.dropna(how="all")  # trailing blank rows exist in some copies
    return pd.DataFrame({c: [_id_text(v) if c == "ID" else _number_text(v) for v in data[c]] for c in data.columns})


def _read_csv_sheet(path: Path) -> pd.DataFrame:
    df = read_csv(path, KEY)
    require_columns(df, SHEET_COLUMNS, key=KEY, file=path.name)
    return pd.DataFrame({c: [_id_text(v) if c == "ID" else _number_text(v) for v in df[c]] for c in SHEET_COLUMNS})


def _clinical(base: Path, eye: str) -> tuple[pd.DataFrame, str]:
    """One eye's table; the official .xlsx, else a one-header .csv converted from it."""
    stem = f"patient_data_{EYES[eye]}"
    xlsx, csv = base / CLINICAL / f"{stem}.xlsx", base / CLINICAL / f"{stem}.csv"
    if xlsx.is_file():
        return _read_sheet(xlsx), xlsx.name
    if csv.is_file():
        return _read_csv_sheet(csv), csv.name
    raise DatasetError(f"{KEY}: {CLINICAL}/{stem}.xlsx not found in {base}; the release has one spreadsheet per eye")


def _image_paths(base: Path, root: Path, stems: pd.Series) -> list[str]:
    """FundusImages/<stem>.jpg (any case of the extension); a missing image keeps the expected name."""
    folder = base / IMAGES
    present = {p.stem: p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")} if folder.is_dir() else {}
    prefix = base.relative_to(root).as_posix()
    rel = [f"{IMAGES}/{present.get(s, s + '.jpg')}" for s in stems]
    return rel if prefix == "." else [f"{prefix}/{r}" for r in rel]


def _codes(values: pd.Series, choices: tuple[str, ...], file: str) -> np.ndarray:
    allowed = {str(i): i for i in range(len(choices))}
    bad = values[~values.isin(allowed)]
    if len(bad):
        raise DatasetError(
            f"{KEY}: unexpected Diagnosis value {bad.iloc[0]!r} in {file} (expected 0 healthy, 1 glaucoma, 2 suspect)"
        )
    return values.map(allowed).to_numpy().astype(np.int8)


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of PAPILA, one row per eye image; both eyes of a patient share the subject.

    Parameters
    ----------
    root
        ``--data``: the unzipped release (``ClinicalData/``, ``FundusImages/``) or the folder
        holding ``PapilaDB-PAPILA-<commit>/``.
    options
        ``labels`` (glaucoma | diagnosis), ``suspect`` (exclude | unknown | positive).

    Returns
    -------
    RawTable
        id (image stem, e.g. RET002OD), subject (the patient ID, e.g. #002), path,
        label/glaucoma or label/diagnosis, raw/sex, raw/age.
    """
    labels_opt = option(options, KEY, "labels", ("glaucoma", "diagnosis"), "glaucoma")
    suspect = option(options, KEY, "suspect", tuple(SUSPECT), "exclude")
    base = _base(root)
    parts = []
    for eye in EYES:
        table, file = _clinical(base, eye)
        digits = table["ID"].map(_digits)
        if digits.isna().any():
            bad = table["ID"][digits.isna()].iloc[0]
            raise DatasetError(f"{KEY}: ID {bad!r} in {file} is not like #002")
        table = table.assign(stem="RET" + digits + eye, subject="#" + digits, diagnosis=_codes(table["Diagnosis"], DIAGNOSES, file))
        parts.append(table)
    table = pd.concat(parts, ignore_index=True)
    if labels_opt == "glaucoma" and SUSPECT[suspect] is None:
        table = table[table["diagnosis"] != 2].reset_index(drop=True)

    raw = pd.DataFrame({"id": table["stem"], "subject": table["subject"], "path": _image_paths(base, root, table["stem"])})
    if labels_opt == "diagnosis":
        raw["label/diagnosis"] = table["diagnosis"].to_numpy()
    else:
        label = table["diagnosis"].to_numpy().copy()
        label[label == 2] = SUSPECT[suspect] if SUSPECT[suspect] is not None else -1
        raw["label/glaucoma"] = label.astype(np.int8)
    raw["raw/sex"] = table["Gender"].to_numpy(dtype=object)
    raw["raw/age"] = table["Age"].to_numpy(dtype=object)

    chosen = {"labels": labels_opt, "suspect": suspect}
    name = cache_name(KEY, chosen, {"labels": "glaucoma", "suspect": "exclude"})
    if labels_opt == "diagnosis":
        return RawTable(raw, name=name, task="multiclass", group_attrs={"classes": list(DIAGNOSES)})
    return RawTable(raw, name=name)


LAYOUT = """\
PapilaDB-PAPILA-<commit>/ with ClinicalData/ and FundusImages/;
ClinicalData/ holds patient_data_od.xlsx and patient_data_os.xlsx
<data>/   --data: the unzipped release, or the folder holding it
  ClinicalData/patient_data_od.xlsx   right eyes (OD)
  ClinicalData/patient_data_os.xlsx   left eyes (OS)
      row 2 of each: blank, Age, Gender, Diagnosis, dioptre_1, ...;
      row 3: ID; data from row 4 (#002, 47, 0, 2, ...)
      (patient_data_od.csv / _os.csv with one header
      ID,Age,Gender,Diagnosis,... are accepted instead)
  FundusImages/RET002OD.jpg, RET002OS.jpg, ...   (488 images, 244 patients)
  ExpertsSegmentations/, HelpCode/   not read
Subject: the patient ID (#002; both eyes share it). Label: Diagnosis 1
(glaucoma) vs 0 (healthy); suspects (2) are left out by default (option
suspect), or labels=diagnosis gives the three classes.
Sex: Gender 0 -> male, 1 -> female. Age: old if >= 60. Blank cells -> unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="PAPILA",
    modality="colour fundus",
    version="1",
    read=read,
    labels=("glaucoma",),
    task="binary",
    attributes={
        "sex": categorical(
            {"0": "male", "1": "female"}, groups=("male", "female"), source="patient_data_od/os.xlsx column Gender"
        ),
        "age": threshold(60, source="patient_data_od/os.xlsx column Age"),
    },
    layout=LAYOUT,
    obtain=(
        "Figshare article 14798004 (CC BY 4.0), https://doi.org/10.6084/m9.figshare.14798004 ; "
        "unzip the archive (PapilaDB-PAPILA-<commit>/)"
    ),
    prompts={
        "default": PromptSet(
            templates=("a fundus image of a {}", "a colour fundus photograph, diagnosis: {}", "a retinal photograph of the optic disc: {}"),
            classes=("normal", "glaucoma"),
            label="glaucoma",
        ),
        "diagnosis": PromptSet(
            templates=("a fundus image of a {} eye", "a colour fundus photograph of a {} eye"),
            classes=("healthy", "glaucomatous", "glaucoma suspect"),
            label="diagnosis",
        ),
    },
    options={
        "labels": "glaucoma (default): Diagnosis 1 vs 0; diagnosis: healthy / glaucoma / suspect (multi-class, index 0, 1, 2)",
        "suspect": "with labels=glaucoma, what suspects (Diagnosis 2) become: exclude (default, as the benchmark), "
        "unknown (kept, label -1), positive (label 1)",
    },
)
