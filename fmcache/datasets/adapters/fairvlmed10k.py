"""Harvard-FairVLMed (FairVLMed10k): SLO fundus images in NPZ files, glaucoma vs not.

Also holds what Harvard-GF3300 shares with it (same lab, same release style): the
``data_summary.csv`` reader, the NPZ index over split folders and the attribute rules for
the columns both summaries spell alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import (
    as_gray,
    blank_to_none,
    cache_name,
    option,
    read_csv,
    read_npz_array,
    require_columns,
)
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.pixels import open_image
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet, RawTable
from fmcache.errors import DatasetError

KEY = "fairvlmed10k"
SUMMARY = "data_summary.csv"
COLUMNS = ("filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "glaucoma")
# FairCLIP's README says Test/, its code opens Testing/: accept both
SPLIT_DIRS = {"training": ("Training",), "validation": ("Validation",), "test": ("Test", "Testing")}
USE = {"training": "training", "validation": "validation", "test": "test"}
IMAGE_KEY = "slo_fundus"
NPZ_NAME = re.compile(r"^data_\d{5}\.npz$")
JPG_EXPORT = re.compile(r"^slo_fundus_(\d{5})\.jpg$")  # FairMedFM's JPEG exports of slo_fundus
GLAUCOMA = {"yes": 1, "no": 0}
GROUPS_OPTION = "binary (default): two groups per attribute; multi: race (asian, black, white), language and marital status in all their groups"


# ---------------------------------------------------------------- shared with Harvard-GF3300


def find_summary(root: Path, key: str, places: Iterable[str], hint: str) -> tuple[Path, Path]:
    """(base folder, summary file): the first of ``places`` (relative to root) holding data_summary.csv."""
    for place in places:
        path = root / place / SUMMARY
        if path.is_file():
            # some copies keep the summary under ReadMe/, beside the split folders' parent
            return (path.parent.parent if path.parent.name == "ReadMe" else path.parent), path
    raise DatasetError(f"{key}: {SUMMARY} not found in {root} ({', '.join(p for p in places)}); {hint}")


def read_summary(path: Path, key: str, columns: Iterable[str]) -> pd.DataFrame:
    """data_summary.csv as text, stripped, with the official columns checked."""
    df = read_csv(path, key)
    require_columns(df, columns, key=key, file=path.name)
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def npz_index(
    base: Path,
    key: str,
    containers: Iterable[str],
    split_dirs: Iterable[str],
    pattern: re.Pattern[str],
    extra: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """filename -> path relative to ``base`` for every data file in the split folders present.

    ``extra`` maps another file name (an export) to the data file name it stands for; a
    real NPZ wins over an export. A data file in two folders is an error: which copy to
    read would be a guess. Returns the index and the folders found.
    """
    folders, seen = [], set()
    for c in containers:
        for d in split_dirs:
            p = base / c / d
            if p.is_dir() and (ino := (p.stat().st_dev, p.stat().st_ino)) not in seen:
                seen.add(ino)  # test/ and Test/ are one folder on a case-insensitive disk
                folders.append(d if c == "." else f"{c}/{d}")
    index: dict[str, str] = {}
    exports: dict[str, str] = {}
    for folder in folders:
        for p in sorted((base / folder).iterdir()):
            if pattern.match(p.name):
                if p.name in index:
                    raise DatasetError(
                        f"{key}: {p.name} is in both {index[p.name].rsplit('/', 1)[0]}/ and {folder}/ below {base}; keep one copy"
                    )
                index[p.name] = f"{folder}/{p.name}"
            elif extra is not None and (name := extra(p.name)) is not None:
                exports.setdefault(name, f"{folder}/{p.name}")
    for name, rel in exports.items():
        index.setdefault(name, rel)
    return index, folders


def npz_paths(
    summary: pd.DataFrame, index: Mapping[str, str], folders: list[str], use_dirs: Mapping[str, tuple[str, ...]], key: str
) -> pd.Series:
    """Each summary row's file; a file not found gets the path its `use` says, so checks can name it."""

    def one(filename: str, use: str) -> str:
        if filename in index:
            return index[filename]
        names = use_dirs.get(use.lower())
        if names is None:
            raise DatasetError(
                f"{key}: {filename} not found in {', '.join(folders) or 'any split folder'} and its use value {use!r} "
                f"names no split folder (known: {', '.join(use_dirs)})"
            )
        present = [f for f in folders if f.rsplit("/", 1)[-1] in names]
        return f"{present[0] if present else names[0]}/{filename}"

    uses = summary["use"] if "use" in summary.columns else pd.Series([""] * len(summary), index=summary.index)
    return pd.Series([one(f, u) for f, u in zip(summary["filename"], uses)], index=summary.index, dtype=object)


def yes_no(values: pd.Series, key: str, source: str) -> np.ndarray:
    """glaucoma yes/no -> 1/0; any other spelling is an error naming it."""
    bad = values[~values.str.lower().isin(GLAUCOMA)]
    if len(bad):
        raise DatasetError(f"{key}: unexpected glaucoma value {bad.iloc[0]!r} in {source}; expected yes or no")
    return values.str.lower().map(GLAUCOMA).to_numpy().astype(np.int8)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit pixels without changing what the release's own viewers show.

    uint8 is kept as is (SLO fundus images are dark, max ~86: stretching each image would
    change its contrast per patient). Floats in [0, 1] are scaled by 255; other values
    within [0, 255] are rounded; anything else is min-max scaled to [0, 255].
    """
    if array.dtype == np.uint8:
        return array
    x = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0 and array.dtype.kind == "f":
        x = x * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def race_rule(groups: str, source: str) -> AttributeRule:
    if groups == "multi":
        return categorical({"asian": "asian", "black": "black", "white": "white"}, groups=("asian", "black", "white"), source=source)
    return categorical(
        {"white": "white", "asian": "non-white", "black": "non-white"}, groups=("white", "non-white"), source=source
    )


def ethnicity_rule(source: str) -> AttributeRule:
    return categorical(
        {"non-hispanic": "non-hispanic", "hispanic": "hispanic"},
        groups=("non-hispanic", "hispanic"),
        unknown=("unknown",),
        source=source,
    )


def marital_rule(groups: str, source: str, extra: Mapping[str, str] | None = None) -> AttributeRule:
    """Married or partnered vs not (binary), or the five states; ``extra`` adds other spellings of them."""
    states = {
        "married or partnered": "married or partnered",
        "single": "single",
        "divorced": "divorced",
        "widowed": "widowed",
        "legally separated": "legally separated",
        **(extra or {}),
    }
    if groups == "multi":
        return categorical(states, groups=tuple(dict.fromkeys(states.values())), unknown=("unknown",), source=source)
    binary = {k: "partnered" if v == "married or partnered" else "not partnered" for k, v in states.items()}
    return categorical(binary, groups=("partnered", "not partnered"), unknown=("unknown",), source=source)


def language_rule(groups: str, source: str, other: str) -> AttributeRule:
    """English vs not (binary), or english / spanish / other; ``other`` is the release's spelling."""
    if groups == "multi":
        return categorical(
            {"english": "english", "spanish": "spanish", other: "other"},
            groups=("english", "spanish", "other"),
            unknown=("unknown",),
            source=source,
        )
    return categorical(
        {"english": "english", "spanish": "non-english", other: "non-english"},
        groups=("english", "non-english"),
        unknown=("unknown",),
        source=source,
    )


def sex_rule(source: str) -> AttributeRule:
    return categorical({"male": "male", "female": "female"}, groups=("male", "female"), source=source)


def raw_attributes(summary: pd.DataFrame) -> dict[str, pd.Series]:
    """raw/<attr> columns from the summary's demographic columns (same names in both releases)."""
    cols = {"sex": "gender", "age": "age", "race": "race", "ethnicity": "ethnicity", "language": "language",
            "marital_status": "maritalstatus"}
    return {f"raw/{a}": blank_to_none(summary[c]) for a, c in cols.items() if c in summary.columns}


# ---------------------------------------------------------------- FairVLMed10k


def _rules(groups: str) -> dict[str, AttributeRule]:
    src = f"{SUMMARY} column "
    return {
        "sex": sex_rule(src + "gender"),
        "age": threshold(60, source=src + "age"),
        "race": race_rule(groups, src + "race"),
        "ethnicity": ethnicity_rule(src + "ethnicity"),
        "language": language_rule(groups, src + "language", other="other"),
        "marital_status": marital_rule(groups, src + "maritalstatus"),
    }


def _export_name(name: str) -> str | None:
    m = JPG_EXPORT.match(name)
    return f"data_{m.group(1)}.npz" if m else None


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of FairVLMed10k, one row per NPZ (one per patient).

    Parameters
    ----------
    root
        ``--data``: the ``FairVLMed`` folder (``data_summary.csv``, ``Training/``,
        ``Validation/``, ``Test/``) or the folder holding it.
    options
        ``groups`` (binary | multi).

    Returns
    -------
    RawTable
        id (filename stem), subject (= id), path (the NPZ, or a slo_fundus JPEG export),
        label/glaucoma, raw/sex, raw/age, raw/race, raw/ethnicity, raw/language,
        raw/marital_status.
    """
    groups = option(options, KEY, "groups", ("binary", "multi"), "binary")
    base, summary_path = find_summary(
        root, KEY, (".", "ReadMe", "FairVLMed", "FairVLMed/ReadMe"),
        "pass --data the FairVLMed folder (with data_summary.csv, Training/, Validation/, Test/)",
    )
    summary = read_summary(summary_path, KEY, COLUMNS)
    split_dirs = [d for names in SPLIT_DIRS.values() for d in names]
    index, folders = npz_index(base, KEY, (".",), split_dirs, NPZ_NAME, _export_name)
    if not folders:
        raise DatasetError(f"{KEY}: no Training/, Validation/ or Test/ folder in {base}; unpack the NPZ folders beside {SUMMARY}")
    ids = summary["filename"].str.replace(r"\.npz$", "", regex=True)
    raw = pd.DataFrame({"id": ids, "subject": ids, "path": npz_paths(summary, index, folders, SPLIT_DIRS, KEY)})
    raw["path"] = [p if base == root else (base / p).relative_to(root).as_posix() for p in raw["path"]]
    raw["label/glaucoma"] = yes_no(summary["glaucoma"], KEY, f"{SUMMARY} column glaucoma")
    for c, v in raw_attributes(summary).items():
        raw[c] = v
    return RawTable(
        raw,
        name=cache_name(KEY, {"groups": groups}, {"groups": "binary"}),
        attribute_rules=_rules(groups) if groups == "multi" else None,
    )


def load(root: Path, row: pd.Series) -> Image.Image:
    """The SLO fundus image of a row as RGB: ``slo_fundus`` from the NPZ (see :func:`to_uint8`).

    Rows whose path is a JPEG export are opened as images.
    """
    path = Path(row["path"])
    path = path if path.is_absolute() else root / path
    if path.suffix.lower() != ".npz":
        return open_image(path)
    array = as_gray(read_npz_array(path, KEY, (IMAGE_KEY,)), path)
    return Image.fromarray(to_uint8(array), mode="L").convert("RGB")


LAYOUT = """\
FairVLMed/ with data_summary.csv and Training/, Validation/, Test/
holding data_NNNNN.npz
<data>/   --data: this folder, or the folder holding FairVLMed/
  data_summary.csv
      filename,age,gender,race,ethnicity,language,maritalstatus,note,
      gpt4_summary,glaucoma,use
      (also found under ReadMe/, as in some copies)
  gpt-4_summarized_notes.csv
      not read (the notes are not needed for classification)
  Training/data_00001.npz ...
      7,000 files; arrays slo_fundus (664 x 512, grayscale), glaucoma, ...
  Validation/data_NNNNN.npz   1,000 files
  Test/data_NNNNN.npz         2,000 files (Testing/ also accepted)
  Training/slo_fundus_00001.jpg
      JPEG exports of slo_fundus are used where the NPZ is absent
Labels and groups come from data_summary.csv; images from each NPZ's
slo_fundus array (uint8 kept as is, no contrast stretch; other dtypes scaled
to 8 bits). One image per patient: the subject is the file name. Our own
patient-level split replaces the release's `use` column.
Label: glaucoma yes -> 1, no -> 0. Sex: gender male / female. Age: old if
>= 60 (2-decimal floats).
Race: white vs non-white (asian, black); ethnicity: non-hispanic / hispanic
(unknown -> unknown); language: english vs non-english (spanish, other;
unknown -> unknown); marital status: partnered (married or partnered) vs not
(single, divorced, widowed, legally separated; unknown -> unknown).
groups=multi keeps race, language and marital status in all their groups.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="Harvard-FairVLMed (FairVLMed10k)",
    modality="SLO fundus",
    version="1",
    read=read,
    labels=("glaucoma",),
    task="binary",
    attributes=_rules("binary"),
    layout=LAYOUT,
    obtain=(
        "Harvard Ophthalmology AI Lab (CC BY-NC-ND 4.0, request access): Google Drive link in the FairCLIP README "
        "(github.com/Harvard-Ophthalmology-AI-Lab/FairCLIP) or the Hugging Face mirror under harvardairobotics"
    ),
    prompts={
        "default": PromptSet(
            templates=(
                "a scanning laser ophthalmoscope fundus image of a {}",
                "an SLO fundus image with the diagnosis {}",
                "a fundus photograph: {}",
            ),
            classes=("normal", "glaucoma"),
            label="glaucoma",
        )
    },
    load=load,
    options={"groups": GROUPS_OPTION},
)
