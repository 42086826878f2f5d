"""Rules that turn raw sensitive-attribute values into groups (unknown stays unknown)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.spec import AttributeRule

_MISSING = {"", "nan", "none", "null", "na", "n/a"}
# every rule turns these into unknown before it looks at a value; descriptions say so
BLANK = f"blank (also {', '.join(sorted(m for m in _MISSING if m))} in any case) -> unknown"


def is_blank(value: object) -> bool:
    """Whether a raw value counts as missing, whatever the rule (see :data:`BLANK`)."""
    return _clean(pd.Series([value], dtype=object)).iloc[0] is None


def _clean(raw: pd.Series) -> pd.Series:
    """Strip whitespace; empty cells, NaN and pd.NA become None."""

    def one(v: object) -> object:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        s = str(v).strip()
        return None if s.lower() in _MISSING else s

    # object dtype on purpose: pandas >= 3 would infer a string dtype that turns None into
    # NaN, and the rules below test for None
    return pd.Series([one(v) for v in raw], index=raw.index, dtype=object)


def categorical(
    mapping: Mapping[str, str],
    *,
    groups: tuple[str, ...],
    unknown: Iterable[str] = (),
    source: str = "",
) -> AttributeRule:
    """Map each raw spelling to a group; listed ``unknown`` spellings and blanks to unknown.

    Any other value is an error: a release whose spellings changed must not be binarised by
    guesswork. The description lists every mapping, the unknown spellings and blanks included.
    """
    unknown_set = {u.strip() for u in unknown if not is_blank(u)}  # blanks are unknown anyway
    table = {k.strip(): v for k, v in mapping.items()}
    bad = set(table.values()) - set(groups)
    if bad:
        raise ValueError(f"mapping targets {sorted(bad)} are not among groups {groups}")
    blank = sorted(k for k in table if is_blank(k))
    if blank:
        raise ValueError(f"{', '.join(map(repr, blank))} reads as a blank value, which is always unknown: "
                         "it cannot be mapped to a group")

    def assign(raw: pd.Series) -> pd.Series:
        def one(v: object) -> object:
            if v is None or v in unknown_set:
                return None
            if v in table:
                return table[v]
            raise ValueError(v)

        return _clean(raw).map(one)

    clauses = [", ".join(f"{k} -> {v}" for k, v in table.items())]
    if unknown_set:
        clauses.append(f"{', '.join(sorted(unknown_set))} -> unknown")
    return AttributeRule(groups=groups, assign=assign, description="; ".join([*clauses, BLANK]), source=source)


def threshold(
    value: float,
    *,
    groups: tuple[str, str] = ("young", "old"),
    source: str = "",
    valid: tuple[float, float] = (0.0, 130.0),
) -> AttributeRule:
    """``groups[1]`` when raw >= value (e.g. age >= 60 is old); blank is unknown.

    Non-numeric values and values outside ``valid`` are errors.
    """

    def assign(raw: pd.Series) -> pd.Series:
        def one(v: object) -> object:
            if v is None:
                return None
            try:
                x = float(v)  # "80.0" and "80" both occur in real files
            except ValueError:
                raise ValueError(v) from None
            if not valid[0] <= x <= valid[1]:
                raise ValueError(v)
            return groups[1] if x >= value else groups[0]

        return _clean(raw).map(one)

    return AttributeRule(
        groups=groups,
        assign=assign,
        description=f"{groups[1]} if >= {value:g}, else {groups[0]}; {BLANK}",
        source=source,
    )


def bins(
    edges: tuple[float, ...],
    *,
    groups: tuple[str, ...],
    source: str = "",
    valid: tuple[float, float] = (0.0, float("inf")),
) -> AttributeRule:
    """Numeric classes split at ``edges``: ``groups[k]`` for ``edges[k-1] <= raw < edges[k]``.

    E.g. BMI classes ``bins((18.5, 25, 30), groups=("underweight", "normal", "overweight",
    "obese"))``: 25.0 is overweight, 30.0 obese. Blank is unknown; non-numeric values and
    values outside ``valid`` are errors.
    """
    if len(groups) != len(edges) + 1 or list(edges) != sorted(edges):
        raise ValueError(f"{len(edges)} increasing edges need {len(edges) + 1} groups, got {groups}")

    def assign(raw: pd.Series) -> pd.Series:
        def one(v: object) -> object:
            if v is None:
                return None
            try:
                x = float(v)
            except ValueError:
                raise ValueError(v) from None
            if not valid[0] <= x <= valid[1]:
                raise ValueError(v)
            return groups[int(np.searchsorted(edges, x, side="right"))]

        return _clean(raw).map(one)

    bounds = [f"< {edges[0]:g}", *(f"{a:g} to < {b:g}" for a, b in zip(edges, edges[1:])), f">= {edges[-1]:g}"]
    return AttributeRule(
        groups=groups,
        assign=assign,
        description="; ".join(f"{g} if {b}" for g, b in zip(groups, bounds)) + f"; {BLANK}",
        source=source,
    )


# DICOM age strings (AS): nnnD / nnnW / nnnM / nnnY
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY]?)$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_age(value: object) -> float | None:
    """Years from a DICOM age string (also written in text files, e.g. Montgomery's readings): '039Y' -> 39.0, '105Y' -> 105.0, '006M' -> 0.5.

    The reference reads ``x[1:3]``, which turns '105Y' into 5; every digit counts here.
    Blank -> None; any other spelling -> ValueError(value).
    """
    if value is None or pd.isna(value):
        return None
    s = str(value).strip()
    if s == "":
        return None
    m = _AGE.match(s)
    if m is None:
        raise ValueError(value)
    return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def dicom_age(value: float, *, source: str = "") -> AttributeRule:
    """:func:`threshold` on ages written as DICOM age strings; sa_raw keeps '039Y'."""
    base = threshold(value, source=source)

    def assign(raw: pd.Series) -> pd.Series:
        # blanks the way every rule reads them, so that the description's blank clause holds here too
        years = pd.Series([None if is_blank(v) else parse_age(v) for v in raw], index=raw.index, dtype=object)
        return base.assign(years)

    return replace(base, assign=assign, description="years read from '039Y'-style strings: " + base.description)


def keyword(
    word: str,
    *,
    groups: tuple[str, str],
    unknown: Iterable[str] = (),
    source: str = "",
) -> AttributeRule:
    """``groups[0]`` when the value contains ``word`` (case-insensitive), else ``groups[1]``.

    For free-text race fields ("White, non-Hispanic", "WHITE - RUSSIAN"): the listed
    ``unknown`` spellings (refused, unable to obtain, ...) and blanks are unknown, never
    counted in the second group as the reference code does.
    """
    unknown_set = {u.strip().lower() for u in unknown if not is_blank(u)}
    w = word.lower()

    def assign(raw: pd.Series) -> pd.Series:
        def one(v: object) -> object:
            if v is None or str(v).lower() in unknown_set:
                return None
            return groups[0] if w in str(v).lower() else groups[1]

        return _clean(raw).map(one)

    return AttributeRule(
        groups=groups,
        assign=assign,
        description=f"{groups[0]} if the value contains {word!r} in any case, else {groups[1]}; "
        + (f"{', '.join(sorted(unknown_set))} in any case -> unknown; " if unknown_set else "") + BLANK,
        source=source,
    )


def encode(rule: AttributeRule, raw: pd.Series) -> np.ndarray:
    """Group codes (int8, -1 unknown) for a raw column; ValueError(value) on unknown spellings."""
    names = rule.assign(raw)
    index = {g: i for i, g in enumerate(rule.groups)}
    return np.array([-1 if n is None or n != n else index[n] for n in names], dtype=np.int8)
