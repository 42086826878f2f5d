"""Stanford thyroid ultrasound cine-clip set (TUSC): nodule masks on every frame of the clips.

Frames and masks live in one HDF5 file (read with h5py); sex and age per nodule in
metadata.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import blank_to_none, read_csv, require_columns
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.masks import FOREGROUND
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.errors import DatasetError

KEY = "tusc"
HDF5, METADATA = "dataset.hdf5", "metadata.csv"
KEYS = ("annot_id", "frame_num", "image", "mask")


def _open(path: Path) -> Any:
    import h5py  # only for this release; the other adapters never pay for it

    if not path.is_file():
        raise DatasetError(f"{KEY}: {path} not found; pass --data the folder holding {HDF5} and {METADATA}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{KEY}: cannot read {path}: {e} (file corrupt or not HDF5)") from None
    missing = [k for k in KEYS if k not in f]
    if missing:
        found = ", ".join(f.keys())
        f.close()
        raise DatasetError(f"{KEY}: {path.name} has no dataset {missing[0]!r} (found: {found}); it is not the TUSC file")
    return f


def _frame(path: Path, name: str, index: int) -> np.ndarray:
    """One frame of ``image`` or ``mask``, with errors naming the file and frame."""
    with _open(path) as f:
        try:
            return np.asarray(f[name][index])
        except (OSError, ValueError, IndexError) as e:
            raise DatasetError(f"{KEY}: cannot read {name} frame {index} of {path}: {e} (file truncated?)") from None


def read(root: Path, options: Mapping[str, str]) -> RawTable:
    """Raw table of TUSC, one row per frame; the nodule's annot_id is the subject.

    Returns
    -------
    RawTable
        id (<annot_id>frame<frame_num>), subject (annot_id), path (dataset.hdf5),
        meta/index (the frame's row in the HDF5 arrays), raw/sex, raw/age.
    """
    with _open(root / HDF5) as f:
        annot = [a.decode() if isinstance(a, bytes) else str(a) for a in f["annot_id"][:]]
        frames = np.asarray(f["frame_num"][:]).reshape(-1)
    if len(annot) != len(frames):
        raise DatasetError(f"{KEY}: {HDF5} has {len(annot)} annot_id but {len(frames)} frame_num entries")
    annot = [a.strip() for a in annot]
    meta = read_csv(root / METADATA, KEY) if (root / METADATA).is_file() else None
    if meta is None:
        raise DatasetError(f"{KEY}: {root / METADATA} not found; it comes with {HDF5} in the release")
    require_columns(meta, ("annot_id", "age", "sex"), key=KEY, file=METADATA)
    meta = meta.assign(annot_id=meta["annot_id"].str.strip()).drop_duplicates("annot_id").set_index("annot_id")
    unknown = sorted(set(annot) - set(meta.index))
    if unknown:
        raise DatasetError(f"{KEY}: annot_id {unknown[0]!r} of {HDF5} has no row in {METADATA}; use the files of one release")
    raw = pd.DataFrame({
        "id": [f"{a}frame{int(n)}" for a, n in zip(annot, frames)],
        "subject": annot,
        "path": HDF5,
        "meta/index": np.arange(len(annot)),
    })
    raw["raw/sex"] = blank_to_none(meta.loc[annot, "sex"].reset_index(drop=True))
    raw["raw/age"] = blank_to_none(meta.loc[annot, "age"].reset_index(drop=True))
    return RawTable(raw)


def load(root: Path, row: pd.Series) -> Image.Image:
    """The grey frame as RGB; a 3-D frame is averaged over its first axis, as the readers do."""
    path = root / row["path"]
    frame = _frame(path, "image", int(row["meta/index"]))
    if frame.ndim == 3:
        frame = frame.mean(axis=0)
    if frame.ndim != 2:
        raise DatasetError(f"{KEY}: image frame {int(row['meta/index'])} of {path} has shape {frame.shape}")
    return Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def mask(root: Path, row: pd.Series) -> np.ndarray:
    """0 / 255 nodule mask as 0 / 1; any other value is an error naming the frame."""
    path, index = root / row["path"], int(row["meta/index"])
    values = _frame(path, "mask", index)
    bad = values[(values != 0) & (values != FOREGROUND)]
    if bad.size:
        raise DatasetError(f"{KEY}: mask frame {index} of {path} holds value {bad.flat[0].item()!r}; expected 0 "
                           f"(background) or {FOREGROUND} (nodule)")
    return (values == FOREGROUND).astype(np.uint8)


LAYOUT = """\
dataset.hdf5 and metadata.csv, as downloaded from Stanford AIMI
<data>/
  dataset.hdf5   (about 36 GB; read with h5py)
      annot_id    per frame, bytes like b'1_' (one per nodule)
      frame_num   per frame, the frame's number in its cine clip
      image       per frame, grey uint8 (H, W)
      mask        per frame, same shape, 0 background, 255 nodule
  metadata.csv
      annot_id,age,sex,location,size_x,size_y,size_z,ti-rads_composition,
      ti-rads_echogenicity,ti-rads_shape,ti-rads_margin,
      ti-rads_echogenicfoci,ti-rads_level,histopath_diagnosis
      (only annot_id, age and sex are read; column order may differ)
Class 1: nodule. Subject: annot_id, so a clip's frames never straddle splits;
the release has no patient column, so the nodules of one patient cannot be
linked. A 3-D frame is averaged over its first axis.
Sex: Male -> male, Female -> female. Age: old if >= 60, blank -> unknown.
"""

SPEC = DatasetSpec(
    key=KEY,
    title="Stanford thyroid ultrasound cine-clip",
    modality="ultrasound",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical({"Male": "male", "Female": "female"}, groups=("male", "female"),
                           source=f"{METADATA} column sex"),
        "age": threshold(60, source=f"{METADATA} column age"),
    },
    layout=LAYOUT,
    obtain=(
        "Stanford AIMI shared datasets, 'Thyroid Ultrasound Cine-clip' (registration and research-use agreement): "
        "download dataset.hdf5 and metadata.csv into one folder"
    ),
    load=load,
    mask=mask,
    mask_classes=("nodule",),
)
