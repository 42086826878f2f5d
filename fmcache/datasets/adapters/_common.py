"""Reading steps the adapters share: checked options, text CSVs, official headers, cache names, NPZ arrays,
and the generated datasets' numeric options and seeded random streams."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fmcache.errors import DatasetError


def option(options: Mapping[str, str], key: str, name: str, choices: Iterable[str], default: str) -> str:
    """The value of a dataset option, checked against its choices."""
    value = str(options.get(name, default)).strip().lower()
    allowed = tuple(choices)
    if value not in allowed:
        raise DatasetError(f"{key}: option {name}={value!r} is not one of {', '.join(allowed)}")
    return value


def read_csv(path: Path, key: str) -> pd.DataFrame:
    """A CSV (plain or .gz) read as text: empty cells stay "" so no spelling is guessed."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, EOFError) as e:  # pandas' parser errors are ValueErrors
        raise DatasetError(f"{key}: cannot read {path}: {e.__class__.__name__}: {e} (file corrupt or truncated?)") from None


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, key: str, file: str) -> None:
    """DatasetError naming the first expected column that ``df`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{key}: column {missing[0]!r} not found in {file} (found: {', '.join(map(str, df.columns))}); "
            f"the file must keep the official header"
        )


def blank_to_none(values: pd.Series) -> pd.Series:
    """Raw attribute values as objects, missing as None (never pandas' NA scalar)."""
    return values.astype(object).where(values.notna(), None)


def cache_name(key: str, chosen: Mapping[str, str], defaults: Mapping[str, str]) -> str:
    """Cache group name: the key, plus each option that changes rows or labels and is not default.

    Two option sets give two samples tables, so they must not share one cache group.
    """
    parts = [f"{k}-{chosen[k]}" for k in sorted(defaults) if chosen[k] != defaults[k]]
    return "_".join([key, *parts])


def read_npz_array(path: Path, key: str, names: Iterable[str], what: str = "the image") -> np.ndarray:
    """The first of ``names`` present in an NPZ file, loaded (pickles refused)."""
    names = tuple(names)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path} (check --data points at the dataset root)")
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in names:
                if name in z.files:
                    return np.asarray(z[name])
            found = ", ".join(z.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {path}: {e.__class__.__name__}: {e} (file corrupt or not an NPZ)") from None
    raise DatasetError(f"{path.name} has no array {' or '.join(names)} (found: {found}); {key} needs it for {what}")


def as_gray(array: np.ndarray, path: Path) -> np.ndarray:
    """A 2D image array from (H, W) or (H, W, 1); anything else is an error naming the shape."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(f"{path.name}: image array has shape {array.shape}, expected (H, W)")
    return array


def int_option(dataset: str, options: Mapping[str, str], defaults: Mapping[str, object], key: str, lo: int,
               hi: int) -> int:
    """Option ``key`` as an integer in [lo, hi] (its default where not given)."""
    text = options.get(key, str(defaults[key]))
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise DatasetError(f"{dataset}: option {key} must be an integer in [{lo}, {hi}], got {text!r} (-o {key}=N)")
    return v


def disparity_option(dataset: str, options: Mapping[str, str], defaults: Mapping[str, object]) -> float:
    """Option ``disparity`` as a fraction in [0, 1] (its default where not given)."""
    text = options.get("disparity", str(defaults["disparity"]))
    try:
        d = float(text)
    except ValueError:
        d = float("nan")
    if not 0.0 <= d <= 1.0:
        raise DatasetError(f"{dataset}: option disparity must be a number in [0, 1], got {text!r} (-o disparity=0.5)")
    return d


def seeded_rng(*parts: object) -> np.random.Generator:
    """A random stream named by ``parts`` (joined by "/")."""
    # a content hash, not hash(): the same on every process and every run
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))
