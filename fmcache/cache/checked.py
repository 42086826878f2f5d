"""Reading stored arrays so that nothing missing or damaged passes for data.

Zarr reads a chunk that is not stored as its fill value, and a chunk that fails its checksum
as an exception deep in a codec. Here each read first checks that every chunk it needs is
stored, names the chunk (and its rows) that fails to decode, and refuses fill values (NaN
features, -128 codes) that a missing chunk would have left.
"""

from __future__ import annotations

import asyncio

import numpy as np
import zarr
from zarr.core.sync import sync

from fmcache.cache import layout as L
from fmcache.errors import CacheDamagedError


def rows_per_object(arr: zarr.Array) -> int:
    """Rows that one stored object of ``arr`` holds: its shard's where it is sharded, else its chunk's."""
    return (arr.shards or arr.chunks)[0]


def stored_chunks(arr: zarr.Array, among: list[int] | None = None) -> set[int]:
    """Row-chunk indices of ``arr`` that are stored (every other axis is one chunk; a sharded
    array's row chunks are its shards).

    ``among`` limits the answer to those chunks. A few are looked up key by key: listing a
    store costs as much as it has objects, which made reading one item of a 10k-item sharded
    entry as slow as listing all its shards.
    """
    if among is not None and len(among) <= _LOOKUPS:
        rest = (0,) * (arr.ndim - 1)
        keys = [f"{arr.path}/{arr.metadata.encode_chunk_key((c, *rest))}" for c in among]

        async def exist() -> list[bool]:
            return list(await asyncio.gather(*(arr.store.exists(k) for k in keys)))

        return {c for c, there in zip(among, sync(exist())) if there}

    async def keys() -> list[str]:
        return [k async for k in arr.store.list_prefix(f"{arr.path}/c/")]

    out = set()
    for key in sync(keys()):
        first = key[len(arr.path) + 3:].split("/", 1)[0]
        if first.isdigit():
            out.add(int(first))
    return out if among is None else out & set(among)


# Chunks up to which a read looks its chunks up one by one rather than listing the array
_LOOKUPS = 64


def row_chunks(arr: zarr.Array, rows: np.ndarray | None) -> list[int]:
    """The row chunks holding ``rows`` (None: all)."""
    n, size = arr.shape[0], rows_per_object(arr)
    if rows is None:
        return list(range(-(-n // size))) if n else []
    return sorted({int(c) for c in np.unique(np.asarray(rows) // size)})


def chunk_rows(arr: zarr.Array, chunk: int) -> tuple[int, int]:
    size = rows_per_object(arr)
    return chunk * size, min((chunk + 1) * size, arr.shape[0])


def damaged(where: str, what: str, remedy: str) -> CacheDamagedError:
    return CacheDamagedError(f"{where}: {what}; {remedy}")


def read(arr: zarr.Array, rows: np.ndarray | None, where: str, remedy: str) -> np.ndarray:
    """``arr[rows]`` (all rows for None) after checking that nothing read is missing or damaged.

    ``where`` names the array for the message, ``remedy`` says what repairs it.
    """
    if arr.size == 0:
        return np.asarray(arr[...]) if rows is None else np.asarray(arr[...])[rows]
    needed = row_chunks(arr, rows)
    missing = sorted(set(needed) - stored_chunks(arr, None if rows is None else needed))
    if missing:
        a, b = chunk_rows(arr, missing[0])
        more = f" ({len(missing)} chunks in all)" if len(missing) > 1 else ""
        raise damaged(where, f"chunk {missing[0]} (rows {a}-{b - 1}) is missing from the store{more}", remedy)
    try:
        values = np.asarray(arr[...] if rows is None else _take(arr, np.asarray(rows)))
    except MemoryError:  # out of memory is not damage: the chunks would decode with memory to spare
        raise
    except Exception:  # a codec's error on damaged bytes: find the chunk to name
        stored = set(needed)
        for c in needed:
            problem = chunk_problem(arr, c, stored)
            if problem:
                a, b = chunk_rows(arr, c)
                raise damaged(where, f"chunk {c} (rows {a}-{b - 1}) {problem}", remedy) from None
        raise
    bad = _fill_rows(values)
    if bad.size:
        index = np.arange(arr.shape[0]) if rows is None else np.asarray(rows)
        row = int(index[bad[0]])
        raise damaged(where, f"row {row} (chunk {row // rows_per_object(arr)}) holds no stored value", remedy)
    return values


def _take(arr: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]``. A sharded array is read run by run of consecutive rows: Zarr's orthogonal
    selection decodes a shard's items about 40 times slower than a slice does. Rows that fill
    most of their span (a split's rows of a run of chunks) are read as that span, a slice,
    and picked from it: twice as fast as the orthogonal selection."""
    if arr.shards is None:
        lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        if len(rows) and hi - lo <= 2 * len(rows):
            return np.asarray(arr[lo:hi])[rows - lo]
        return arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
    unique, inverse = np.unique(rows, return_inverse=True)
    runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
    return np.concatenate([arr[int(r[0]):int(r[-1]) + 1] for r in runs])[inverse]


def chunk_problem(arr: zarr.Array, chunk: int, stored: set[int]) -> str | None:
    """What is wrong with one row chunk (``stored``: :func:`stored_chunks`), or None."""
    if chunk not in stored:
        return "missing"
    a, b = chunk_rows(arr, chunk)
    try:
        values = np.asarray(arr[a:b])
    except Exception as e:  # noqa: BLE001 - checksum, decompression and decoding all mean damage
        return f"damaged ({_first_line(e)})"
    return "holds fill values" if _fill_rows(values).size else None


def _fill_rows(values: np.ndarray) -> np.ndarray:
    """Positions of rows holding a fill value that no stored value takes."""
    if values.size == 0 or values.ndim == 0:
        return np.array([], int)
    flat = values.reshape(len(values), -1)
    if values.dtype == np.float16:  # NaN read off the bits: numpy's float16 isnan is 8 times slower
        return np.flatnonzero(((flat.view(np.uint16) & 0x7FFF) > 0x7C00).any(axis=1))
    if np.issubdtype(values.dtype, np.floating):
        return np.flatnonzero(np.isnan(flat).any(axis=1))
    if np.issubdtype(values.dtype, np.signedinteger):
        return np.flatnonzero((flat == L.INT_MISSING).any(axis=1))
    return np.array([], int)


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 80 else text[:77] + "..."
