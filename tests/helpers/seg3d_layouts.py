"""Small copies of the volumetric segmentation releases (KiTS23, CANDI, 3D-IRCADb-01, SPIDER).

As in seg_layouts: each ``write_*`` writes the release's folder and file names, metadata
keys / headers and value spellings, messy values included, into ``root`` and returns the
path to pass as ``--data``. Volumes are tiny, and every image's intensity encodes the class
of its voxel (``*_intensity``) so that a test can tell from the image alone whether its
label volume came out on the same grid. Each fixture also keeps, per row, the expected
class volume in canonical RAS+ order (``expected_*``), built here from the objects planted,
independently of the adapters' remapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from helpers import official_layouts as ol

# ---------------------------------------------------------------------------- KiTS23

KITS_SHAPE = (8, 16, 16)  # stored (slices, rows, cols) as the release's (611, 512, 512)
KITS_SPACING = (0.5, 0.92, 0.92)
# the release's orientation codes ('I', 'P', 'L'): file axis 0 runs inferior, 1 posterior, 2 left
KITS_AFFINE = np.array([[0, 0, -0.92, 40.0], [0, -0.92, 0, 30.0], [-0.5, 0, 0, 20.0], [0, 0, 0, 1]])
# (case_id, gender, bmi, age_at_nephrectomy, has a cyst); BMI at every class boundary, the
# null BMI of case_00461, the transgender case and ages of 0 as in the release
KITS_CASES = [
    ("case_00000", "male", 29.1, 50, True),
    ("case_00001", "male", 18.49, 67, False),
    ("case_00002", "female", 18.5, 0, False),
    ("case_00003", "female", 24.99, 71, True),
    ("case_00004", "male", 25.0, 58, False),
    ("case_00005", "transgender_male_to_female", 29.99, 45, False),
    ("case_00400", "female", 30.0, 0, True),
    ("case_00401", "male", 72.23, 60, False),
    ("case_00461", "male", None, 55, False),
    ("case_00587", "female", 16.1, 39, True),
    ("case_00588", "male", 27.3, 90, False),
]
KITS_ABSENT = "case_00299"  # listed in kits23.json, folder not downloaded
KITS_STRAY = 5  # a value outside labels.py's 1-3, written in every third case: background
KITS_HU = {0: -150.0, 1: 30.0, 2: 90.0, 3: 10.0}  # background, kidney, tumor, cyst


def kits_labels(i: int, cyst: bool) -> np.ndarray:
    """Stored label volume (slices, rows, cols): kidney block, tumor inside it, cyst beside."""
    seg = np.zeros(KITS_SHAPE, np.uint8)
    seg[1:6, 3 + i % 3 : 11, 2:9] = 1
    seg[2:4, 5:8, 4:7] = 2
    if cyst:
        seg[5:7, 12:15, 11:14] = 3
    if i % 3 == 0:
        seg[0, 0, 15] = KITS_STRAY
    return seg


def kits_record(case_id: str, gender: str, bmi, age: int) -> dict:
    """A kits23.json record with the release's keys (values of the unread keys are plausible)."""
    return {
        "case_id": case_id, "gender": gender, "vital_status": "alive", "vital_days_after_surgery": 1850,
        "bmi": bmi, "comorbidities": {"myocardial_infarction": False, "diabetes_mellitus_without_end_organ_damage": True},
        "age_at_nephrectomy": age, "hospitalization": 3, "er_visit": False, "readmission": False,
        "surgery_type": "open", "surgical_approach": "Transperitoneal", "surgical_procedure": "radical_nephrectomy",
        "estimated_blood_loss": 200, "clavien_surgical_complications": "0", "intraoperative_complications": {
            "blood_transfusion": False}, "ischemia_time": None, "operative_time": 180, "smoking_history": "never_smoked",
        "age_when_quit_smoking": "not_applicable", "pack_years": 0, "chewing_tobacco_use": "never_or_not_in_last_3mo",
        "alcohol_use": "never_or_not_in_last_3mo", "radiographic_size": 4.2, "cytoreductive": False,
        "pathologic_size": 4.0, "malignant": True, "pathology_t_stage": "1a", "pathology_n_stage": "0",
        "pathology_m_stage": "0", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_necrosis": False,
        "tumor_isup_grade": 2, "positive_resection_margins": False, "sarcomatoid_features": False,
        "rhabdoid_features": False, "last_preop_egfr": {"value": 90, "days_before_nephrectomy": 10},
        "first_postop_egfr": {"value": 70, "days_after_nephrectomy": 1},
        "last_postop_egfr": {"value": 75, "days_after_nephrectomy": 400}, "aua_risk_score": "low_risk",
    }


def expected_kits(i: int) -> np.ndarray:
    """Class volume of case ``i`` in RAS+ order: file axes (I, P, L) reversed and transposed."""
    seg = kits_labels(i, KITS_CASES[i][4])
    seg = np.where(np.isin(seg, (1, 2, 3)), seg, 0)
    return np.transpose(seg[::-1, ::-1, ::-1], (2, 1, 0)).astype(np.uint8)


def write_kits23(root: Path) -> Path:
    """The kits23 repository after kits23_download_data: dataset/kits23.json and case folders."""
    base = root / "dataset"
    records = [kits_record(c, g, b, a) for c, g, b, a, _ in KITS_CASES]
    records.insert(6, kits_record(KITS_ABSENT, "male", 31.0, 60))
    base.mkdir(parents=True, exist_ok=True)
    (base / "kits23.json").write_text(json.dumps(records, indent=4))
    for i, (case, *_, cyst) in enumerate(KITS_CASES):
        seg = kits_labels(i, cyst)
        clean = np.where(np.isin(seg, (1, 2, 3)), seg, 0)
        hu = np.vectorize(KITS_HU.get)(clean).astype("<f8")
        ol.write_nifti(base / case / "imaging.nii.gz", hu, KITS_AFFINE)
        ol.write_nifti(base / case / "segmentation.nii.gz", seg, KITS_AFFINE)
        ol.write_nifti(base / case / "instances" / "kidney_instance-1_annotation-1.nii.gz", (seg == 1).astype(np.uint8),
                       KITS_AFFINE)
    return root


# ---------------------------------------------------------------------------- CANDI

CANDI_HEADER = ("Subject", "Gender", "Age", "Handedness")
# (group of the demographics file, folder the archive was unpacked into ("" = --data itself), rows)
CANDI_GROUPS = [
    ("HC", "", [("HC_001", "male", "13.5", "RH"), ("HC_002", "female", "9.9", "LH"), ("HC_003", "female", "10", "RH"),
                ("HC_004", "male", "6.2", "AH")]),
    ("BPDwithoutPsy", "SchizBull_2008_BPDwithoutPsy_segimg",
     [("BPDwoPsy_030", "male", "11.25", "RH"), ("BPDwoPsy_031", "female", "15.0", "RH"),
      ("BPDwoPsy_032", "male", "8.4", "LH")]),
    ("SS", "SchizBull_2008_SS_segimg", [("SS_084", "female", "12.1", "RH"), ("SS_085", "male", "", "RH"),
                                        ("SS_086", "female", "7.3", "")]),
]
CANDI_DOT_SEG = "SS_085"  # its label map named as one script expects the SS ones: SS_085.seg.nii.gz
CANDI_SHAPE = (12, 14, 10)
CANDI_AFFINE = np.array([[1.5, 0, 0, -9.0], [0, 1.5, 0, -12.0], [0, 0, 1.5, -7.0], [0, 0, 0, 1]])
# CMA value -> class id of the adapter's six structures; 16 (brain-stem) and 17 (hippocampus) are not chosen
CANDI_CLASSES = {2: 1, 3: 2, 4: 3, 41: 4, 42: 5, 43: 6}


def candi_labels(i: int) -> np.ndarray:
    seg = np.zeros(CANDI_SHAPE, np.int16)
    seg[0:5, 1:7, 1:4] = 2
    seg[0:5, 1:7, 4:6] = 3
    seg[1:3, 7:9, 1:3] = 4
    seg[6:11, 1:7, 1:4] = 41
    seg[6:11, 1:7, 4:6] = 42
    seg[7:9, 7:9 + i % 3, 1:3] = 43
    seg[4:8, 10:13, 6:9] = 16
    seg[5, 12, 8] = 17
    return seg


def expected_candi(i: int) -> np.ndarray:
    seg = candi_labels(i)
    out = np.zeros(seg.shape, np.uint8)
    for value, cls in CANDI_CLASSES.items():
        out[seg == value] = cls
    return out  # the fixture's affine is already RAS+


def candi_intensity(classes: np.ndarray) -> np.ndarray:
    return 100.0 + 10.0 * classes


def write_candi(root: Path) -> Path:
    """Three of the four SchizBull_2008 archives unpacked: HC into --data itself, the others into
    folders of their own; each holds <group>_Basic_Demographics.csv and one folder per subject."""
    i = 0
    for group, folder, rows in CANDI_GROUPS:
        base = root / folder if folder else root
        ol._write_csv(base / f"{group}_Basic_Demographics.csv", CANDI_HEADER, rows)
        for subject, *_ in rows:
            seg = candi_labels(i)
            ol.write_nifti(base / subject / f"{subject}_procimg.nii.gz",
                           candi_intensity(expected_candi(i)).astype(np.float32), CANDI_AFFINE)
            seg_name = f"{subject}.seg.nii.gz" if subject == CANDI_DOT_SEG else f"{subject}_seg.nii.gz"
            ol.write_nifti(base / subject / seg_name, seg, CANDI_AFFINE)
            i += 1
    return root


def candi_subjects() -> list[str]:
    return [r[0] for _, _, rows in CANDI_GROUPS for r in rows]


# ---------------------------------------------------------------------------- 3D-IRCADb-01

IRCADB_SIZE = 16  # rows = columns
IRCADB_SLICES = 6
IRCADB_PIXEL = 0.57
IRCADB_DZ = 1.6
# (patient number, DICOM PatientSex, sex in overview.csv or None, organ folders present, slices numbered
# from the top); patient 3 has an empty PatientSex and no overview row: unknown
IRCADB_PATIENTS = [
    (1, "F", None, ("bone", "liver", "leftkidney", "rightkidney", "lungs", "portalvein", "skin"), False),
    (2, "", "F", ("liver", "leftkidney", "rightkidney", "leftlung", "rightlung", "portalvein1", "spleen"), True),
    (3, "", None, ("liver", "leftkidney", "portalvein", "venoussystem"), False),
    (4, "M", None, ("liver", "spleen", "leftkidney", "rightkidney", "lungs", "portalvein", "artery"), True),
    (5, "", "M", ("liver", "rightkidney", "lungs", "portalvein"), False),
    (6, "M", "F", ("liver", "leftkidney", "rightkidney", "lungs", "portalvein", "livertumor01"), False),
    (7, "F", None, ("liver", "spleen", "leftkidney", "rightkidney", "leftlung", "rightlung", "portalvein"), True),
    (8, "", "male", ("liver", "leftkidney", "rightkidney", "lungs", "portalvein", "bone"), False),
]
# organ folder -> (slices, rows, cols) boxes in anatomical order (slice 0 the most inferior); the
# portal vein lies inside the liver, the two lungs are the halves of "lungs"
IRCADB_BOXES = {
    "liver": (slice(0, 3), slice(2, 10), slice(1, 8)),
    "spleen": (slice(0, 2), slice(2, 6), slice(11, 15)),
    "leftkidney": (slice(0, 2), slice(11, 14), slice(10, 14)),
    "rightkidney": (slice(0, 2), slice(11, 14), slice(2, 6)),
    "lungs": (slice(4, 6), slice(1, 12), slice(1, 15)),
    "leftlung": (slice(4, 6), slice(1, 12), slice(8, 15)),
    "rightlung": (slice(4, 6), slice(1, 12), slice(1, 8)),
    "portalvein": (slice(1, 3), slice(5, 7), slice(3, 6)),
    "portalvein1": (slice(1, 3), slice(5, 7), slice(3, 6)),
    "skin": (slice(0, 6), slice(0, 16), slice(0, 16)),
    "bone": (slice(0, 6), slice(14, 16), slice(6, 10)),
    "venoussystem": (slice(2, 4), slice(8, 10), slice(8, 10)),
    "artery": (slice(2, 4), slice(7, 9), slice(9, 11)),
    "livertumor01": (slice(0, 1), slice(3, 5), slice(2, 4)),
}
IRCADB_CLASS = {"liver": 1, "spleen": 2, "leftkidney": 3, "rightkidney": 4, "lungs": 5, "leftlung": 5,
                "rightlung": 5, "portalvein": 6, "portalvein1": 6}


def expected_ircadb(k: int) -> np.ndarray:
    """Classes of patient ``k`` (index) as (slices, rows, cols), slice 0 inferior: the stored
    DICOM layout, which axial slices keep; later classes overwrite earlier ones."""
    organs = IRCADB_PATIENTS[k][3]
    out = np.zeros((IRCADB_SLICES, IRCADB_SIZE, IRCADB_SIZE), np.uint8)
    for cls in range(1, 7):
        for organ in organs:
            if IRCADB_CLASS.get(organ) == cls:
                out[IRCADB_BOXES[organ]] = cls
    return out


def ircadb_hu(classes: np.ndarray) -> np.ndarray:
    return -100.0 + 40.0 * classes


def _ircadb_series(folder: Path, stack: np.ndarray, *, top_first: bool, sex: str, intercept: float) -> None:
    """image_0, image_1, ... without extension; z grows with the anatomical slice index."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    n = len(stack)
    for k in range(n):
        number = n - 1 - k if top_first else k
        ol.write_dicom_slice(folder / f"image_{number}", stack[k].astype(np.uint16), series_uid=series, study_uid=study,
                             position=(-4.5, -4.5, 100.0 + IRCADB_DZ * k), instance=number + 1, intercept=intercept,
                             extra={"PatientSex": sex, "PixelSpacing": [IRCADB_PIXEL, IRCADB_PIXEL],
                                    "SliceThickness": IRCADB_DZ})


def write_ircadb(root: Path, *, overview: bool = True) -> Path:
    """3Dircadb1.zip unzipped into --data, the zips inside each patient folder unzipped, and the
    optional overview.csv (name,sex) for patients whose PatientSex is empty."""
    base = root / "3Dircadb1"
    rows = []
    for k, (n, sex, csv_sex, organs, top_first) in enumerate(IRCADB_PATIENTS):
        patient = base / f"3Dircadb1.{n}"
        classes = expected_ircadb(k)
        _ircadb_series(patient / "PATIENT_DICOM", ircadb_hu(classes) + 1024, top_first=top_first, sex=sex,
                       intercept=-1024)
        for organ in organs:
            mask = np.zeros(classes.shape, np.uint16)
            mask[IRCADB_BOXES[organ]] = 255
            # the mask series carry the CT's rescale tags: their stored 0 / 255 must be read as stored
            _ircadb_series(patient / "MASKS_DICOM" / organ, mask, top_first=top_first, sex=sex, intercept=-1024)
        (patient / "PATIENT_DICOM.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # the zips stay beside
        if csv_sex is not None:
            rows.append([f"3Dircadb1.{n}" if n % 2 else str(n), csv_sex])
    if overview:
        ol._write_csv(root / "overview.csv", ("name", "sex"), rows)
    return root


# ---------------------------------------------------------------------------- SPIDER

SPIDER_OVERVIEW_HEADER = ("new_file_name", "subset", "num_vertebrae", "num_discs", "Manufacturer",
                          "ManufacturerModelName", "MagneticFieldStrength", "SeriesDescription", "MRAcquisitionType",
                          "SliceThickness", "SpacingBetweenSlices", "EchoTime", "PixelSpacing", "sex", "age")
# (stem, subset, sex) per series: patient 2's series disagree on nothing but come after a
# female row 0 (the reference gives every row row 0's sex); 5_t2's sex is blank, 6 has O
SPIDER_SERIES = [
    ("1_t1", "training", "F"),
    ("1_t2", "training", "F"),
    ("1_t2_SPACE", "training", "F"),
    ("2_t1", "training", "M"),
    ("2_t2", "training", "M"),
    ("3_t2", "validation", "F"),
    ("4_t1", "training", "M"),
    ("4_t2", "training", "M"),
    ("5_t2", "training", ""),
    ("6_t1", "validation", "O"),
    ("7_t2", "training", "M"),
    ("8_t1", "training", "F"),
    ("8_t2", "training", "F"),
]
SPIDER_HIDDEN = ("9_t1", "training", "M")  # in overview.csv, not in images/
# canonical RAS+ grid of every series: sagittal, 3.3 mm between slices, 0.5 mm in-plane
SPIDER_SHAPE = (6, 12, 16)  # (R, A, S)
SPIDER_SPACING = (3.3, 0.5, 0.5)
SPIDER_ORIGIN_RAS = np.array([-8.0, -3.0, 10.0])
# mask value -> class id; 8 (a vertebra above the seventh), 101 (partial) and 208 map to 0
SPIDER_CLASSES = {**{v: v for v in range(1, 8)}, 100: 8, **{200 + v: 8 + v for v in range(1, 8)}}


def spider_labels(i: int) -> np.ndarray:
    """Mask values on the canonical grid (R, A, S): vertebrae stacked along S, discs between,
    the canal behind them."""
    seg = np.zeros(SPIDER_SHAPE, np.int16)
    for v in range(1, 9):  # vertebra v at S = 2v - 2, its disc 200 + v above it
        seg[1:5, 2:7, 2 * v - 2] = v
    for d in range(1, 9):
        z = 2 * d - 1
        seg[1:5, 3:6, z] = 200 + d
    seg[2:4, 8:10, :] = 100
    seg[0, 0, i % 16] = 101
    return seg


def expected_spider(i: int) -> np.ndarray:
    seg = spider_labels(i)
    out = np.zeros(seg.shape, np.uint8)
    for value, cls in SPIDER_CLASSES.items():
        out[seg == value] = cls
    return out


def spider_intensity(classes: np.ndarray) -> np.ndarray:
    return 50.0 + 10.0 * classes


def spider_affine() -> np.ndarray:
    a = np.diag([*SPIDER_SPACING, 1.0])
    a[:3, 3] = SPIDER_ORIGIN_RAS
    return a


def _lps(ras_index: tuple[int, int, int]) -> tuple[float, float, float]:
    """LPS position of a canonical voxel index."""
    p = SPIDER_ORIGIN_RAS + np.array(SPIDER_SPACING) * np.array(ras_index)
    return (-p[0], -p[1], p[2])


def write_mha_canonical(path: Path, canonical: np.ndarray, *, layout: str) -> None:
    """Write a canonical (R, A, S) array as .mha in one of two storage orders with the same
    physical grid: ``lps`` index axes L, P, S; ``sagittal`` index axes P, I, L (the slice axis last)."""
    import SimpleITK as sitk

    nx, ny, nz = canonical.shape
    if layout == "lps":
        stored = canonical[::-1, ::-1, :]  # (i, j, k) = (L, P, S)
        direction = (1, 0, 0, 0, 1, 0, 0, 0, 1)
        spacing = SPIDER_SPACING
        origin = _lps((nx - 1, ny - 1, 0))
    elif layout == "sagittal":
        stored = np.transpose(canonical[::-1, ::-1, ::-1], (1, 2, 0))  # (i, j, k) = (P, I, L)
        direction = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # row-major: columns are P, I, L in LPS
        spacing = (SPIDER_SPACING[1], SPIDER_SPACING[2], SPIDER_SPACING[0])
        origin = _lps((nx - 1, ny - 1, nz - 1))
    else:
        raise ValueError(layout)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(stored, (2, 1, 0))))  # SimpleITK wants (k, j, i)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction])
    img.SetOrigin([float(o) for o in origin])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_spider(root: Path, *, sex_column: str = "sex", spelling: dict[str, str] | None = None,
                 bom: bool = False) -> Path:
    """images/ and masks/ unzipped beside overview.csv; every other series stored in the sagittal
    axis order, the rest in LPS order. ``sex_column`` / ``spelling`` rewrite the sex header and values;
    ``bom`` starts overview.csv with a byte-order mark, as a spreadsheet's UTF-8 export does."""
    header = tuple(sex_column if c == "sex" else c for c in SPIDER_OVERVIEW_HEADER)
    rows = []
    for i, (stem, subset, sex) in enumerate([*SPIDER_SERIES, SPIDER_HIDDEN]):
        spelt = (spelling or {}).get(sex, sex)
        rows.append([stem, subset, 9, 9, "SIEMENS", "Avanto", "1.5", "t2_tse_sag", "2D", "3.3", "3.3", "100",
                     "0.5\\0.5", spelt, ""])
        if (stem, subset, sex) == SPIDER_HIDDEN:
            continue
        layout = "sagittal" if i % 2 else "lps"
        seg = spider_labels(i)
        write_mha_canonical(root / "images" / f"{stem}.mha", spider_intensity(expected_spider(i)).astype(np.float32),
                            layout=layout)
        write_mha_canonical(root / "masks" / f"{stem}.mha", seg.astype(np.uint16), layout=layout)
    ol._write_csv(root / "overview.csv", header, rows)
    if bom:
        (root / "overview.csv").write_text("\ufeff" + (root / "overview.csv").read_text(), encoding="utf-8")
    ol._write_csv(root / "radiological_gradings.csv",
                  ("Patient", "IVD label", "Modic", "UP endplate", "LOW endplate", "Spondylolisthesis",
                   "Disc herniation", "Disc narrowing", "Disc bulging", "Pfirrman grade"), [[1, 1, 0, 0, 0, 0, 0, 1, 0, 3]])
    return root
