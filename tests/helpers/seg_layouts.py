"""Small copies of the 2D segmentation releases, laid out exactly as the real ones.

As in official_layouts: each ``write_*`` function writes the release's folder and file
names, value spellings and messy values into ``root`` and returns the path to pass as
``--data``; masks are written in the release's own encoding so tests can decode them
independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers import official_layouts as ol


def blob(shape: tuple[int, int], seed: int, value: int = 255) -> np.ndarray:
    """A uint8 mask holding ``value`` in a seeded rectangle, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    h, w = shape
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    out = np.zeros(shape, np.uint8)
    out[top : top + h // 3 + 1, left : left + w // 3 + 1] = value
    return out


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "PNG")


# ---------------------------------------------------------------------------- HAM10000 lesion masks

HAM_MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
HAM_SHAPE = (45, 60)  # H x W of write_ham10000's images (600 x 450 scaled down)


def write_ham10000_seg(root: Path, *, nested: bool = False) -> Path:
    """HAM10000 (as official_layouts.write_ham10000) plus the lesion-mask folder; returns root."""
    ol.write_ham10000(root)
    folder = root / HAM_MASK_DIR / (HAM_MASK_DIR if nested else "")
    for i, row in enumerate(ol.HAM_ROWS):
        _png(folder / f"{row[1]}_segmentation.png", blob(HAM_SHAPE, seed=100 + i))
    return root


# ---------------------------------------------------------------------------- Montgomery County CXR

MONTGOMERY_SET = "NLM-MontgomeryCXRSet/MontgomerySet"
# (stem, sex letter, age, free text); 0163_1 is the same person as 0162_1, 0003_0 has sex O
MONTGOMERY_ROWS = [
    ("MCUCXR_0001_0", "F", "027Y", "normal"),
    ("MCUCXR_0002_0", "M", "064Y", "normal"),
    ("MCUCXR_0003_0", "O", "045Y", "normal"),
    ("MCUCXR_0004_0", "F", "060Y", "normal"),
    ("MCUCXR_0006_0", "F", "038Y", "normal"),
    ("MCUCXR_0104_1", "M", "035Y", "bilateral upper lobe cavitary TB"),
    ("MCUCXR_0162_1", "M", "071Y", "right upper lobe infiltrates"),
    ("MCUCXR_0163_1", "M", "071Y", "NO REPORT (same pt as MCUCXR_0162_1)"),
    ("MCUCXR_0170_1", "F", "052Y", "left apical scarring"),
    ("MCUCXR_0173_1", "M", "041Y", "miliary pattern"),
]


def montgomery_shape(i: int) -> tuple[int, int]:
    """H x W: the release has portrait and landscape radiographs (4892 x 4020 scaled down)."""
    return (24, 20) if i % 3 else (20, 24)


def write_montgomery(root: Path) -> Path:
    """The Montgomery set as unzipped (NLM-MontgomeryCXRSet/MontgomerySet/...); returns root.

    Radiographs are 16-bit grey PNGs with 12-bit content; masks 0 / 255 grey PNGs.
    """
    base = root / MONTGOMERY_SET
    for i, (stem, sex, age, text) in enumerate(MONTGOMERY_ROWS):
        shape = montgomery_shape(i)
        pixels = np.random.default_rng(i).integers(0, 4096, shape, dtype=np.uint16)
        _png(base / "CXR_png" / f"{stem}.png", pixels)
        left = np.zeros(shape, np.uint8)
        left[4:14, 2:8] = 255
        right = np.zeros(shape, np.uint8)
        right[4 + i % 3 : 16, 11:17] = 255
        _png(base / "ManualMask" / "leftMask" / f"{stem}.png", left)
        _png(base / "ManualMask" / "rightMask" / f"{stem}.png", right)
        reading = base / "ClinicalReadings" / f"{stem}.txt"
        reading.parent.mkdir(parents=True, exist_ok=True)
        reading.write_text(f"Patient's Sex: {sex} \nPatient's Age: {age}\n{text}\n")
    return root


# ---------------------------------------------------------------------------- Harvard-FairSeg

# (age in years, gender, race, ethnicity, language, maritalstatus) as the README's codes
FAIRSEG_ROWS = [
    (56.56, 0, 0, 0, 0, 1),
    (72.10, 1, 2, 0, 0, 0),
    (60.00, 0, 1, 1, 1, 2),
    (45.31, 1, 2, -1, -1, 0),
    (81.02, 0, 2, 0, 2, 3),
    (59.99, 1, 0, 0, 0, -1),
    (33.47, 0, 1, 0, 0, 4),
    (67.80, 1, 2, 0, 0, 0),
    (64.25, 0, 0, 0, 0, 1),
    (52.66, 1, 1, 1, 1, 0),
    (77.00, 0, 2, 0, 0, 2),  # written with the older README's keys
    (41.90, 0, 2, 0, 0, 1),  # written with the training code's keys
]
FAIRSEG_SHAPE = (24, 20)  # H x W
FAIRSEG_RAW_RACE = {0: 2, 1: 3, 2: 7}  # the training code's raw race codes


def fairseg_mask(i: int) -> np.ndarray:
    """Stored encoding: 0 background, -1 rim, -2 cup (inside the disc)."""
    out = np.zeros(FAIRSEG_SHAPE, np.int8)
    top, left = 4 + i % 4, 3 + i % 3
    out[top : top + 12, left : left + 12] = -1
    out[top + 3 : top + 8, left + 4 : left + 9] = -2
    return out


def write_fairseg(root: Path) -> Path:
    """Harvard-FairSeg as on Hugging Face: data_NNNNN.npz files and ReadMe/; returns root."""
    (root / "ReadMe").mkdir(parents=True, exist_ok=True)
    (root / "ReadMe" / "data_description.txt").write_text("Harvard-FairSeg: 10,000 samples of SLO fundus images.\n")
    last = len(FAIRSEG_ROWS)
    for i, (age, gender, race, eth, lang, marital) in enumerate(FAIRSEG_ROWS, start=1):
        image = np.random.default_rng(i).integers(0, 87, FAIRSEG_SHAPE, dtype=np.uint8)
        path = root / f"data_{i:05d}.npz"
        common = {"gender": gender, "language": lang}
        if i == last - 1:
            ol._npz(path, fundus_slo=image, disc_cup_borders=fairseg_mask(i).astype(np.int16), age=age, race=race,
                    ethnicity=eth, marriagestatus=marital, **common)
        elif i == last:
            ol._npz(path, fundus_slo=image, disc_cup=fairseg_mask(i).astype(np.int64), axes_cup=np.zeros(4),
                    axes_disc=np.zeros(4), md=-1.2, tds=np.zeros(52), pid=f"P{i:04d}", maritalstatus=marital,
                    hispanic=eth, race=FAIRSEG_RAW_RACE[race], age=age * 365, datadir="/data/fairseg", **common)
        else:
            ol._npz(path, slo_fundus=image, disc_cup_mask=fairseg_mask(i), age=age, race=race, ethnicity=eth,
                    maritalstatus=marital, **common)
    return root


# ---------------------------------------------------------------------------- TUSC

TUSC_HEADER = ("annot_id", "age", "sex", "location", "size_x", "size_y", "size_z", "ti-rads_composition",
               "ti-rads_echogenicity", "ti-rads_shape", "ti-rads_margin", "ti-rads_echogenicfoci", "ti-rads_level",
               "histopath_diagnosis")
# (annot_id, age, sex, frames in the clip)
TUSC_NODULES = [
    ("1_", "52", "Female", 3),
    ("2_", "67", "Male", 2),
    ("3_", "45", "Female", 2),
    ("4_", "71", "Female", 3),
    ("5_", "38", "Male", 2),
    ("6_", "60", "Female", 2),
    ("7_", "29", "Female", 2),
    ("8_", "", "Male", 2),
    ("9_", "58", "Female", 2),
]
TUSC_SHAPE = (16, 20)  # H x W


def write_tusc(root: Path, *, frame_axes: int = 0) -> Path:
    """dataset.hdf5 and metadata.csv as downloaded; returns root.

    Frames are listed clip by clip as in the release; ``frame_axes`` > 0 stores every frame
    with that many leading planes (the 3-D frames some readers average).
    """
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    annot, numbers, images, masks = [], [], [], []
    for k, (annot_id, _, _, n) in enumerate(TUSC_NODULES):
        for f in range(n):
            annot.append(annot_id.encode())
            numbers.append(f)
            shape = ((frame_axes,) if frame_axes else ()) + TUSC_SHAPE
            images.append(np.random.default_rng(10 * k + f).integers(0, 256, shape, dtype=np.uint8))
            masks.append(blob(TUSC_SHAPE, seed=10 * k + f))
    with h5py.File(root / "dataset.hdf5", "w") as h:
        h["annot_id"] = np.array(annot, dtype="S")
        h["frame_num"] = np.array(numbers, dtype=np.int64)
        h["image"] = np.stack(images)
        h["mask"] = np.stack(masks)
    rows = [[a, age, sex, "Right", "1.2", "0.9", "1.1", "solid", "hypoechoic", "wider-than-tall", "smooth", "none",
             "TR4", "Benign"] for a, age, sex, _ in TUSC_NODULES]
    ol._write_csv(root / "metadata.csv", TUSC_HEADER, rows)
    return root
