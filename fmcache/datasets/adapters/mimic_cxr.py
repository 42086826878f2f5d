"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 with sex, age and race from MIMIC-IV."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.adapters._common import blank_to_none, cache_name, option, read_csv, require_columns
from fmcache.datasets.adapters.chexpert import CXR_PROMPTS, OBSERVATIONS, UNCERTAIN, label_columns
from fmcache.datasets.attributes import categorical, is_blank, keyword, threshold
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.errors import DatasetError

KEY = "mimic_cxr"
FRONTAL = ("PA", "AP")
RACE_UNKNOWN = ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER")
# where MIMIC-IV's patients / admissions tables are looked for, below --data, in order
MIMIC_IV_DIRS = (".", "hosp", "mimic-iv/hosp", "core", "mimic-iv/core", "mimic-iv")


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The first of ``stem.csv.gz`` / ``stem.csv`` that exists, over the stems in order."""
    for stem in stems:
        for suffix in (".csv.gz", ".csv"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def _cxr_table(root: Path, what: str) -> tuple[pd.DataFrame, str]:
    # the label files keep the 2.0.0 prefix in release 2.1.0; accept either prefix for all
    stems = tuple(f"mimic-cxr-{v}-{what}" for v in ("2.0.0", "2.1.0"))
    path = _find(root, stems)
    if path is None:
        raise DatasetError(
            f"{KEY}: {stems[0]}.csv.gz not found in {root} (also tried .csv and the 2.1.0 prefix); "
            f"pass --data the MIMIC-CXR-JPG folder that holds files/ and the mimic-cxr-*.csv.gz tables"
        )
    return read_csv(path, KEY), path.name


def _mimic_iv_dir(root: Path, options: Mapping[str, str]) -> Path:
    if options.get("mimic_iv"):
        folders = [Path(str(options["mimic_iv"])).expanduser()]
        folders = [f if f.is_absolute() else root / f for f in folders]
    else:
        folders = [root / d for d in MIMIC_IV_DIRS]
    for folder in folders:
        if _find(folder, ("patients",)) is not None:
            return folder
    tried = ", ".join(str(f) for f in folders)
    raise DatasetError(
        f"{KEY}: MIMIC-IV patients.csv(.gz) not found (looked in {tried}); copy MIMIC-IV's hosp/patients.csv.gz "
        f"and hosp/admissions.csv.gz to <data>/mimic-iv/hosp/, or pass the option mimic_iv=FOLDER"
    )


def _patients(folder: Path) -> pd.DataFrame:
    path = _find(folder, ("patients",))
    df = read_csv(path, KEY)
    require_columns(df, ("subject_id", "gender", "anchor_age"), key=KEY, file=path.name)
    return df.drop_duplicates("subject_id").set_index("subject_id")


def _race(folder: Path) -> pd.Series | None:
    """One race per subject: the most frequent known value over their admissions.

    Ties go to the value of the earliest admission (by admittime) among the tied ones; a
    subject with only unknown spellings keeps their earliest admission's spelling (unknown).
    The reference code takes the first row per subject, whatever it says.
    """
    path = _find(folder, ("admissions",))
    if path is None:
        return None
    adm = read_csv(path, KEY)
    column = "race" if "race" in adm.columns else "ethnicity"  # MIMIC-IV v1.0 spelling
    require_columns(adm, ("subject_id", "admittime", column), key=KEY, file=path.name)
    adm = adm.rename(columns={column: "race"})
    adm["race"] = adm["race"].str.strip()
    adm = adm.sort_values(["subject_id", "admittime"], kind="stable")
    adm["order"] = np.arange(len(adm))
    unknown = adm["race"].str.upper().isin(RACE_UNKNOWN) | (adm["race"] == "")
    known = adm[~unknown].groupby(["subject_id", "race"], sort=False).agg(n=("order", "size"), first=("order", "min"))
    best = known.reset_index().sort_values(["subject_id", "n", "first"], ascending=[True, False, True])
    race = best.drop_duplicates("subject_id").set_index("subject_id")["race"]
    fallback = adm.drop_duplicates("subject_id").set_index("subject_id")["race"]
    return race.combine_first(fallback)


def _labels(root: Path, meta: pd.DataFrame, labels: tuple[str, ...], uncertain: str) -> pd.DataFrame:
    table, name = _cxr_table(root, "chexpert")
    require_columns(table, ("subject_id", "study_id", *labels), key=KEY, file=name)
    dup = table.duplicated(["subject_id", "study_id"])
    if dup.any():
        study = table.loc[dup, "study_id"].iloc[0]
        raise DatasetError(f"{KEY}: study {study} has more than one row in {name}; the file must have one row per study")
    # studies without a row get empty labels, i.e. 0, as in the benchmark
    joined = meta[["subject_id", "study_id"]].merge(table, on=["subject_id", "study_id"], how="left")
    return pd.DataFrame(label_columns(joined, labels, uncertain=uncertain, key=KEY, file=name))


def _image_paths(meta: pd.DataFrame) -> pd.Series:
    subject = "p" + meta["subject_id"]
    return "files/" + subject.str[:3] + "/" + subject + "/s" + meta["study_id"] + "/" + meta["dicom_id"] + ".jpg"


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of MIMIC-CXR-JPG, one row per image, demographics joined from MIMIC-IV.

    Parameters
    ----------
    root
        ``--data``: the MIMIC-CXR-JPG folder holding ``files/`` and the ``mimic-cxr-*``
        tables; MIMIC-IV's ``patients`` and ``admissions`` tables are found below it (see
        the layout) or in the folder given by the ``mimic_iv`` option.
    options
        ``labels`` (no_finding | all), ``uncertain`` (zero | one | unknown),
        ``views`` (all | frontal), ``cohort`` (all | demographics), ``mimic_iv`` (folder).

    Returns
    -------
    RawTable
        id (dicom_id), subject (subject_id), path, label/<observation>, raw/sex, raw/age and,
        when admissions is present, raw/race.
    """
    labels_opt = option(options, KEY, "labels", ("no_finding", "all"), "no_finding")
    uncertain = option(options, KEY, "uncertain", tuple(UNCERTAIN), "zero")
    views = option(options, KEY, "views", ("all", "frontal"), "all")
    cohort = option(options, KEY, "cohort", ("all", "demographics"), "all")
    labels = OBSERVATIONS if labels_opt == "all" else ("No Finding",)
    if not (root / "files").is_dir():
        raise DatasetError(
            f"{KEY}: no files/ folder in {root}; pass --data the MIMIC-CXR-JPG folder that holds files/p10 ... p19"
        )

    meta, meta_name = _cxr_table(root, "metadata")
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), key=KEY, file=meta_name)
    for c in ("dicom_id", "subject_id", "study_id", "ViewPosition"):
        meta[c] = meta[c].str.strip()
    if views == "frontal":
        meta = meta[meta["ViewPosition"].isin(FRONTAL)].reset_index(drop=True)
    iv_dir = _mimic_iv_dir(root, options)
    patients = _patients(iv_dir)
    if cohort == "demographics":
        # FairMedFM's pre-processing notebook keeps only rows with a gender after its join
        # with patients (its anchor_age and race filters are commented out); every
        # MIMIC-IV patient has both gender and anchor_age, so this also removes unknown ages
        meta = meta[~meta["subject_id"].map(patients["gender"]).map(is_blank)].reset_index(drop=True)

    raw = pd.DataFrame({"id": meta["dicom_id"], "subject": meta["subject_id"], "path": _image_paths(meta)})
    raw = pd.concat([raw, _labels(root, meta, labels, uncertain)], axis=1)
    # with cohort=all, subjects absent from this MIMIC-IV version stay in, with unknown sex and age
    raw["raw/sex"] = blank_to_none(meta["subject_id"].map(patients["gender"]))
    raw["raw/age"] = blank_to_none(meta["subject_id"].map(patients["anchor_age"]))
    race = _race(iv_dir)
    if race is not None:
        raw["raw/race"] = blank_to_none(meta["subject_id"].map(race))

    chosen = {"labels": labels_opt, "uncertain": uncertain, "views": views, "cohort": cohort}
    defaults = {"labels": "no_finding", "uncertain": "zero", "views": "all", "cohort": "all"}
    return RawTable(
        raw,
        name=cache_name(KEY, chosen, defaults),
        task="multilabel" if labels_opt == "all" else None,
        group_attrs={"metadata_file": meta_name},
    )


LAYOUT = """\
MIMIC-CXR-JPG folder with files/ and the mimic-cxr-2.0.0-*.csv.gz tables;
MIMIC-IV patients/admissions in mimic-iv/hosp/
<data>/
    --data: the MIMIC-CXR-JPG release folder (e.g. .../mimic-cxr-jpg/2.0.0)
  files/p10/p10000032/s50414267/<dicom_id>.jpg
      (p10 ... p19; the path is built from the metadata)
  mimic-cxr-2.0.0-metadata.csv.gz
      dicom_id,subject_id,study_id,...,ViewPosition,...
  mimic-cxr-2.0.0-chexpert.csv.gz
      subject_id,study_id,Atelectasis,...,Support Devices
  mimic-cxr-2.0.0-split.csv.gz, -negbio.csv.gz, IMAGE_FILENAMES   (not read)
  mimic-iv/hosp/patients.csv.gz
      subject_id,gender,anchor_age,...   (MIMIC-IV, required)
  mimic-iv/hosp/admissions.csv.gz
      subject_id,hadm_id,admittime,...,race,...  (optional: race)
The two MIMIC-IV tables may also sit directly in <data>/,
in <data>/hosp/, <data>/core/, <data>/mimic-iv/core/ (v1.0)
or <data>/mimic-iv/, or in any folder named by the option mimic_iv=FOLDER;
plain .csv is accepted for every table, as is the 2.1.0 file prefix.
Label: `No Finding` of the study, joined on (subject_id, study_id); empty
cells and studies without a row -> 0 as in the benchmark; -1.0 follows the
`uncertain` option. Labels are per study, so every image of a study shares
them. Subject: subject_id (splits by patient).
Sex: patients.gender M/F. Age: patients.anchor_age (age in the anchor year,
not at the X-ray; 91 means over 89, so old). Subjects absent from patients.csv
are kept with unknown sex and age (option cohort=demographics: their images
are dropped, as FairMedFM's MIMIC_CXR.ipynb drops rows without a gender).
Race: admissions.race (v1.0: ethnicity) - the most frequent known value over
the subject's admissions, ties to the earliest admission; white if it contains
"WHITE"; UNKNOWN, UNABLE TO OBTAIN, PATIENT DECLINED TO ANSWER and blanks ->
unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="MIMIC-CXR-JPG",
    modality="chest X-ray",
    version="1",
    read=read,
    labels=("No Finding",),
    task="binary",
    attributes={
        "sex": categorical(
            {"M": "male", "F": "female"}, groups=("male", "female"), source="MIMIC-IV patients.csv column gender"
        ),
        "age": threshold(60, source="MIMIC-IV patients.csv column anchor_age"),
        "race": keyword(
            "WHITE",
            groups=("white", "non-white"),
            unknown=RACE_UNKNOWN,
            source="MIMIC-IV admissions.csv column race (most frequent known value per subject)",
        ),
    },
    layout=LAYOUT,
    obtain=(
        "PhysioNet, credentialed access (CITI training + data use agreement): "
        "https://physionet.org/content/mimic-cxr-jpg/ ; demographics from MIMIC-IV "
        "(https://physionet.org/content/mimiciv/, hosp/patients.csv.gz and hosp/admissions.csv.gz)"
    ),
    prompts=CXR_PROMPTS,
    options={
        "labels": "no_finding (default): the `No Finding` label; all: the 14 CheXpert observations (multi-label)",
        "uncertain": "what -1.0 (uncertain) becomes: zero (default), one, or unknown (-1, masked)",
        "views": "all (default, as the benchmark): every image; frontal: ViewPosition PA or AP only",
        "cohort": "all (default): every image, unknown sex and age where the subject is not in patients; "
        "demographics: only images whose subject has a gender in patients, as FairMedFM's "
        "pre-processing/classification/MIMIC_CXR.ipynb keeps",
        "mimic_iv": "folder with MIMIC-IV patients.csv(.gz) and admissions.csv(.gz) (default: searched below --data)",
    },
)
