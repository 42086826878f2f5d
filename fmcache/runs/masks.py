"""A segmentation run's masks beside its tables: every predicted mask (on request) and the
thumbnails of the report's overlays. NumPy only, like the rest of a run.

``masks.npz``     ``fmcache segment --save-masks``: every predicted mask, as np.load reads it.
                  ``<prompt>/<k>`` is item k's masks, one per class, as np.packbits along the
                  last axis (C, H, ceil(W / 8)) uint8 (a volume: (C, X, Y, ceil(Z / 8)));
                  ``id`` (n,) the item ids, ``row`` (n,) their rows in the cache entry,
                  ``shape`` (n, 2) each item's (H, W) at its original size (volumes: (n, 3)), ``classes`` the class names (class c is entry c - 1),
                  ``prompts`` the prompt types. A class without a prompt (absent from the
                  truth) is an empty mask. :func:`predicted_mask` reads one back.
``overlays.npz``  always: thumbnails of a few items per group of the run's first attribute
                  (:func:`read_overlays`).

The masks are written item by item into the archive as the sweep decodes them (np.savez
would need them all in memory at once).
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
from upath import UPath

from fmcache.errors import FmcacheError

if TYPE_CHECKING:
    from fmcache.runs.directory import Run

MASKS, OVERLAYS = "masks.npz", "overlays.npz"


class MaskWriter:
    """Writes ``masks.npz`` of a run directory one item at a time; :meth:`close` adds the index."""

    def __init__(self, path: str | os.PathLike[str], prompts: list[str], classes: list[str]):
        self._file = (UPath(path) / MASKS).open("wb")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED)
        self.prompts, self.classes = list(prompts), list(classes)
        self._shapes: dict[int, tuple[int, ...]] = {}

    def add(self, prompt: str, k: int, masks: list[np.ndarray]) -> None:
        """Item ``k``'s (position in the run) predicted masks under ``prompt``, one bool (H, W) (or
        (X, Y, Z)) per class."""
        stacked = np.stack([np.asarray(m, bool) for m in masks])
        if self._shapes.setdefault(k, stacked.shape[1:]) != stacked.shape[1:]:
            raise FmcacheError(f"item {k}: masks of shape {stacked.shape[1:]} after {self._shapes[k]}")
        self._member(f"{prompt}/{k}", np.packbits(stacked, axis=-1))

    def close(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Write the index and finish the archive (every item must have been added)."""
        missing = sorted(set(range(len(ids))) - set(self._shapes))
        if missing:
            raise FmcacheError(f"no masks were added for items {missing[:5]}")
        self._member("id", np.asarray(ids, dtype=str))
        self._member("row", np.asarray(rows, dtype=np.int64))
        self._member("shape", np.array([self._shapes[k] for k in range(len(ids))], dtype=np.int64).reshape(len(ids), -1))
        self._member("classes", np.asarray(self.classes, dtype=str))
        self._member("prompts", np.asarray(self.prompts, dtype=str))
        self.abort()

    def abort(self) -> None:
        """Close the files (the run directory is discarded by the caller on failure)."""
        self._zip.close()
        self._file.close()

    def _member(self, name: str, array: np.ndarray) -> None:
        # what np.savez_compressed writes: one .npy per key in a deflated zip
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def has_masks(run: Run | str | os.PathLike[str]) -> bool:
    """Whether a run saved its predicted masks (``fmcache segment --save-masks``)."""
    return (_path(run) / MASKS).is_file()


def predicted_mask(run: Run | str | os.PathLike[str], prompt: str, item_id: str, cls: int | str = 1) -> np.ndarray:
    """One predicted mask of a segmentation run saved with ``--save-masks``.

    Parameters
    ----------
    run
        The run (from :func:`fmcache.load_results`) or its directory.
    prompt
        A prompt type of the run (``center``, ``bbox``, ...).
    item_id
        The item's id (the ``id`` of the run's predictions, the dataset's sample id).
    cls
        The class: its label value (1 for the first class) or its name (``run.config["mask_classes"]``).

    Returns
    -------
    numpy.ndarray
        bool (H, W) at the item's original size (a volume: (X, Y, Z) on its voxel grid); all
        False where the class had no prompt.

    Examples
    --------
    >>> run = fmcache.load_results("20261202-101500-montgomery-sam-segment")
    >>> mask = predicted_mask(run, "bbox", "MCUCXR_0001_0", "left lung")
    """
    path = _path(run)
    if not (path / MASKS).is_file():
        raise FmcacheError(f"run {path} saved no predicted masks ({MASKS} is missing): rerun `fmcache segment` "
                           "with --save-masks")
    with (path / MASKS).open("rb") as f, np.load(f, allow_pickle=False) as npz:
        prompts, classes, ids = (list(npz[k]) for k in ("prompts", "classes", "id"))
        if prompt not in prompts:
            raise FmcacheError(f"run {path.name} has no prompt type {prompt!r}: it decoded {', '.join(prompts)}")
        where = [k for k, i in enumerate(ids) if i == str(item_id)]
        if not where:
            raise FmcacheError(f"item {item_id!r} is not in run {path.name} (its ids are the `id` of its predictions)")
        c = _class_index(cls, classes, path.name)
        k = where[0]
        width = int(npz["shape"][k][-1])
        packed = npz[f"{prompt}/{k}"]
    return np.unpackbits(packed[c], axis=-1, count=width).astype(bool)


def _class_index(cls: int | str, classes: list[str], run: str) -> int:
    if isinstance(cls, str) and not cls.isdigit():
        if cls not in classes:
            raise FmcacheError(f"run {run} has no class {cls!r}: its classes are {', '.join(classes)}")
        return classes.index(cls)
    c = int(cls)
    if not 1 <= c <= len(classes):
        raise FmcacheError(f"class {c} is not one of run {run}'s classes 1..{len(classes)} ({', '.join(classes)})")
    return c - 1


def write_overlays(path: str | os.PathLike[str], arrays: dict[str, Any]) -> None:
    """Write the overlay thumbnails (see :func:`read_overlays`) into a run directory."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    with (UPath(path) / OVERLAYS).open("wb") as f:
        f.write(buf.getvalue())


def read_overlays(run: Run | str | os.PathLike[str]) -> dict[str, np.ndarray] | None:
    """The overlay thumbnails of a segmentation run, or None for a run without them (older runs).

    ``image`` (k, S, S, 3) uint8, ``truth`` and ``pred`` (k, S, S) uint8 label maps (0 background,
    c class c), each item in the top-left ``size`` (k, 2) of its S x S slot; ``id``, ``group``
    (code in the attribute), ``dsc`` (the item's Dice with ``prompt``), ``pick`` ("lowest",
    "median", "highest" Dice of its group); scalars ``attribute``, ``prompt``, ``group_names``,
    ``classes``.
    """
    where = _path(run) / OVERLAYS
    if not where.is_file():
        return None
    with where.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _path(run: Run | str | os.PathLike[str]) -> UPath:
    return UPath(run.path if hasattr(run, "path") else run)
