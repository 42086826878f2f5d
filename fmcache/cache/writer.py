"""Writing the cache: the samples table, then model entries filled chunk by chunk.

An entry's arrays are created at full size first; each chunk of rows is written and only
then marked in ``done``, so a run killed at any point resumes by recomputing exactly the
chunks that were not marked.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import pandas as pd
import zarr

from fmcache import __version__
from fmcache.cache import layout as L
from fmcache.cache.provenance import check
from fmcache.errors import ProvenanceMismatchError


def write_samples(
    root: zarr.Group, name: str, table: pd.DataFrame, attrs: Mapping[str, Any], *, overwrite: bool = False
) -> zarr.Group:
    """Create (or verify) a dataset group holding the samples table.

    An existing group with the same ``attrs["source_fingerprint"]`` is reused as is. One made
    from a different table is refused unless ``overwrite``, which deletes the group and every
    model entry under it (their rows would no longer line up).
    """
    if name in root:
        group = root[name]
        old = group.attrs.get("source_fingerprint")
        if old == attrs["source_fingerprint"]:
            return group
        if not overwrite:
            raise ProvenanceMismatchError(
                f"cache dataset {name!r} was built from a different samples table "
                f"(fingerprint {old} -> {attrs['source_fingerprint']}: other data, options or seed); "
                "pass --overwrite to rebuild it and drop its cached embeddings, or --root to use another cache"
            )
        del root[name]
    group = root.create_group(name)
    n = len(table)
    s = group.create_group(L.SAMPLES)
    _put(s, L.ID, table["id"].to_numpy(dtype=str))
    _put(s, L.SUBJECT, table["subject"].to_numpy(dtype=str))
    _put(s, L.SPLIT, table["split"].to_numpy(dtype=np.int8))
    label_cols = [c for c in table.columns if c.startswith("label/")]
    labels = table[label_cols].to_numpy(dtype=np.int8) if label_cols else np.full((n, 0), -1, np.int8)
    _put(s, L.LABEL, labels)
    for c in table.columns:
        if c.startswith(("sa/", "sa_raw/")):
            kind, attr = c.split("/", 1)
            values = table[c].to_numpy(dtype=np.int8 if kind == "sa" else str)
            _put(s, f"{kind}/{attr}", values)
    # attrs last: a group with attrs is a group whose samples were fully written
    group.attrs.update({**dict(attrs), "n": n, "label_names": [c.split("/", 1)[1] for c in label_cols]})
    return group


def _put(group: zarr.Group, path: str, values: np.ndarray) -> None:
    chunks = (min(max(len(values), 1), 65536),) + values.shape[1:]
    # str: Zarr's variable-length UTF-8 type (fixed-width numpy strings have no v3 spec)
    dtype = str if values.dtype.kind in "UO" else values.dtype
    arr = group.create_array(path, shape=values.shape, dtype=dtype, chunks=chunks, overwrite=True)
    if values.size:
        arr[...] = values


class EntryWriter:
    """Fills one (dataset, model) entry chunk by chunk; see :func:`open_entry`."""

    def __init__(self, group: zarr.Group, where: str):
        self.group = group
        self.where = where
        self.n = int(group.attrs["n"])
        self.chunk_rows = int(group.attrs["chunk_rows"])
        self.kinds = list(group.attrs["feature_kinds"])
        volume = group.attrs.get("volume")
        self.slices = int(volume["slices"]) if volume else 0

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_rows) if self.n else 0

    def done(self) -> np.ndarray:
        return np.asarray(self.group[L.DONE][...], dtype=bool)

    def pending_chunks(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.done())]

    def rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n)

    @property
    def arrays(self) -> list[str]:
        """Every array a chunk fills: the feature kinds, and for volumes their per-slice features."""
        return self.kinds + ([f"{L.SLICES}/{k}" for k in self.kinds] if self.slices else [])

    def write_chunk(self, chunk: int, features: Mapping[str, np.ndarray]) -> None:
        """Write one chunk's rows of every array in :attr:`arrays`, then mark it done."""
        start, stop = self.rows(chunk)
        for name in self.arrays:
            values = np.asarray(features[name])
            if values.shape[0] != stop - start:
                raise ValueError(f"chunk {chunk} of {self.where}: {values.shape[0]} rows for {stop - start}")
            self.group[name][start:stop] = values.astype(L.DISK_DTYPE)
        self.group[L.DONE][chunk] = True

    def write_text(self, prompt_set: str, prototypes: np.ndarray, prompts: Mapping[str, Any]) -> None:
        """Class prototypes of a VLM, (C, T, D) per template, with the prompts that made them."""
        arr = self.group.create_array(
            f"{L.TEXT}/{prompt_set}", shape=prototypes.shape, dtype=L.DISK_DTYPE, chunks=prototypes.shape, overwrite=True
        )
        arr[...] = prototypes.astype(L.DISK_DTYPE)
        arr.attrs.update(dict(prompts))

    def finish(self, **extra: Any) -> None:
        if len(self.pending_chunks()):
            raise RuntimeError(f"{self.where}: finish() with chunks still pending")
        self.group.attrs.update({"state": L.STATE_COMPLETE, "completed": _now(), **extra})


def open_entry(
    dataset_group: zarr.Group,
    model: str,
    provenance: Mapping[str, Any],
    *,
    chunk_rows: int = 256,
    overwrite: bool = False,
) -> EntryWriter:
    """Create a model entry at full size, or reopen a matching one to resume it.

    ``provenance`` must hold every :data:`fmcache.cache.provenance.IDENTITY_KEYS` field
    (``dims`` maps each feature kind to its width; ``volume`` is ``{"slices": S, "pool": ...}``
    for 2.5D entries, which then also hold ``slices/<kind>`` arrays of shape (n, S, D)).
    An existing entry whose identity differs
    is refused (ProvenanceMismatchError) unless ``overwrite``, which deletes it first.
    """
    where = L.model_path(dataset_group.basename, model)
    n = int(dataset_group.attrs["n"])
    provenance = {"volume": None, **provenance, "feature_kinds": list(provenance["dims"]), "dtype": L.DISK_DTYPE}
    if model in dataset_group:
        existing = dataset_group[model]
        try:
            check(where, existing.attrs, provenance)
        except ProvenanceMismatchError:
            if not overwrite:
                raise
        else:
            if not overwrite and L.DONE in existing:
                return EntryWriter(existing, where)
        del dataset_group[model]
    group = dataset_group.create_group(model)
    chunk_rows = max(1, min(chunk_rows, n or 1))
    slices = int(provenance["volume"]["slices"]) if provenance["volume"] else 0
    for kind, dim in provenance["dims"].items():
        group.create_array(kind, shape=(n, int(dim)), dtype=L.DISK_DTYPE, chunks=(chunk_rows, int(dim)), fill_value=0)
        if slices:
            group.create_array(f"{L.SLICES}/{kind}", shape=(n, slices, int(dim)), dtype=L.DISK_DTYPE,
                               chunks=(chunk_rows, slices, int(dim)), fill_value=0)
    n_chunks = math.ceil(n / chunk_rows)
    group.create_array(L.DONE, shape=(n_chunks,), dtype=bool, chunks=(max(n_chunks, 1),), fill_value=False)
    group.attrs.update(
        {
            **provenance,
            "n": n,
            "chunk_rows": chunk_rows,
            "fmcache_version": __version__,
            "created": _now(),
            "state": L.STATE_PARTIAL,
        }
    )
    return EntryWriter(group, where)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
