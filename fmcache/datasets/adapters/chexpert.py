"""CheXpert v1.0 (small or full): chest X-rays, `No Finding` or the 14 observations.

Also holds the pieces that MIMIC-CXR shares with CheXpert (the observation names, the
label-value parsing and the uncertain-label policy), since MIMIC-CXR-JPG is labelled with
the same CheXpert labeler.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.attributes import categorical, keyword, threshold
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

# train.csv order; MIMIC-CXR's label file lists the same names alphabetically, and we keep
# this order for both so that label columns line up between the two chest X-ray datasets
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
UNCERTAIN = {"zero": 0, "one": 1, "unknown": -1}

FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
DEMO_FILES = ("CHEXPERT DEMO.xlsx", "CHEXPERT_DEMO.xlsx", "CHEXPERT DEMO.csv", "CHEXPERT_DEMO.csv")
DEMO_SHEET = "CheXpert Demo 11-13"
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral")
RACE_UNKNOWN = ("Unknown", "Patient Refused", "Race and Ethnicity Unknown")

CXR_PROMPTS = {
    "default": PromptSet(
        templates=("a chest X-ray of a {}", "a chest radiograph of a {} patient", "a {} chest X-ray"),
        classes=("diseased", "normal"),  # label value 0 (a finding) and 1 (No Finding)
        label="No Finding",
    )
}


# ---------------------------------------------------------------- shared with MIMIC-CXR


def label_codes(values: pd.Series, *, uncertain: str, key: str, source: str) -> np.ndarray:
    """CheXpert-labeler values as int8: 1.0 -> 1, 0.0 or empty -> 0, -1.0 -> the uncertain policy.

    Empty means "not mentioned in the report"; the benchmark counts it as negative.
    """
    text = values.fillna("").astype(str).str.strip()
    num = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (text != "") & ~num.isin([-1.0, 0.0, 1.0])
    if bad.any():
        raise DatasetError(
            f"{key}: unexpected label value {text[bad].iloc[0]!r} in {source}; expected 1.0, 0.0, -1.0 or empty"
        )
    num = num.fillna(0.0).replace(-1.0, float(UNCERTAIN[uncertain]))
    return num.to_numpy().astype(np.int8)


def label_columns(table: pd.DataFrame, names: Iterable[str], *, uncertain: str, key: str, file: str) -> dict[str, np.ndarray]:
    """``label/<name>`` -> codes for each named column of ``table`` (see :func:`label_codes`)."""
    return {f"label/{n}": label_codes(table[n], uncertain=uncertain, key=key, source=f"{file} column {n!r}") for n in names}


# ---------------------------------------------------------------- CheXpert


def _base(root: Path) -> Path:
    """The CheXpert folder: --data itself or its CheXpert-v1.0-small / CheXpert-v1.0 child."""
    if (root / "train.csv").is_file():
        return root
    for name in FOLDERS:
        if (root / name / "train.csv").is_file():
            return root / name
    raise DatasetError(
        f"chexpert: train.csv not found in {root} or in {root}/{FOLDERS[0]} or {root}/{FOLDERS[1]}; "
        f"pass --data the folder that holds {FOLDERS[0]}/ (or that folder itself)"
    )


def _read_split(base: Path, name: str, labels: tuple[str, ...]) -> pd.DataFrame:
    path = base / name
    if not path.is_file():
        raise DatasetError(f"chexpert: {name} not found in {base}; the release has both train.csv and valid.csv")
    df = read_csv(path, "chexpert")
    require_columns(df, (*CSV_COLUMNS, *labels), key="chexpert", file=name)
    return df


def _relative(path_col: pd.Series, base: Path, root: Path) -> tuple[pd.Series, pd.Series]:
    """(id, path) from the `Path` column, which starts with the release folder's own name.

    The id drops that folder so the small and the full release give the same ids; the path
    is relative to --data, wherever the folder sits below it.
    """
    inner = path_col.str.strip().str.split("/", n=1).str[1]
    if inner.isna().any():
        bad = path_col[inner.isna()].iloc[0]
        raise DatasetError(f"chexpert: Path {bad!r} does not look like CheXpert-v1.0-small/train/patientNNNNN/...")
    prefix = base.relative_to(root).as_posix()
    path = inner if prefix == "." else prefix + "/" + inner
    return inner, path


def _subjects(path_col: pd.Series) -> pd.Series:
    subject = path_col.str.extract(r"/(patient\d+)/", expand=False)
    if subject.isna().any():
        bad = path_col[subject.isna()].iloc[0]
        raise DatasetError(f"chexpert: no patientNNNNN folder in Path {bad!r}")
    return subject


def _demo_file(root: Path, base: Path) -> Path | None:
    # the DEMO file is a separate download, usually saved beside the release folder, which
    # is base.parent even when --data names the release folder itself
    for folder in dict.fromkeys((root, base, base.parent)):
        for name in DEMO_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _read_demo(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        demo = read_csv(path, "chexpert")
    else:
        try:
            import openpyxl  # noqa: F401  (pandas needs it for .xlsx)
        except ImportError:
            raise DatasetError(
                f"chexpert: reading {path.name} needs openpyxl (pip install openpyxl), "
                f"or save the sheet {DEMO_SHEET!r} as {path.with_suffix('.csv').name}"
            ) from None
        try:
            book = pd.ExcelFile(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DatasetError(f"chexpert: cannot read {path}: {e.__class__.__name__}: {e} (file corrupt?)") from None
        if DEMO_SHEET not in book.sheet_names:
            raise DatasetError(
                f"chexpert: {path.name} has no sheet {DEMO_SHEET!r} (sheets: {', '.join(map(str, book.sheet_names))}); "
                f"rename the sheet or save it as {path.with_suffix('.csv').name}"
            )
        demo = book.parse(DEMO_SHEET, dtype=str)
    require_columns(demo, ("PATIENT", "PRIMARY_RACE"), key="chexpert", file=path.name)
    demo["PATIENT"] = demo["PATIENT"].astype(str).str.strip()
    return demo.drop_duplicates("PATIENT")[["PATIENT", "PRIMARY_RACE"]]


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of CheXpert: train.csv and valid.csv together (our splits come later).

    Parameters
    ----------
    root
        ``--data``: the folder holding ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``), or
        that folder itself. ``CHEXPERT DEMO.xlsx`` (race) is looked for beside and inside
        the release folder.
    options
        ``labels`` (no_finding | all), ``uncertain`` (zero | one | unknown),
        ``views`` (all | frontal).

    Returns
    -------
    RawTable
        id, subject, path, label/<observation>, raw/sex, raw/age and, when the DEMO file is
        present, raw/race.
    """
    labels_opt = option(options, "chexpert", "labels", ("no_finding", "all"), "no_finding")
    uncertain = option(options, "chexpert", "uncertain", tuple(UNCERTAIN), "zero")
    views = option(options, "chexpert", "views", ("all", "frontal"), "all")
    labels = OBSERVATIONS if labels_opt == "all" else ("No Finding",)

    base = _base(root)
    parts = {name: _read_split(base, name, labels) for name in ("train.csv", "valid.csv")}
    labelled = [
        pd.DataFrame(label_columns(df, labels, uncertain=uncertain, key="chexpert", file=name)) for name, df in parts.items()
    ]
    table = pd.concat(parts.values(), ignore_index=True)
    label_table = pd.concat(labelled, ignore_index=True)
    if views == "frontal":
        keep = (table["Frontal/Lateral"].str.strip() == "Frontal").to_numpy()
        table, label_table = table[keep].reset_index(drop=True), label_table[keep].reset_index(drop=True)

    ids, paths = _relative(table["Path"], base, root)
    raw = pd.DataFrame({"id": ids, "subject": _subjects(table["Path"]), "path": paths})
    raw = pd.concat([raw, label_table], axis=1)
    raw["raw/sex"] = blank_to_none(table["Sex"])
    raw["raw/age"] = blank_to_none(table["Age"])
    group_attrs = {}
    demo_path = _demo_file(root, base)
    if demo_path is not None:
        race = _read_demo(demo_path).set_index("PATIENT")["PRIMARY_RACE"]
        raw["raw/race"] = blank_to_none(raw["subject"].map(race))
        group_attrs["demographics_file"] = demo_path.name

    chosen = {"labels": labels_opt, "uncertain": uncertain, "views": views}
    return RawTable(
        raw,
        name=cache_name("chexpert", chosen, {"labels": "no_finding", "uncertain": "zero", "views": "all"}),
        task="multilabel" if labels_opt == "all" else None,
        group_attrs=group_attrs,
    )


def _zero_is_unknown(rule: AttributeRule) -> AttributeRule:
    """Age 0 in CheXpert (3 adult-study images without demographics) is a placeholder."""

    def assign(values: pd.Series) -> pd.Series:
        groups = rule.assign(values)
        zero = pd.to_numeric(values, errors="coerce") == 0
        return groups.astype(object).where(~zero.to_numpy(), None)

    return replace(rule, assign=assign, description=rule.description + "; 0 -> unknown (a placeholder in train.csv)")


LAYOUT = """\
CheXpert-v1.0-small/ (or CheXpert-v1.0/) with train.csv, valid.csv and images;
CHEXPERT DEMO.xlsx beside it
<data>/   --data: this folder, or CheXpert-v1.0-small/ itself
  CheXpert-v1.0-small/
      (full-resolution release: CheXpert-v1.0/, same inside)
    train.csv
        Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...,Support Devices
    valid.csv
        same header; joins the pool, our own splits come later
    train/patientNNNNN/studyK/viewJ_frontal.jpg   (and viewJ_lateral.jpg)
    valid/patientNNNNN/studyK/viewJ_frontal.jpg
  CHEXPERT DEMO.xlsx
      optional (race), sheet 'CheXpert Demo 11-13', columns
      PATIENT,GENDER,AGE_AT_CXR,PRIMARY_RACE,ETHNICITY; also accepted:
      CHEXPERT_DEMO.xlsx, CHEXPERT DEMO.csv, CHEXPERT_DEMO.csv, beside
      or inside CheXpert-v1.0-small/. Without it, race is left out.
Label: `No Finding` (1 = normal); empty cells (not mentioned) -> 0 as in the
benchmark; -1.0 (uncertain) follows the `uncertain` option. Subject: the
patientNNNNN folder in Path.
Sex from train.csv `Sex` (Unknown -> unknown; DEMO's GENDER is not used). Age
from `Age` (per study; 0 -> unknown: it marks 3 images without demographics).
Race from DEMO PRIMARY_RACE: white if it contains "White"; Unknown, Patient
Refused, Race and Ethnicity Unknown and blanks -> unknown; patients without a
DEMO row -> unknown.
"""

SPEC = DatasetSpec(
    key="chexpert",
    title="CheXpert v1.0",
    modality="chest X-ray",
    version="1",
    read=read,
    labels=("No Finding",),
    task="binary",
    attributes={
        "sex": categorical(
            {"Male": "male", "Female": "female"},
            groups=("male", "female"),
            unknown=("Unknown",),
            source="train.csv / valid.csv column Sex",
        ),
        "age": _zero_is_unknown(threshold(60, source="train.csv / valid.csv column Age")),
        "race": keyword(
            "White",
            groups=("white", "non-white"),
            unknown=RACE_UNKNOWN,
            source=f"CHEXPERT DEMO.xlsx sheet {DEMO_SHEET!r} column PRIMARY_RACE",
        ),
    },
    layout=LAYOUT,
    obtain=(
        "Stanford AIMI shared datasets (free registration, research-use agreement), linked from "
        "https://stanfordmlgroup.github.io/competitions/chexpert/ ; the race file 'CHEXPERT DEMO.xlsx' "
        "is the separate 'CheXpert demographic data' download on AIMI"
    ),
    prompts=CXR_PROMPTS,
    options={
        "labels": "no_finding (default): the `No Finding` label; all: the 14 observations (multi-label)",
        "uncertain": "what -1.0 (uncertain) becomes: zero (default), one, or unknown (-1, masked)",
        "views": "all (default, as the benchmark): every image; frontal: Frontal/Lateral == Frontal only",
    },
)
