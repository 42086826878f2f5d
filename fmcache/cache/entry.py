"""Writing one (dataset, model) entry safely: whether there is anything to write, and the
session that writes it under its lock, mending what a crash or a deletion left behind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Mapping

import pandas as pd
import zarr

from fmcache.cache import attrs as A
from fmcache.cache import checked, lock
from fmcache.cache import layout as L
from fmcache.cache.provenance import differences, requested
from fmcache.cache.store import open_root, storage_errors
from fmcache.cache.writer import EntryWriter, model_names, open_entry, write_samples
from fmcache.errors import CacheLockedError, FmcacheError


def is_intact(root: str, dataset: str, fingerprint: str, model: str, provenance: Mapping[str, Any]) -> bool:
    """A complete entry made the same way from the same samples, every chunk of it stored.

    Reads only, so that a finished entry can be used from a read-only cache.
    """
    try:
        ds_group = open_root(root, mode="r")[dataset]
        entry = ds_group[model]
        attrs = A.read(entry, "", "")
        ds_attrs = A.read(ds_group, "", "")
    except (FmcacheError, KeyError, FileNotFoundError, ValueError, OSError):
        return False
    if (attrs.get("state") != L.STATE_COMPLETE or differences(attrs, requested(provenance))
            or ds_attrs.get("source_fingerprint") != fingerprint or ds_attrs.get("state") != L.STATE_COMPLETE):
        return False
    return not missing_chunks(entry, attrs)


def recorded_batch_size(root: str, dataset: str, model: str) -> int | None:
    """The batch size an existing entry was made with (so that a plain rerun resumes it), or None."""
    try:
        value = A.read(open_root(root, mode="r")[dataset][model], "", "").get("batch_size")
    except (FmcacheError, KeyError, FileNotFoundError, ValueError, OSError):
        return None
    return int(value) if value else None


def missing_chunks(entry: zarr.Group, attrs: Mapping[str, Any]) -> list[int]:
    """Chunks of the entry (``attrs``: its attributes) with an array whose data for them is not stored."""
    kinds = list(attrs["feature_kinds"])
    names = kinds + ([f"{L.SLICES}/{k}" for k in kinds] if attrs.get("volume") else [])
    wanted = set(range(-(-int(attrs["n"]) // int(attrs["chunk_rows"]))))
    missing: set[int] = set()
    for name in names:
        missing |= wanted - checked.stored_chunks(entry[name])
    return sorted(missing)


@contextlib.contextmanager
def writing(
    root: str, dataset: str, table: pd.DataFrame, dataset_attrs: Mapping[str, Any], model: str,
    provenance: Mapping[str, Any], *, chunk_rows: int = 256, overwrite: bool = False, wait: bool = True,
    on_wait: Callable[[str], None] | None = None, on_repair: Callable[[str], None] | None = None,
) -> Iterator[EntryWriter]:
    """The entry's writer, with its lock held until the block ends.

    The samples table is written (or checked) and the entry opened under the dataset's lock
    too, so that no process replaces a samples table under an entry being written.
    """
    with storage_errors(f"the cache at {root}"), lock.hold(root, dataset, model, wait=wait, on_wait=on_wait):
        with lock.hold(root, dataset, wait=wait, on_wait=on_wait):
            ds_group = write_samples(open_root(root, mode="a"), dataset, table, dataset_attrs, overwrite=overwrite,
                                     before_delete=lambda g: _refuse_if_held(root, g, model))
            writer = open_entry(ds_group, model, provenance, chunk_rows=chunk_rows, overwrite=overwrite)
        _recover(writer, on_repair)
        yield writer


def _recover(writer: EntryWriter, on_repair: Callable[[str], None] | None) -> None:
    """An unreadable done bitmap: encode everything again; chunks marked done but not stored: encode those."""
    try:
        done = writer.done()
    except Exception:  # noqa: BLE001 - damaged in any way: trust none of it
        writer.reset_done()
        if on_repair:
            on_repair(f"{writer.where}: its done bitmap is damaged; encoding every chunk again")
        return
    missing = [c for c in missing_chunks(writer.group, A.read(writer.group, writer.where, "")) if done[c]]
    if missing:
        writer.mark_undone(missing)
        if on_repair:
            on_repair(f"{writer.where}: {len(missing)} chunk(s) marked done are missing from the store; encoding them again")


def _refuse_if_held(root: str, dataset_group: zarr.Group, own_model: str) -> None:
    """Replacing a samples table deletes every entry of its dataset: never one another process writes."""
    for model in model_names(dataset_group):
        if model == own_model:
            continue
        holder = lock.holder_if_locked(root, dataset_group.basename, model)
        if holder is not None:
            raise CacheLockedError(
                f"cannot rebuild cache dataset {dataset_group.basename}: its entry {model} is being written by "
                f"{lock.describe(holder)}; wait for it to finish"
            )
