"""What the generated datasets (``synthetic``, ``synthetic_seg``) share: their options, read
from ``-o`` strings with one clear error each, and seeded random streams that do not depend
on the process."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fmcache.errors import DatasetError


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
