"""Small copies of official dataset releases, laid out exactly as the real ones.

Each ``write_*`` function writes into ``root`` the folder names, file names, CSV headers
(same order and spelling) and value spellings of the release, including its messy values,
with tiny real JPEGs at the image paths, and returns the path to pass as ``--data``.
The rows are listed literally so that tests can state expected counts worked out by hand.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------- helpers


def _jpeg(path: Path, *, mode: str = "L", size: tuple[int, int] = (32, 32), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, "JPEG", quality=90)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _csv_text(header, rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text)


# ---------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
).split(",")
CHEXPERT_OBS = CHEXPERT_HEADER[5:]

# (patient, study, view stem, Sex, Age, Frontal/Lateral, AP/PA, {observation: value})
# train: No Finding is only 1.0 or empty; patients 64538 / 64540 carry the Age-0 placeholder
CHEXPERT_TRAIN = [
    ("patient00001", 1, "view1_frontal", "Female", "68", "Frontal", "AP",
     {"No Finding": "1.0", "Pneumothorax": "0.0", "Support Devices": "1.0"}),
    ("patient00002", 2, "view1_frontal", "Female", "87", "Frontal", "AP",
     {"Cardiomegaly": "-1.0", "Lung Opacity": "1.0", "Edema": "-1.0"}),
    ("patient00002", 1, "view1_frontal", "Female", "83", "Frontal", "AP", {"Lung Opacity": "1.0"}),
    ("patient00002", 1, "view2_lateral", "Female", "83", "Lateral", "", {"Lung Opacity": "1.0"}),
    ("patient00003", 1, "view1_frontal", "Male", "41", "Frontal", "AP", {"Edema": "1.0"}),
    ("patient00004", 1, "view1_frontal", "Male", "59", "Frontal", "PA", {"No Finding": "1.0"}),
    ("patient00004", 1, "view2_lateral", "Male", "59", "Lateral", "", {"No Finding": "1.0"}),
    ("patient00005", 1, "view1_frontal", "Unknown", "72", "Frontal", "AP", {"Pleural Effusion": "1.0"}),
    ("patient00006", 1, "view1_frontal", "Male", "60", "Frontal", "LL", {"No Finding": "1.0"}),
    ("patient00007", 1, "view1_frontal", "Female", "35", "Frontal", "PA", {"No Finding": "1.0"}),
    ("patient00008", 1, "view1_frontal", "Male", "77", "Frontal", "AP", {"Support Devices": "1.0", "Fracture": "-1.0"}),
    ("patient00009", 1, "view1_frontal", "Female", "45", "Frontal", "PA", {"Pneumonia": "-1.0"}),
    ("patient00010", 1, "view1_frontal", "Male", "52", "Frontal", "PA", {"No Finding": "1.0"}),
    ("patient64538", 1, "view1_frontal", "Female", "0", "Frontal", "AP", {"Edema": "-1.0"}),
    ("patient64540", 1, "view1_frontal", "Female", "0", "Frontal", "AP", {"No Finding": "1.0", "Pneumothorax": "0.0"}),
]
# valid: radiologist consensus, every observation 0.0 or 1.0
CHEXPERT_VALID = [
    ("patient64541", 1, "view1_frontal", "Male", "73", "Frontal", "AP", {"No Finding": "0.0", "Cardiomegaly": "1.0"}),
    ("patient64542", 1, "view1_frontal", "Female", "70", "Frontal", "PA", {"No Finding": "1.0"}),
    ("patient64542", 1, "view2_lateral", "Female", "70", "Lateral", "", {"No Finding": "1.0"}),
    ("patient64543", 1, "view1_frontal", "Male", "55", "Frontal", "AP", {"No Finding": "0.0", "Lung Opacity": "1.0"}),
]
# PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY; 64538 and 64540 have no row
CHEXPERT_DEMO = [
    ("patient00001", "Female", 68, "White, non-Hispanic", "Non-Hispanic/Non-Latino"),
    ("patient00002", "Female", 83, "Other", "Hispanic/Latino"),
    ("patient00003", "Male", 41, "White", "Non-Hispanic/Non-Latino"),
    ("patient00004", "Male", 59, "Asian", "Non-Hispanic/Non-Latino"),
    ("patient00005", "Unknown", 72, "Unknown", "Unknown"),
    ("patient00006", "Male", 60, "Patient Refused", "Patient Refused"),
    ("patient00007", "Female", 35, "Black or African American", "Non-Hispanic/Non-Latino"),
    ("patient00008", "Male", 77, "Race and Ethnicity Unknown", "Unknown"),
    ("patient00009", "Female", 45, None, None),
    ("patient00010", "Male", 52, "White or Caucasian", "Non-Hispanic/Non-Latino"),
    ("patient64541", "Male", 73, "Asian, Hispanic", "Hispanic/Latino"),
    ("patient64542", "Female", 70, "White, Hispanic", "Hispanic/Latino"),
    ("patient64543", "Male", 55, "Native Hawaiian or Other Pacific Islander", "Non-Hispanic/Non-Latino"),
]
DEMO_HEADER = ("PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY")


def _chexpert_rows(folder: str, split: str, rows: list, base: Path, *, fill_zero: bool) -> list[list[str]]:
    out = []
    for i, (patient, study, view, sex, age, fl, appa, labels) in enumerate(rows):
        rel = f"{folder}/{split}/{patient}/study{study}/{view}.jpg"
        _jpeg(base.parent / rel, seed=i)
        values = [labels.get(o, "0.0" if fill_zero else "") for o in CHEXPERT_OBS]
        out.append([rel, sex, age, fl, appa, *values])
    return out


def write_chexpert(root: Path, *, folder: str = "CheXpert-v1.0-small", demo: str | None = "xlsx") -> Path:
    """CheXpert in the official layout; returns the folder that holds ``folder``.

    ``demo``: "xlsx" writes ``CHEXPERT DEMO.xlsx`` (sheet ``CheXpert Demo 11-13``), "csv"
    writes ``CHEXPERT_DEMO.csv``, None writes no race file.
    """
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    _write_csv(base / "train.csv", CHEXPERT_HEADER, _chexpert_rows(folder, "train", CHEXPERT_TRAIN, base, fill_zero=False))
    _write_csv(base / "valid.csv", CHEXPERT_HEADER, _chexpert_rows(folder, "valid", CHEXPERT_VALID, base, fill_zero=True))
    if demo == "xlsx":
        import pandas as pd

        df = pd.DataFrame(CHEXPERT_DEMO, columns=DEMO_HEADER)
        df.to_excel(root / "CHEXPERT DEMO.xlsx", sheet_name="CheXpert Demo 11-13", index=False)
    elif demo == "csv":
        _write_csv(root / "CHEXPERT_DEMO.csv", DEMO_HEADER, [["" if v is None else v for v in r] for r in CHEXPERT_DEMO])
    return root


# ---------------------------------------------------------------------------- MIMIC-CXR

MIMIC_META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
).split(",")
MIMIC_LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
    "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
).split(",")
PATIENTS_HEADER = "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod".split(",")
ADMISSIONS_HEADER = (
    "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,"
    "discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag"
).split(",")

_VIEW = {
    "PA": ("CHEST (PA AND LAT)", "postero-anterior", "Erect"),
    "AP": ("CHEST (PORTABLE AP)", "antero-posterior", ""),
    "LATERAL": ("CHEST (PA AND LAT)", "lateral", "Erect"),
    "": ("CHEST (PA AND LAT)", "", ""),
}
# (dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime)
MIMIC_IMAGES = [
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 10000032, 50414267, "PA", 21800506, "213014.531"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", 10000032, 50414267, "LATERAL", 21800506, "213014.531"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", 10000032, 53189527, "AP", 21800723, "80556.875"),
    ("0c4eb1e1-b801903c-bcebe8a4-3da9cd3c-3b94a27c", 10000764, 57375967, "PA", 21321015, "112425.718"),
    ("cc5b1d2b-6a2b6e7b-2c0a1b1f-7c8e0f5d-11a0b2c3", 10000764, 57375967, "LATERAL", 21321015, "112425.718"),
    ("1b1d2c3e-4f506172-8394a5b6-c7d8e9f0-0a1b2c3d", 10000898, 50771383, "AP", 21860214, "60912.125"),
    ("2c2e3d4f-5a617283-94a5b6c7-d8e9f0a1-1b2c3d4e", 10001038, 58224153, "PA", 21390901, "154133.078"),
    ("3d3f4e5a-6b728394-a5b6c7d8-e9f0a1b2-2c3d4e5f", 10001122, 51212345, "AP", 21420308, "93011.000"),
    ("4e4a5f6b-7c8394a5-b6c7d8e9-f0a1b2c3-3d4e5f6a", 10001122, 52223456, "PA", 21420611, "101500.500"),
    ("5f5b6a7c-8d94a5b6-c7d8e9f0-a1b2c3d4-4e5f6a7b", 10001176, 53186264, "AP", 21870930, "203044.390"),
    ("6a6c7b8d-9ea5b6c7-d8e9f0a1-b2c3d4e5-5f6a7b8c", 10001217, 58913004, "PA", 21571120, "74502.250"),
    ("7b7d8c9e-afb6c7d8-e9f0a1b2-c3d4e5f6-6a7b8c9d", 10001217, 58913004, "", 21571120, "74502.250"),
    ("8c8e9daf-b0c7d8e9-f0a1b2c3-d4e5f6a7-7b8c9dae", 10001401, 51065211, "AP", 21340418, "11533.875"),
    ("9d9faeb0-c1d8e9f0-a1b2c3d4-e5f6a7b8-8c9daebf", 10001884, 52012345, "PA", 21310112, "142210.000"),
    ("aeb0bfc1-d2e9f0a1-b2c3d4e5-f6a7b8c9-9daebfc0", 10001884, 52012345, "LATERAL", 21310112, "142210.000"),
]
# one row per study; studies 52223456 and 51065211 have no row
MIMIC_LABELS = {
    (10000032, 50414267): {"No Finding": "1.0"},
    (10000032, 53189527): {"Edema": "1.0", "Lung Opacity": "0.0"},
    (10000764, 57375967): {"Cardiomegaly": "-1.0", "Pleural Effusion": "1.0"},
    (10000898, 50771383): {"No Finding": "1.0"},
    (10001038, 58224153): {"Atelectasis": "-1.0", "Lung Opacity": "1.0"},
    (10001122, 51212345): {"No Finding": "1.0"},
    (10001176, 53186264): {"Support Devices": "1.0", "Pneumothorax": "0.0"},
    (10001217, 58913004): {"No Finding": "1.0"},
    (10001884, 52012345): {"Edema": "-1.0", "Pleural Effusion": "-1.0"},
}
# 10001122 is absent (not in this MIMIC-IV version); 10000764 has the top-coded 91
MIMIC_PATIENTS = [
    (10000032, "F", 52, 2180, "2014 - 2016", "2180-09-09"),
    (10000764, "M", 91, 2132, "2014 - 2016", ""),
    (10000898, "F", 60, 2186, "2011 - 2013", ""),
    (10001038, "M", 45, 2139, "2017 - 2019", ""),
    (10001176, "F", 73, 2187, "2011 - 2013", ""),
    (10001217, "M", 38, 2157, "2011 - 2013", ""),
    (10001401, "F", 29, 2134, "2017 - 2019", ""),
    (10001884, "M", 67, 2131, "2008 - 2010", "2131-01-20"),
]
# (subject_id, hadm_id, admittime, race); file order is not time order for 10000898
MIMIC_ADMISSIONS = [
    (10000032, 22595853, "2180-05-06 22:23:00", "WHITE"),
    (10000032, 22841357, "2180-06-26 18:27:00", "BLACK/AFRICAN AMERICAN"),
    (10000032, 29079034, "2180-07-23 12:35:00", "WHITE"),
    (10000764, 27897940, "2132-10-14 23:31:00", "UNKNOWN"),
    (10000764, 21450251, "2132-10-19 02:51:00", "ASIAN - CHINESE"),
    (10000898, 26322153, "2187-02-06 09:00:00", "HISPANIC/LATINO - PUERTO RICAN"),
    (10000898, 24051233, "2186-01-01 10:00:00", "WHITE"),
    (10001038, 25018463, "2139-08-30 08:12:00", "WHITE - RUSSIAN"),
    (10001176, 23334588, "2187-09-29 20:30:00", "PATIENT DECLINED TO ANSWER"),
    (10001217, 24597018, "2157-11-18 22:56:00", "UNABLE TO OBTAIN"),
    (10001217, 27703517, "2157-12-18 16:58:00", "UNKNOWN"),
    (10001401, 21544441, "2134-04-17 07:15:00", "BLACK/CAPE VERDEAN"),
    (10001884, 26184834, "2131-01-07 20:39:00", "OTHER"),
]


def _admission_row(subject: int, hadm: int, admit: str, race: str) -> list[object]:
    return [subject, hadm, admit, admit[:10] + " 18:00:00", "", "EW EMER.", "P49AFC", "EMERGENCY ROOM",
            "HOME", "Medicare", "ENGLISH", "WIDOWED", race, "", "", 0]


def write_mimic_cxr(root: Path, *, mimic_iv: str = "mimic-iv/hosp", gz: bool = True) -> Path:
    """MIMIC-CXR-JPG 2.0.0 with MIMIC-IV patients / admissions in ``root/mimic_iv``; returns root."""
    suffix = ".csv.gz" if gz else ".csv"
    meta, split = [], []
    for i, (dicom, subject, study, view, date, time) in enumerate(MIMIC_IMAGES):
        proc, code, orient = _VIEW[view]
        meta.append([dicom, subject, study, proc, view, 3056, 2544, date, time, proc, code, orient])
        split.append([dicom, study, subject, "test" if subject == 10001884 else "train"])
        _jpeg(root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", seed=i)
    _write_csv(root / f"mimic-cxr-2.0.0-metadata{suffix}", MIMIC_META_HEADER, meta)
    _write_csv(root / f"mimic-cxr-2.0.0-split{suffix}", ("dicom_id", "study_id", "subject_id", "split"), split)
    labels = [[s, st, *[v.get(c, "") for c in MIMIC_LABEL_HEADER[2:]]] for (s, st), v in MIMIC_LABELS.items()]
    _write_csv(root / f"mimic-cxr-2.0.0-chexpert{suffix}", MIMIC_LABEL_HEADER, labels)
    _write_csv(root / f"mimic-cxr-2.0.0-negbio{suffix}", MIMIC_LABEL_HEADER, labels)
    (root / "IMAGE_FILENAMES").write_text(
        "".join(f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg\n" for d, s, st, *_ in MIMIC_IMAGES)
    )
    iv = root / mimic_iv
    _write_csv(iv / f"patients{suffix}", PATIENTS_HEADER, MIMIC_PATIENTS)
    _write_csv(iv / f"admissions{suffix}", ADMISSIONS_HEADER, [_admission_row(*a) for a in MIMIC_ADMISSIONS])
    return root


# ---------------------------------------------------------------------------- HAM10000

HAM_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
HAM_ROWS = [
    ("HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"),
    ("HAM_0000118", "ISIC_0025030", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"),
    ("HAM_0002730", "ISIC_0026769", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"),
    ("HAM_0002730", "ISIC_0025661", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"),
    ("HAM_0001466", "ISIC_0031633", "bkl", "histo", "75.0", "male", "ear", "vidir_modern"),
    ("HAM_0002761", "ISIC_0029176", "mel", "histo", "60.0", "female", "face", "vidir_modern"),
    ("HAM_0002761", "ISIC_0029068", "mel", "histo", "60.0", "female", "face", "vidir_modern"),
    ("HAM_0005132", "ISIC_0025837", "bcc", "histo", "70.0", "female", "back", "rosendahl"),
    ("HAM_0001396", "ISIC_0025276", "akiec", "histo", "55.0", "male", "face", "rosendahl"),
    ("HAM_0004234", "ISIC_0029396", "nv", "follow_up", "45.0", "female", "lower extremity", "vidir_molemax"),
    ("HAM_0006002", "ISIC_0027008", "nv", "consensus", "", "unknown", "unknown", "vidir_molemax"),
    ("HAM_0000871", "ISIC_0025964", "vasc", "consensus", "0.0", "female", "trunk", "vidir_modern"),
    ("HAM_0003301", "ISIC_0024306", "nv", "follow_up", "45.0", "male", "chest", "vidir_molemax"),
    ("HAM_0000559", "ISIC_0024307", "df", "histo", "50.0", "male", "lower extremity", "vienna_dias"),
    ("HAM_0007207", "ISIC_0033084", "mel", "histo", "40.0", "female", "back", "vienna_dias"),
    ("HAM_0001751", "ISIC_0024698", "nv", "follow_up", "35.0", "female", "upper extremity", "vidir_molemax"),
    ("HAM_0005678", "ISIC_0031023", "bcc", "histo", "85.0", "male", "back", "rosendahl"),
    ("HAM_0003033", "ISIC_0027850", "akiec", "histo", "65.0", "female", "face", "rosendahl"),
]
HAM_PART_1_LAST = 29305  # part 1 holds ISIC_0024306 ... ISIC_0029305, part 2 the rest


def write_ham10000(
    root: Path,
    *,
    metadata: str = "HAM10000_metadata",
    image_dirs: tuple[str, str] = ("HAM10000_images_part_1", "HAM10000_images_part_2"),
    dataset_column: bool = True,
) -> Path:
    """HAM10000 as unpacked from Dataverse (or a Kaggle-like variant); returns root.

    Images are RGB JPEGs with the release's 4:3 aspect (600 x 450 scaled down).
    """
    root.mkdir(parents=True, exist_ok=True)
    header = HAM_HEADER if dataset_column else HAM_HEADER[:-1]
    rows = [r if dataset_column else r[:-1] for r in HAM_ROWS]
    _write_csv(root / metadata, header, rows)
    for i, row in enumerate(HAM_ROWS):
        image = row[1]
        part = image_dirs[0] if int(image.split("_")[1]) <= HAM_PART_1_LAST else image_dirs[1]
        _jpeg(root / part / f"{image}.jpg", mode="RGB", size=(60, 45), seed=i)
    return root
