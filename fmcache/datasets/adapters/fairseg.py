"""Harvard-FairSeg: SLO fundus images with optic cup and rim masks, one NPZ per patient.

Images, masks and attributes all live in the NPZ files; three generations of key names
exist (see GENERATIONS) and are all read.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import as_gray, read_npz_array
from fmcache.datasets.adapters.fairvlmed10k import (
    ethnicity_rule,
    language_rule,
    marital_rule,
    race_rule,
    sex_rule,
    to_uint8,
)
from fmcache.datasets.attributes import threshold
from fmcache.datasets.spec import AttributeRule, DatasetSpec, RawTable
from fmcache.errors import DatasetError

KEY = "fairseg"
# data_00001.npz in the release; FairMedFM's copies use six digits
NPZ_NAME = re.compile(r"^data_\d{5,6}\.npz$")
IMAGE_KEYS = ("slo_fundus", "fundus_slo", "fundus")
# mask codes -> classes: -2 is the structure nested inside the other, the cup; -1 the rim
MASK_CODES = {0: 0, -2: 1, -1: 2}
CLASSES = ("optic cup", "rim")
SEX = {0: "female", 1: "male"}
RACE = {0: "asian", 1: "black", 2: "white"}
ETHNICITY = {0: "non-hispanic", 1: "hispanic", -1: "unknown"}
LANGUAGE = {0: "english", 1: "spanish", 2: "other", -1: "unknown"}
MARITAL = {0: "married or partnered", 1: "single", 2: "divorced", 3: "widowed", 4: "legally separated", -1: "unknown"}


@dataclass(frozen=True)
class Generation:
    """Key names and codes of one generation of the NPZ files, told apart by the mask key."""

    mask: str
    marital: str
    ethnicity: str
    race: Mapping[int, str]
    age_unit: float  # stored age / age_unit = years


GENERATIONS = (
    Generation("disc_cup_mask", "maritalstatus", "ethnicity", RACE, 1.0),  # current README
    Generation("disc_cup_borders", "marriagestatus", "ethnicity", RACE, 1.0),  # older README
    # the FairSeg training code's files: raw race codes, age in days, a patient id
    Generation("disc_cup", "maritalstatus", "hispanic", {2: "asian", 3: "black", 7: "white"}, 365.0),
)
MASK_KEYS = tuple(g.mask for g in GENERATIONS)


def _files(root: Path) -> dict[str, Path]:
    """data_NNNNN.npz below root (any folder) by name; one name in two places is an error."""
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("data_*.npz")):
        if NPZ_NAME.match(p.name):
            if p.name in found:
                raise DatasetError(f"{KEY}: {p.name} is in both {found[p.name].parent} and {p.parent}; keep one copy")
            found[p.name] = p
    if not found:
        raise DatasetError(f"{KEY}: no data_NNNNN.npz files below {root}; pass --data the folder holding the NPZ files")
    return found


def _code(value: np.ndarray | None, table: Mapping[int, str], path: Path, name: str) -> str | None:
    if value is None:
        return None
    x = float(np.asarray(value).reshape(-1)[0])
    if np.isnan(x):
        return None
    if not x.is_integer() or int(x) not in table:
        raise DatasetError(f"{KEY}: {path} has {name}={x:g}; known codes: "
                           f"{', '.join(f'{k} {v}' for k, v in table.items())}; replace the file with the release's copy")
    return table[int(x)]


def _attributes(path: Path) -> dict[str, object]:
    """The raw attributes of one NPZ, codes turned into the README's names, age in years."""
    try:
        with np.load(path, allow_pickle=False) as z:
            gen = next((g for g in GENERATIONS if g.mask in z.files), None)
            if gen is None:
                raise DatasetError(f"{KEY}: {path.name} has no array {' or '.join(MASK_KEYS)} (found: "
                                   f"{', '.join(z.files)}); it is not a FairSeg file")

            def get(name: str) -> np.ndarray | None:
                return z[name] if name in z.files else None

            age = get("age")
            pid = get("pid")
            return {
                "subject": None if pid is None else str(np.asarray(pid).reshape(-1)[0]),
                "raw/sex": _code(get("gender"), SEX, path, "gender"),
                "raw/age": None if age is None else round(float(np.asarray(age).reshape(-1)[0]) / gen.age_unit, 2),
                "raw/race": _code(get("race"), gen.race, path, "race"),
                "raw/ethnicity": _code(get(gen.ethnicity), ETHNICITY, path, gen.ethnicity),
                "raw/language": _code(get("language"), LANGUAGE, path, "language"),
                "raw/marital_status": _code(get(gen.marital), MARITAL, path, gen.marital),
            }
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{KEY}: cannot read {path}: {e.__class__.__name__}: {e} (file corrupt or not an NPZ)") from None


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of Harvard-FairSeg, one row per NPZ (one per patient).

    Returns
    -------
    RawTable
        id (file stem), subject (pid where the file has one, else the stem), path (the NPZ),
        raw/sex, raw/age (years), raw/race, raw/ethnicity, raw/language, raw/marital_status.
    """
    files = _files(root)
    rows = []
    for name, path in files.items():
        facts = _attributes(path)
        stem = name[: -len(".npz")]
        rows.append({"id": stem, **facts, "subject": facts["subject"] or stem,
                     "path": path.relative_to(root).as_posix()})
    return RawTable(pd.DataFrame(rows))


def _path(root: Path, row: pd.Series) -> Path:
    path = Path(row["path"])
    return path if path.is_absolute() else root / path


def load(root: Path, row: pd.Series) -> Image.Image:
    """The SLO fundus image as RGB (uint8 kept as is, as for FairVLMed10k)."""
    path = _path(root, row)
    return Image.fromarray(to_uint8(as_gray(read_npz_array(path, KEY, IMAGE_KEYS), path)), mode="L").convert("RGB")


def mask(root: Path, row: pd.Series) -> np.ndarray:
    """0 background, 1 optic cup (stored -2), 2 rim (stored -1); any other stored value is an error."""
    path = _path(root, row)
    stored = as_gray(read_npz_array(path, KEY, MASK_KEYS, what="the mask"), path)
    known = np.isin(stored, list(MASK_CODES))
    if not known.all():
        raise DatasetError(f"{KEY}: mask of {path} holds value {stored[~known].flat[0].item()!r}; expected 0 (background), "
                           f"-2 (cup) or -1 (rim): replace the file with the release's copy")
    out = np.zeros(stored.shape, np.uint8)
    for code, cls in MASK_CODES.items():
        out[stored == code] = cls
    return out


def _rules() -> dict[str, AttributeRule]:
    src = "NPZ array "
    return {
        "sex": sex_rule(src + "gender (0 female, 1 male)"),
        "age": threshold(60, source=src + "age"),
        "race": race_rule("binary", src + "race (0 asian, 1 black, 2 white)"),
        "ethnicity": ethnicity_rule(src + "ethnicity / hispanic"),
        "language": language_rule("binary", src + "language", other="other"),
        "marital_status": marital_rule("binary", src + "maritalstatus / marriagestatus"),
    }


LAYOUT = """\
Harvard-FairSeg: data_00001.npz ... data_10000.npz, in any folders below
<data>
<data>/
  data_00001.npz ...   (also in subfolders; 6-digit names accepted)
      slo_fundus        SLO fundus image, grey uint8
      disc_cup_mask     0 background, -1 rim, -2 optic cup
      age, gender (0 female, 1 male), race (0 asian, 1 black, 2 white),
      ethnicity (0 non-hispanic, 1 hispanic, -1 unknown), language
      (0 english, 1 spanish, 2 others, -1 unknown), maritalstatus
      (0 married or partnered, 1 single, 2 divorced, 3 widowed,
      4 legally separated, -1 unknown)
  Older files: fundus_slo, disc_cup_borders, marriagestatus. Training-code
  files: fundus_slo, disc_cup, hispanic, pid, race 2/3/7, age in days.
  ReadMe/ and the train / test lists are not read.
Classes: 1 optic cup (stored -2, nested inside the disc), 2 rim (stored -1).
One image per patient: the subject is the file name (pid where present).
Sex: male / female. Age: old if >= 60. Race: white vs non-white. Ethnicity,
language (english vs not), marital status (partnered vs not): -1 -> unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="Harvard-FairSeg",
    modality="SLO fundus",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes=_rules(),
    layout=LAYOUT,
    obtain=(
        "Harvard Ophthalmology AI Lab (CC BY-NC-ND 4.0, request access): Google Drive link in the FairSeg README "
        "(github.com/Harvard-Ophthalmology-AI-Lab/FairSeg) or Hugging Face harvardairobotics/Harvard-FairSeg"
    ),
    load=load,
    mask=mask,
    mask_classes=CLASSES,
)
