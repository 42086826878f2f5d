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


# ---------------------------------------------------------------------------- DICOM / NIfTI writers

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_slice(
    path: Path,
    stored: np.ndarray,
    *,
    series_uid: str,
    study_uid: str,
    position: Sequence[float] | None,
    instance: int | None,
    slice_location: float | None = None,
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    extra: dict | None = None,
) -> None:
    """One single-frame CT slice: uint16 ``stored`` values, HU = stored * slope + intercept.

    A tag given as None is left out (to test the fallbacks of the slice ordering).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
    if position is not None:
        ds.ImagePositionPatient = [f"{v:g}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    if instance is not None:
        ds.InstanceNumber = instance
    if slice_location is not None:
        ds.SliceLocation = f"{slice_location:g}"
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A NIfTI-1 file (.nii or .nii.gz, from the suffix) holding ``data`` with ``affine``."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


# ---------------------------------------------------------------------------- COVID-CT-MD

COVID_HEADER = ("clinical_data", "Diagnosis", "Folder", "Patient Gender", "Patient Age", "Weight",
                "Clinical characteristics", "Surgery", "Follow-up", "PCR")
# (index, Diagnosis, Folder, Gender, Age, Weight, Clinical characteristics, Surgery, Follow-up, PCR, n slices)
# the index column has gaps as in the release; P005's 105Y is what the reference's x[1:3] reads as 5
COVID_ROWS = [
    (0, "COVID-19", "P001", "M", "039Y", "80.0", "Dyspnea, Cough, Fever", "", "", "", 5),
    (1, "COVID-19", "P002", "F", "048Y", "75.0", "Dyspnea, Flu-like symptoms", "No", "Uneventful", "", 4),
    (2, "COVID-19", "P003", "M", "068Y", "90.0", "Cough", "", "Hospitalized", "", 6),
    (3, "COVID-19", "P004", "M", "050Y", "75.0", "Dyspnea, fever", "No", "Uneventful", "", 5),
    (4, "COVID-19", "P005", "F", "105Y", "62.0", "Cough, Fatigue", "No", "Uneventful", "", 4),
    (171, "CAP", "cap001", "F", "071Y", "68.0", "Fever", "", "", "", 5),
    (172, "CAP", "cap002", "M", "049Y", "83.0", "Cough, Fever", "Yes", "Hospitalized", "", 4),
    (174, "CAP", "cap004", "F", "012Y", "40.0", "Cough", "", "", "", 5),
    (302, "Normal", "normal072", "M", "031Y", "105.0", "Dyspnea", "", "", "", 4),
    (303, "Normal", "normal073", "M", "039Y", "96.0", "Headache, Myalgia", "Yes", "", "", 5),
    (305, "Normal", "normal075", "F", "056Y", "92.0", "Dyspnea", "", "", "", 6),
]
COVID_SIZE = (8, 8)
COVID_Z0, COVID_DZ = -180.0, 2.5


def covid_hu(k: int, shape: tuple[int, int] = COVID_SIZE) -> np.ndarray:
    """HU of the fixture's slice k (k = 0 is the most inferior): -1000 + 150 k, plus a 0..70 column ramp."""
    return -1000.0 + 150.0 * k + 10.0 * np.tile(np.arange(shape[1], dtype=np.float64), (shape[0], 1))


def write_covid_series(folder: Path, n: int, *, seed: int = 0, prefix: str = "98C14734-ASSH") -> None:
    """One patient's CT: slice k at z = -180 + 2.5 k, InstanceNumber counting from the top
    (head-first numbering), saved as ``<prefix>_<Slice-ID>.dcm`` with Slice-IDs shuffled so that
    neither file name nor InstanceNumber gives the anatomical order."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    slice_ids = np.random.default_rng(seed).permutation(n) + 1
    for k in range(n):
        z = COVID_Z0 + COVID_DZ * k
        write_dicom_slice(
            folder / f"{prefix}_{slice_ids[k]}.dcm",
            (covid_hu(k) + 1024).astype(np.uint16),
            series_uid=series, study_uid=study, position=(-180.0, -160.0, z), instance=n - k, slice_location=z,
        )


def write_covid_ct_md(
    root: Path, *, case_dirs: tuple[str, str, str] = ("COVID-19 Cases", "Cap Cases", "Normal Cases")
) -> Path:
    """COVID-CT-MD as unpacked from Figshare; returns root.

    ``case_dirs``: the folders of COVID-19, CAP and Normal patients (the README spells them
    "COVID-19 subjects", "CAP subjects", "Normal subjects").
    """
    root.mkdir(parents=True, exist_ok=True)
    _write_csv(root / "Clinical-data.csv", COVID_HEADER, [r[:-1] for r in COVID_ROWS])
    where = dict(zip(("COVID-19", "CAP", "Normal"), case_dirs))
    for i, row in enumerate(COVID_ROWS):
        write_covid_series(root / where[row[1]] / row[2], row[-1], seed=i)
    # the slice-label files are present in the release but not read
    _write_csv(root / "Index.csv", ("Label Index", "Diagnosis", "Relative Path", "Folder/ID"),
               [[0, "COVID-19", "./COVID-19/", "P001"], [55, "CAP", "./CAP/", "cap001"]])
    np.save(root / "Slice-level-labels.npy", np.zeros((2, 6), np.uint8))
    return root


# ---------------------------------------------------------------------------- ADNI

ADNI_FILE = "ADNI1_Screening_1.5T_2_20_2024.csv"
ADNI_HEADER = ("Image Data ID", "Subject", "Group", "Sex", "Age", "Visit", "Modality", "Description", "Type",
               "Acq Date", "Format", "Downloaded")
_MPR = "MPR; GradWarp; B1 Correction; N3; Scaled"
_MPRR = "MPR-R; GradWarp; B1 Correction; N3; Scaled"
# (Image Data ID, Subject, Group, Sex, Age, Description, Acq Date, series id); 002_S_0413, 002_S_0295
# and 067_S_0110 have a Scaled and a Scaled_2 image of the same scan
ADNI_ROWS = [
    ("I63897", "941_S_1363", "MCI", "F", 70, _MPR, "3/12/2007", 26613),
    ("I63879", "941_S_1203", "CN", "M", 83, _MPR, "1/29/2007", 25190),
    ("I63874", "941_S_1202", "CN", "M", 78, _MPRR, "1/30/2007", 25209),
    ("I66462", "941_S_1197", "CN", "F", 82, _MPR, "1/20/2007", 25040),
    ("I97327", "941_S_1311", "MCI", "M", 69, _MPR, "3/02/2007", 27361),
    ("I45117", "002_S_0413", "CN", "F", 76, _MPR, "5/02/2006", 13893),
    ("I118673", "002_S_0413", "CN", "F", 76, _MPR + "_2", "5/02/2006", 13893),
    ("I45108", "002_S_0295", "CN", "M", 85, _MPR, "4/18/2006", 13408),
    ("I118671", "002_S_0295", "CN", "M", 85, _MPR + "_2", "4/18/2006", 13408),
    ("I40817", "067_S_0110", "AD", "M", 74, _MPR, "2/17/2006", 11002),
    ("I118820", "067_S_0110", "AD", "M", 74, _MPR + "_2", "2/17/2006", 11002),
    ("I31143", "023_S_0916", "AD", "F", 75, _MPRR, "10/02/2006", 20512),
    ("I59363", "130_S_1201", "AD", "F", 69, _MPR, "1/03/2007", 24801),
    ("I35475", "005_S_0221", "AD", "M", 67, _MPR, "7/27/2006", 16601),
]
# voxel axes of the fixture files: anterior -> posterior, inferior -> superior, left -> right
# ("PSR"), so that reorientation to RAS+ has to transpose and flip; shape (P, S, R)
ADNI_SHAPE = (7, 6, 5)
ADNI_AFFINE = np.array([[0, 0, 1.2, -90.0], [-1.0, 0, 0, 120.0], [0, 1.0, 0, -100.0], [0, 0, 0, 1]])


def adni_volume(seed: int = 0) -> np.ndarray:
    """Fixture MRI in file order (P, S, R): value 100 + 10 * (superior index) + noise < 5."""
    rng = np.random.default_rng(seed)
    s = np.arange(ADNI_SHAPE[1])[None, :, None]
    return (100 + 10 * s + rng.integers(0, 5, ADNI_SHAPE)).astype(np.int16)


def adni_relpath(subject: str, image: str, description: str, acq_date: str, series: int) -> str:
    """ADNI/<Subject>/<Description_>/<date>/I<id>/ADNI_<Subject>_MR_<Description_>_Br_<ts>_S<series>_I<id>.nii."""
    import re

    desc = re.sub(r"[^0-9A-Za-z]", "_", description)
    m, d, y = (int(v) for v in acq_date.split("/"))
    when = f"{y:04d}-{m:02d}-{d:02d}_10_21_36.0"
    stamp = f"{y + 2:04d}{m:02d}{d:02d}122825655"
    return f"ADNI/{subject}/{desc}/{when}/{image}/ADNI_{subject}_MR_{desc}_Br_{stamp}_S{series}_{image}.nii"


def write_adni(root: Path, *, csv_name: str = ADNI_FILE) -> Path:
    """An ADNI1 screening collection downloaded from IDA as NIfTI (MCI images included); returns root."""
    rows = [[img, subj, grp, sex, age, "sc", "MRI", desc, "Processed", date, "NiFTI", "2/20/2024"]
            for img, subj, grp, sex, age, desc, date, _ in ADNI_ROWS]
    _write_csv(root / csv_name, ADNI_HEADER, rows)
    for i, (img, subj, _, _, _, desc, date, series) in enumerate(ADNI_ROWS):
        write_nifti(root / adni_relpath(subj, img, desc, date, series), adni_volume(i), ADNI_AFFINE)
    return root


# ---------------------------------------------------------------------------- NPZ helpers


def _npz(path: Path, **arrays: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


# ---------------------------------------------------------------------------- FairVLMed10k

FAIRVLMED_HEADER = ("filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "note",
                    "gpt4_summary", "glaucoma", "use")
# (filename, age, gender, race, ethnicity, language, maritalstatus, glaucoma, use)
FAIRVLMED_ROWS = [
    ("data_00001.npz", "56.56", "female", "asian", "non-hispanic", "english", "single", "yes", "training"),
    ("data_00002.npz", "72.10", "male", "white", "non-hispanic", "english", "married or partnered", "no", "training"),
    ("data_00003.npz", "60.00", "female", "black", "hispanic", "spanish", "divorced", "yes", "training"),
    ("data_00004.npz", "45.31", "male", "white", "unknown", "unknown", "married or partnered", "no", "training"),
    ("data_00005.npz", "81.02", "female", "white", "non-hispanic", "other", "widowed", "yes", "training"),
    ("data_00006.npz", "59.99", "male", "asian", "non-hispanic", "english", "unknown", "no", "training"),
    ("data_00007.npz", "33.47", "female", "black", "non-hispanic", "english", "legally separated", "no", "validation"),
    ("data_00008.npz", "67.80", "male", "white", "non-hispanic", "english", "married or partnered", "yes", "validation"),
    ("data_00009.npz", "64.25", "female", "asian", "non-hispanic", "english", "single", "no", "test"),
    ("data_00010.npz", "52.66", "male", "black", "hispanic", "spanish", "married or partnered", "yes", "test"),
    ("data_00011.npz", "77.00", "female", "white", "non-hispanic", "english", "divorced", "no", "test"),
    ("data_00012.npz", "41.90", "female", "white", "non-hispanic", "english", "single", "no", "test"),
]
_NPZ_CODES = {
    "gender": {"female": 0, "male": 1},
    "race": {"asian": 0, "black": 1, "white": 2},
    "ethnicity": {"non-hispanic": 0, "hispanic": 1, "unknown": -1},
    "language": {"english": 0, "spanish": 1, "other": 2, "other languages": 2, "unknown": -1},
    "maritalstatus": {"married or partnered": 0, "single": 1, "divorced": 2, "widowed": 3, "legally separated": 4, "unknown": -1},
}


def write_fairvlmed10k(root: Path, *, test_dir: str = "Test", summary_dir: str = ".", jpg_export: int | None = None) -> Path:
    """FairVLMed as in the FairCLIP README, in ``root/FairVLMed``; returns root.

    ``test_dir`` "Testing" mimics FairCLIP's code; ``summary_dir`` "ReadMe" FairMedFM's copy;
    ``jpg_export`` replaces that row's NPZ by FairMedFM's ``slo_fundus_NNNNN.jpg`` export.
    slo_fundus is dark uint8 (max 86), 24 x 20 in place of 664 x 512.
    """
    base = root / "FairVLMed"
    folders = {"training": "Training", "validation": "Validation", "test": test_dir}
    rows = []
    for i, (fn, age, gender, race, eth, lang, marital, glaucoma, use) in enumerate(FAIRVLMED_ROWS):
        note = f"{age} year old {gender} with {'glaucoma' if glaucoma == 'yes' else 'no glaucoma'}."
        rows.append([fn, age, gender, race, eth, lang, marital, note, "summary: " + note, glaucoma, use])
        image = np.random.default_rng(i).integers(0, 87, (24, 20), dtype=np.uint8)
        folder = base / folders[use]
        if jpg_export == i + 1:
            export = folder / f"slo_fundus_{fn[5:10]}.jpg"
            export.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(export, "JPEG", quality=90)
            continue
        codes = {k: _NPZ_CODES[k][v] for k, v in
                 (("gender", gender), ("race", race), ("ethnicity", eth), ("language", lang), ("maritalstatus", marital))}
        _npz(folder / fn, slo_fundus=image, md=-1.5, tds=np.zeros(52), age=float(age), glaucoma=int(glaucoma == "yes"),
             note=note, note_extra="", **codes)
    _write_csv(base / summary_dir / "data_summary.csv", FAIRVLMED_HEADER, rows)
    _write_csv(base / "gpt-4_summarized_notes.csv", ("filename", "note", "gpt4_summary"), [[r[0], r[7], r[8]] for r in rows])
    return root


# ---------------------------------------------------------------------------- Harvard-GF3300

GF_HEADER = ("filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "glaucoma", "use")
GF_ROWS = [
    ("data_0001.npz", "70.5", "female", "asian", "non-hispanic", "english", "single", "yes", "training"),
    ("data_0002.npz", "48.2", "male", "black", "non-hispanic", "other languages", "married or partnered", "no", "training"),
    ("data_0003.npz", "63.0", "female", "white", "hispanic", "spanish", "divorced", "yes", "training"),
    ("data_0004.npz", "55.9", "male", "white", "non-hispanic", "unknown", "unknown", "no", "training"),
    ("data_0005.npz", "61.3", "female", "black", "non-hispanic", "english", "widowed", "no", "training"),
    ("data_0006.npz", "39.4", "male", "asian", "unknown", "english", "married or partnered", "yes", "training"),
    ("data_0007.npz", "66.6", "female", "white", "non-hispanic", "english", "single", "no", "validation"),
    ("data_0008.npz", "58.1", "male", "asian", "non-hispanic", "other languages", "legally separated", "yes", "test"),
    ("data_0009.npz", "74.0", "female", "black", "non-hispanic", "english", "married or partnered", "no", "test"),
    ("data_0010.npz", "60.0", "male", "white", "non-hispanic", "english", "single", "yes", "test"),
]


def write_gf3300(root: Path, *, container: str = "dataset-001", split_dirs: tuple[str, str, str] = ("Training", "Validation", "Test")) -> Path:
    """Harvard-GF3300 as in FairMedFM's copy (data_summary.csv at root, NPZ under dataset-001/); returns root.

    rnflt is a 20 x 20 float map (200 x 200 in the release) whose first three pixels are
    -2, 350 and 174 um; oct_bscans a small 3D array.
    """
    folders = dict(zip(("training", "validation", "test"), split_dirs))
    for i, (fn, age, gender, race, eth, lang, marital, glaucoma, use) in enumerate(GF_ROWS):
        rnflt = np.random.default_rng(i).uniform(40, 160, (20, 20))
        rnflt[0, :3] = (-2.0, 350.0, 174.0)
        folder = root / container / folders[use] if container else root / folders[use]
        _npz(folder / fn, oct_bscans=np.zeros((4, 8, 8), np.uint8), rnflt=rnflt, md=-2.0, glaucoma=int(glaucoma == "yes"),
             tds=np.zeros(52), race=_NPZ_CODES["race"][race], male=int(gender == "male"),
             hispanic=_NPZ_CODES["ethnicity"][eth], language=_NPZ_CODES["language"][lang],
             maritalstatus=_NPZ_CODES["maritalstatus"][marital], age=float(age))
    _write_csv(root / "data_summary.csv", GF_HEADER, GF_ROWS)
    return root


# ---------------------------------------------------------------------------- PAPILA

PAPILA_RELEASE = "PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f"
PAPILA_ROW1 = (None, "Age", "Gender", "Diagnosis", "Refractive_Defect", None, None, "Phakic/Pseudophakic", "IOP", None,
               "Pachymetry", "Axial_Length", "VF_MD")
PAPILA_ROW2 = (None, "Age", "Gender", "Diagnosis", "dioptre_1", "dioptre_2", "astigmatism", "Phakic/Pseudophakic",
               "Pneumatic", "Perkins", "Pachymetry", "Axial_Length", "VF_MD")
# (ID, Age, Gender, Diagnosis OD, Diagnosis OS); #011 has no age, #016's age and #013's gender
# are stored as floats, #007's eyes differ, #002's are both suspect
PAPILA_PATIENTS = [
    ("#002", 47, 0, 2, 2),
    ("#004", 64, 1, 0, 0),
    ("#005", 60, 0, 1, 1),
    ("#007", 55, 1, 0, 1),
    ("#010", 72, 1, 1, 2),
    ("#011", None, 0, 0, 0),
    ("#013", 38, 1.0, 0, 0),
    ("#016", 81.0, 0, 1, 1),
]


def write_papila(root: Path, *, csv_sheets: bool = False) -> Path:
    """PAPILA unzipped from Figshare into ``root/PapilaDB-PAPILA-<commit>/``; returns root.

    The spreadsheets have the official two header rows and an ``ID`` row; ``csv_sheets``
    writes MEDFAIR's one-header CSV conversions instead.
    """
    import pandas as pd

    base = root / PAPILA_RELEASE
    (base / "ClinicalData").mkdir(parents=True, exist_ok=True)
    for eye, col in (("od", 3), ("os", 4)):
        data = [[p[0], p[1], p[2], p[col], 0.75, -1.75, 90.0, 0.0, 21.0, None, 586.0, 23.64, -0.07] for p in PAPILA_PATIENTS]
        if csv_sheets:
            _write_csv(base / "ClinicalData" / f"patient_data_{eye}.csv", ("ID", *PAPILA_ROW2[1:]),
                       [["" if v is None else v for v in r] for r in data])
        else:
            sheet = [list(PAPILA_ROW1), list(PAPILA_ROW2), ["ID"] + [None] * 12, *data]
            pd.DataFrame(sheet).to_excel(base / "ClinicalData" / f"patient_data_{eye}.xlsx", header=False, index=False)
    for i, p in enumerate(PAPILA_PATIENTS):
        for j, eye in enumerate(("OD", "OS")):
            stem = f"RET{p[0][1:]}{eye}"
            _jpeg(base / "FundusImages" / f"{stem}.jpg", mode="RGB", size=(40, 30), seed=2 * i + j)
            contours = base / "ExpertsSegmentations" / "Contours"
            contours.mkdir(parents=True, exist_ok=True)
            (contours / f"{stem}_disc_exp1.txt").write_text("1 2\n3 4\n")
            (contours / f"{stem}_cup_exp2 2.txt").write_text("1 2\n")  # macOS duplicate, as in the release
    (base / "HelpCode" / "kfold").mkdir(parents=True, exist_ok=True)
    (base / "README.txt").write_text("PAPILA\n")
    return root


# ---------------------------------------------------------------------------- BRSET

BRSET_HEADER = (
    "image_id,patient_id,camera,patient_age,comorbidities,diabetes_time_y,insuline,patient_sex,exam_eye,diabetes,"
    "nationality,optic_disc,vessels,macula,DR_SDRG,DR_ICDR,focus,iluminaton,image_field,artifacts,diabetic_retinopathy,"
    "macular_edema,scar,nevus,amd,vascular_occlusion,hypertensive_retinopathy,drusens,hemorrhage,retinal_detachment,"
    "myopic_fundus,increased_cup_disc,other,quality"
).split(",")
# (image_id, patient_id, camera, patient_age, comorbidities, diabetes_time_y, insuline, patient_sex, exam_eye,
#  optic_disc, DR_ICDR, diabetic_retinopathy, quality); img00007 and img00010 have a
#  diabetic_retinopathy that disagrees with DR_ICDR, as in the real file
BRSET_ROWS = [
    ("img00001", 1, "Canon CR", "48", "diabetes1", "5", "yes", 1, 1, "1", 0, 0, "Adequate"),
    ("img00002", 1, "Canon CR", "48", "diabetes1", "5", "yes", 1, 2, "1", 2, 1, "Adequate"),
    ("img00003", 2, "NIKON NF5050", "NA", "0", "NA", "NA", 2, 1, "1", 0, 0, "Adequate"),
    ("img00004", 2, "NIKON NF5050", "NA", "0", "NA", "NA", 2, 2, "1", 0, 0, "Inadequate"),
    ("img00005", 3, "Canon CR", "67", "diabetes1, SAH", "0,5", "", 2, 1, "2", 4, 1, "Adequate"),
    ("img00006", 3, "Canon CR", "67", "diabetes1, SAH", "0,5", "", 2, 2, "2", 3, 1, "Adequate"),
    ("img00007", 3, "Canon CR", "67", "diabetes1, SAH", "0,5", "", 2, 1, "1", 1, 0, "Adequate"),
    ("img00008", 4, "Canon CR", "59", "NA", "1O", "no", 1, 1, "1", 0, 0, "Adequate"),
    ("img00009", 5, "Canon CR", "60", "0", "Não", "no", 2, 1, "1", 0, 0, "Adequate"),
    ("img00010", 5, "Canon CR", "60", "0", "Não", "no", 2, 2, "1", 0, 1, "Adequate"),
    ("img00011", 6, "NIKON NF5050", "72", "diabetes1", "", "yes", 1, 1, "bv", 2, 1, "Inadequate"),
    ("img00012", 7, "NIKON NF5050", "35", "0", "NA", "NA", 2, 1, "1", 0, 0, "Adequate"),
    ("img00013", 7, "NIKON NF5050", "35", "0", "NA", "NA", 2, 2, "1", 0, 0, "Adequate"),
    ("img00014", 8, "Canon CR", "81", "diabetes1", "20", "yes", 2, 1, "1", 1, 1, "Adequate"),
    ("img00015", 9, "Canon CR", "NA", "NA", "NA", "NA", 1, 1, "1", 0, 0, "Adequate"),
    ("img00016", 10, "NIKON NF5050", "44", "diabetes1", "12", "yes", 2, 1, "1", 3, 1, "Adequate"),
]


def write_brset(root: Path) -> Path:
    """BRSET 1.0.0 as on PhysioNet (labels.csv beside fundus_photos/); returns root."""
    rows = []
    for i, (img, pid, cam, age, com, dtime, ins, sex, eye, disc, icdr, dr, quality) in enumerate(BRSET_ROWS):
        values = dict(image_id=img, patient_id=pid, camera=cam, patient_age=age, comorbidities=com, diabetes_time_y=dtime,
                      insuline=ins, patient_sex=sex, exam_eye=eye, diabetes="yes" if com.startswith("diabetes") else "no",
                      nationality="Brazil", optic_disc=disc, vessels=1, macula=1, DR_SDRG=icdr, DR_ICDR=icdr, focus=1,
                      iluminaton=1, image_field=1, artifacts=1, diabetic_retinopathy=dr, quality=quality)
        rows.append([values.get(c, 0) for c in BRSET_HEADER])
        _jpeg(root / "fundus_photos" / f"{img}.jpg", mode="RGB", size=(36, 36), seed=i)
    _write_csv(root / "labels.csv", BRSET_HEADER, rows)
    return root
