"""Writing the cache: the samples table, then model entries filled chunk by chunk.

A group's attributes are written in one ``zarr.json`` write, and its ``state`` moves on only
once what it stands for is stored: ``creating`` (arrays being made), ``writing`` (chunks being
filled; ``done`` says which), ``complete``. A writer killed anywhere leaves a group that the
next writer remakes (``creating``) or resumes (``writing``), never one that needs --overwrite.
Each store write replaces a whole object, so a chunk is either its old or its new bytes.

Arrays carry crc32c checksums and fill values that no stored value takes (NaN features,
-128 codes): a missing or damaged chunk cannot pass for data (see :mod:`fmcache.cache.reader`).

The caller holds the writer lock of what it writes (:mod:`fmcache.cache.lock`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from fmcache import __version__
from fmcache.cache import attrs as A
from fmcache.cache import layout as L
from fmcache.cache.provenance import differences, requested
from fmcache.cache.store import member_names
from fmcache.errors import ProvenanceMismatchError

CHECKED = [ZstdCodec(), Crc32cCodec()]  # compress, then checksum what is stored
# every chunk is stored, even one that equals the fill value: a chunk that is not stored is damage
STORED = {"write_empty_chunks": True}
REPAIR = "`fmcache cache verify --repair` removes it, to be built again by `fmcache embed`"


def write_samples(
    root: zarr.Group, name: str, table: pd.DataFrame, attrs: Mapping[str, Any], *, overwrite: bool = False,
    before_delete: Callable[[zarr.Group], None] | None = None,
) -> zarr.Group:
    """Create (or reuse) a dataset group holding the samples table.

    A group made from the same table (``attrs["source_fingerprint"]``) is reused; if it is
    unfinished or marked for repair, its arrays are rewritten in place and its model entries
    stay. One made from a different table is refused unless ``overwrite`` (or it is an
    unfinished group with no entries), which deletes it with every model entry under it:
    their rows would no longer line up. ``before_delete(group)`` runs first and may refuse.
    """
    L.check_name("dataset", name)
    fingerprint = attrs["source_fingerprint"]
    if name in root:
        group = root[name]
        old = A.read(group, f"cache dataset {name}", REPAIR)
        if old.get("source_fingerprint") == fingerprint and old.get("format") == L.FORMAT:
            if old.get("state") != L.STATE_COMPLETE:
                _write_samples_arrays(group, table)
                A.update(group, {"state": L.STATE_COMPLETE})
            return group
        unfinished_and_empty = old.get("state") != L.STATE_COMPLETE and not model_names(group)
        if not (overwrite or unfinished_and_empty):
            why = (f"fingerprint {old.get('source_fingerprint')} -> {fingerprint}: other data, options or seed"
                   if old.get("format") == L.FORMAT else "made by an older fmcache")
            raise ProvenanceMismatchError(
                f"cache dataset {name!r} was built from a different samples table ({why}); "
                "pass --overwrite to rebuild it and drop its cached embeddings, or --root to use another cache"
            )
        if before_delete is not None:
            before_delete(group)
        del root[name]
    group = A.create_group(root, name, {
        **dict(attrs), "n": len(table), "label_names": [c.split("/", 1)[1] for c in _label_columns(table)],
        "format": L.FORMAT, "state": L.STATE_CREATING,
    })
    _write_samples_arrays(group, table)
    A.update(group, {"state": L.STATE_COMPLETE})
    return group


def model_names(dataset_group: zarr.Group) -> list[str]:
    return [k for k in member_names(dataset_group, zarr.Group) if k != L.SAMPLES]


def _label_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("label/")]


def _write_samples_arrays(group: zarr.Group, table: pd.DataFrame) -> None:
    s = group.require_group(L.SAMPLES)
    n = len(table)
    _put(s, L.ID, table["id"].to_numpy(dtype=str))
    _put(s, L.SUBJECT, table["subject"].to_numpy(dtype=str))
    _put(s, L.SPLIT, table["split"].to_numpy(dtype=np.int8))
    label_cols = _label_columns(table)
    labels = table[label_cols].to_numpy(dtype=np.int8) if label_cols else np.full((n, 0), -1, np.int8)
    _put(s, L.LABEL, labels)
    for c in table.columns:
        if c.startswith(("sa/", "sa_raw/")):
            kind, attr = c.split("/", 1)
            _put(s, f"{kind}/{attr}", table[c].to_numpy(dtype=np.int8 if kind == "sa" else str))


def _put(group: zarr.Group, path: str, values: np.ndarray) -> None:
    chunks = (min(max(len(values), 1), 65536),) + values.shape[1:]
    # str: Zarr's variable-length UTF-8 type (fixed-width numpy strings have no v3 spec)
    text = values.dtype.kind in "UO"
    arr = group.create_array(path, shape=values.shape, dtype=str if text else values.dtype, chunks=chunks,
                             fill_value="" if text else L.INT_MISSING, compressors=CHECKED, config=STORED, overwrite=True)
    if values.size:
        arr[...] = values


class EntryWriter:
    """Fills one (dataset, model) entry chunk by chunk; see :func:`open_entry`."""

    def __init__(self, group: zarr.Group, where: str):
        self.group = group
        self.where = where
        attrs = A.read(group, where, REPAIR)
        self.n = int(attrs["n"])
        self.chunk_rows = int(attrs["chunk_rows"])
        self.kinds = list(attrs["feature_kinds"])
        self.generation = attrs["generation"]
        volume = attrs.get("volume")
        self.slices = int(volume["slices"]) if volume else 0
        self.complete = attrs.get("state") == L.STATE_COMPLETE

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
            if np.isnan(values).any():
                raise ValueError(f"chunk {chunk} of {self.where}: NaN cannot be stored, it marks data that is missing")
            arr = self.group[name]
            arr[start:stop] = values.astype(arr.dtype)
        self.group[L.DONE][chunk] = True

    def mark_undone(self, chunks: list[int]) -> None:
        """Have chunks encoded again (damaged or missing ones); the entry is unfinished until they are."""
        A.update(self.group, {"state": L.STATE_WRITING})
        self.complete = False
        done = self.done()
        done[chunks] = False
        self.group[L.DONE][...] = done

    def split_done(self) -> None:
        """Store the done bitmap one object per chunk if an older fmcache made it one object (see
        :func:`_create_done`); the caller holds the entry's lock and no other process writes yet."""
        if self.n_chunks > 1 and tuple(self.group[L.DONE].chunks) != (1,):
            _create_done(self.group, self.done())

    def reset_done(self) -> None:
        """A ``done`` bitmap that cannot be read: every chunk is encoded again."""
        A.update(self.group, {"state": L.STATE_WRITING})
        self.complete = False
        _create_done(self.group, np.zeros(self.n_chunks, bool))  # made anew: it may be missing altogether

    def write_text(self, prompt_set: str, prototypes: np.ndarray, prompts: Mapping[str, Any]) -> None:
        """Class prototypes of a VLM, (C, T, D) per template, with the prompts that made them."""
        arr = self.group.create_array(
            f"{L.TEXT}/{prompt_set}", shape=prototypes.shape, dtype=L.DISK_DTYPE, chunks=prototypes.shape,
            fill_value=np.nan, compressors=CHECKED, config=STORED, attributes=dict(prompts), overwrite=True,
        )
        arr[...] = prototypes.astype(L.DISK_DTYPE)

    def finish(self, **extra: Any) -> None:
        if len(self.pending_chunks()):
            raise RuntimeError(f"{self.where}: finish() with chunks still pending")
        A.update(self.group, {"state": L.STATE_COMPLETE, "completed": _now(), **extra})
        self.complete = True


def open_entry(
    dataset_group: zarr.Group,
    model: str,
    provenance: Mapping[str, Any],
    *,
    chunk_rows: int = 256,
    overwrite: bool = False,
) -> EntryWriter:
    """Create a model entry at full size, or reopen one made the same way to resume it.

    ``provenance`` must hold every :data:`fmcache.cache.provenance.IDENTITY_KEYS` field
    (``dims`` maps each feature kind to its width, or to the shape of a per-item map, stored
    one item per chunk in shards of ``chunk_rows`` items; ``kind_dtypes`` names kinds stored
    other than as float16; ``volume`` is ``{"slices": S, "pool": ...}`` for 2.5D entries,
    which then also hold ``slices/<kind>`` arrays of shape (n, S, D)).
    An entry left while being created is made again. One whose identity differs is refused
    (ProvenanceMismatchError) unless ``overwrite``, which deletes it first.
    """
    L.check_name("model", model)
    where = L.model_path(dataset_group.basename, model)
    n = int(A.read(dataset_group, f"cache dataset {dataset_group.basename}", REPAIR)["n"])
    wanted = requested(provenance)
    if model in dataset_group:
        existing = dataset_group[model]
        attrs = A.read(existing, where, REPAIR)
        state = attrs.get("state")
        diff = differences(attrs, wanted)
        if state in (L.STATE_WRITING, L.STATE_COMPLETE) and not diff and not overwrite:
            return EntryWriter(existing, where)
        if state in (L.STATE_WRITING, L.STATE_COMPLETE) and diff and not overwrite:
            unfinished = "" if state == L.STATE_COMPLETE else " (and is unfinished)"
            raise ProvenanceMismatchError(
                f"cache entry {where} was made differently{unfinished} ({'; '.join(diff)}); rerun with the "
                "settings it was made with to use it, pass --overwrite to replace it, or --root to use another cache"
            )
        del dataset_group[model]  # replaced on request, or left while being created
    chunk_rows = max(1, min(chunk_rows, n or 1))
    n_chunks = math.ceil(n / chunk_rows)
    group = A.create_group(dataset_group, model, {
        **wanted, "n": n, "chunk_rows": chunk_rows, "fmcache_version": __version__, "created": _now(),
        "generation": uuid.uuid4().hex, "state": L.STATE_CREATING,
    })
    slices = int(wanted["volume"]["slices"]) if wanted["volume"] else 0
    for kind, dim in wanted["dims"].items():
        shape, dtype = L.item_shape(dim), L.kind_dtype(wanted, kind)
        layout = ({"chunks": (1, *shape), "shards": (chunk_rows, *shape)} if len(shape) > 1
                  else {"chunks": (chunk_rows, *shape)})
        group.create_array(kind, shape=(n, *shape), dtype=dtype, fill_value=_fill(dtype), compressors=CHECKED,
                           config=STORED, **layout)
        if slices:
            group.create_array(f"{L.SLICES}/{kind}", shape=(n, slices, int(dim)), dtype=L.DISK_DTYPE,
                               chunks=(chunk_rows, slices, int(dim)), fill_value=np.nan, compressors=CHECKED, config=STORED)
    _create_done(group, np.zeros(n_chunks, bool))
    A.update(group, {"state": L.STATE_WRITING})
    return EntryWriter(group, where)


def _create_done(group: zarr.Group, done: np.ndarray) -> None:
    """The done bitmap, one object per entry chunk, so that processes writing disjoint chunks of one
    entry at once (:mod:`fmcache.embed.distributed`) never rewrite each other's marks.

    Format: entries written before this kept the bitmap in a single object. Both are plain Zarr
    arrays whose chunking their metadata states, so either reads the same to every reader, old
    and new, and FORMAT stays as it is; only a job of several processes needs the split
    (:meth:`EntryWriter.split_done`). A mark whose object is not stored reads as not done (the fill
    value), so a crash while the bitmap is being made loses progress, never data.
    """
    arr = group.create_array(L.DONE, shape=done.shape, dtype=bool, chunks=(1,), fill_value=False,
                             compressors=CHECKED, config=STORED, overwrite=True)
    arr[...] = done


def _fill(dtype: str) -> float | int:
    """A fill value that no stored value takes: NaN, or for integers the missing code."""
    return np.nan if np.issubdtype(np.dtype(dtype), np.floating) else L.INT_MISSING


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
