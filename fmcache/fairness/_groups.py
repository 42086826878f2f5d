"""Sensitive-attribute arrays as integer group indices with readable names.

A group array may hold integer codes, booleans or strings. The value -1 (and NaN or None)
means unknown: those samples are left out of every per-group value and counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmcache.errors import MetricInputError

GroupNames = Mapping[Any, str] | Sequence[str]

#: Joins the names of the parts of an intersectional group ("female&old") and attribute.
JOIN = "&"


@dataclass(frozen=True)
class Grouping:
    """One sensitive attribute: `index[i]` is sample i's group (0..len(names)-1) or -1."""

    attribute: str
    index: np.ndarray
    names: tuple[str, ...]

    @property
    def n_unknown(self) -> int:
        return int(np.count_nonzero(self.index < 0))


def _unknown_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values == -1
    if values.dtype.kind == "f":
        return np.isnan(values) | (values == -1)
    if values.dtype.kind == "b":
        return np.zeros(values.shape, dtype=bool)
    return np.array([v is None or v == -1 or v == "-1" or (isinstance(v, float) and np.isnan(v)) for v in values], dtype=bool)


def _label(value: Any) -> str:
    # 1.0 from a float array reads better as "1"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def encode_groups(values: Any, *, attribute: str = "", group_names: GroupNames | None = None) -> Grouping:
    """Integer group indices and names for one sensitive attribute.

    Parameters
    ----------
    values : array-like, shape (n,)
        Group of each sample: integer codes, booleans or strings; -1, NaN or None = unknown.
    attribute : str
        Name of the attribute, carried into result tables.
    group_names : dict or list, optional
        Code -> name (a dict), or names indexed by code (a list). Groups are then reported in
        this order, including declared groups that have no samples. Without it, groups are
        the sorted distinct known values and their names are ``str(value)``.

    Returns
    -------
    Grouping
        ``index`` (n,) int64 with -1 for unknown, and the group names.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"groups {attribute!r} must be one value per sample (1-D); got shape {arr.shape}")
    unknown = _unknown_mask(arr)
    known = arr[~unknown]
    present = np.unique(known) if known.size else known
    if group_names is None:
        codes: list[Any] = list(present)
        names = [_label(c) for c in codes]
    else:
        if isinstance(group_names, Mapping):
            codes, names = list(group_names.keys()), [str(v) for v in group_names.values()]
        else:
            names = [str(v) for v in group_names]
            codes = list(range(len(names)))
        declared = set(codes)
        missing = [c for c in present.tolist() if c not in declared]
        if missing:
            raise MetricInputError(
                f"groups {attribute!r} hold values {sorted(map(_label, missing))} that group_names does not name; "
                f"add them to group_names (or mark unknown samples with -1)"
            )
    if len(set(names)) != len(names):
        raise MetricInputError(f"group names of {attribute!r} are not distinct: {names}")
    index = np.full(arr.shape[0], -1, dtype=np.int64)
    if codes:
        # searchsorted over the sorted codes maps each known value to its position in `codes`
        code_arr = np.asarray(codes, dtype=known.dtype if known.size else None)
        sorter = np.argsort(code_arr, kind="stable")
        pos = np.searchsorted(code_arr, known, sorter=sorter)
        index[~unknown] = sorter[np.clip(pos, 0, len(codes) - 1)]
    return Grouping(attribute, index, tuple(names))


def intersect_groups(groupings: Sequence[Grouping]) -> Grouping:
    """Joint groups of several attributes, e.g. sex x age -> "female&old".

    A sample is unknown in the joint attribute when it is unknown in any of the parts.
    Only combinations that occur in the data are groups; they are ordered by the parts'
    group order (the first attribute varies slowest).

    Parameters
    ----------
    groupings : sequence of Grouping
        Two or more encoded attributes over the same samples.

    Returns
    -------
    Grouping
        Attribute named ``"sex&age"``, groups named ``"female&old"``.
    """
    if len(groupings) < 2:
        raise MetricInputError("an intersection needs at least two attributes")
    n = groupings[0].index.shape[0]
    if any(g.index.shape[0] != n for g in groupings):
        raise MetricInputError("attributes to intersect have different lengths")
    sizes = [len(g.names) for g in groupings]
    unknown = np.zeros(n, dtype=bool)
    flat = np.zeros(n, dtype=np.int64)
    for g, size in zip(groupings, sizes):
        unknown |= g.index < 0
        flat = flat * size + np.maximum(g.index, 0)
    present = np.unique(flat[~unknown])
    combos = list(itertools.product(*(g.names for g in groupings)))
    names = tuple(JOIN.join(combos[c]) for c in present)
    index = np.full(n, -1, dtype=np.int64)
    index[~unknown] = np.searchsorted(present, flat[~unknown])
    return Grouping(JOIN.join(g.attribute for g in groupings), index, names)


def as_groupings(
    groups: Any,
    n: int,
    *,
    group_names: Mapping[str, GroupNames] | GroupNames | None = None,
    intersect: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> list[Grouping]:
    """Every attribute block a call evaluates: the given attributes, then the intersections."""
    if isinstance(groups, Mapping):
        items = [(str(k), v) for k, v in groups.items()]
        if not items:
            raise MetricInputError("groups is an empty dict; give at least one attribute")
    else:
        items = [(str(getattr(groups, "name", None) or ""), groups)]
    names_by_attr: dict[str, Any] = {}
    if isinstance(group_names, Mapping) and group_names and all(k in dict(items) for k in group_names):
        names_by_attr = dict(group_names)
    elif group_names is not None:
        names_by_attr = {a: group_names for a, _ in items}
    out = []
    for attr, values in items:
        g = encode_groups(values, attribute=attr, group_names=names_by_attr.get(attr))
        if g.index.shape[0] != n:
            raise MetricInputError(f"groups {attr!r} has {g.index.shape[0]} values but there are {n} predictions")
        out.append(g)
    if intersect:
        sets = [intersect] if isinstance(intersect[0], str) else intersect
        by_name = {g.attribute: g for g in out}
        for combo in sets:
            unknown = [a for a in combo if a not in by_name]
            if unknown:
                raise MetricInputError(
                    f"intersect names {unknown}, which are not in groups (attributes: {sorted(by_name)}); "
                    "pass groups as a dict name -> array"
                )
            out.append(intersect_groups([by_name[a] for a in combo]))
    return out
