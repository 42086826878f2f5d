"""2D segmentation models on volumes, slice by slice: a 2D view of a volumetric segmentation dataset.

:func:`slice_dataset` turns a dataset whose rows are volumes with label volumes (KiTS23,
CANDI, 3D-IRCADb-01, SPIDER) into a 2D :class:`~fmcache.datasets.samples.Dataset` whose rows
are the slices holding foreground, so that the 2D machinery (SAM-family features in the
cache, prompts from label maps, Dice per item) runs on it unchanged. Its images are the
volume's own intensity recipe (CT window or MRI percentiles, as ``Dataset.image`` gives it
for the volume) as 8-bit RGB; its masks are the label volume's slices, voxel for voxel.

Rows and ids
    One row per slice with any voxel of a class (> 0), ordered by volume row, then slice
    index; ``id`` is ``"<volume id>/z<index:04d>"`` (:func:`split_id` reads it back), and
    ``meta/volume``, ``meta/volume_row``, ``meta/slice`` say where the slice comes from. A
    volume without any foreground has nothing to prompt: it is left out and named in the
    cache group's ``slice_view["skipped"]``.

What the cache group records
    The view's ``group_attrs()`` are the volume dataset's (``adapter``, ``options``,
    ``split_seed``, ...) with ``source_fingerprint`` the view's own and ``slice_view`` =
    ``{"plane", "of", "of_fingerprint", "skipped"}``. :func:`is_slice_view` recognises such
    attributes and :func:`rebuild` makes the view again from the user's copy of the release.

Per-volume scores
    Predictions of a volume's slices go back into a volume with :func:`restack` (or
    :func:`restack_volumes` for many rows at once); compare them with
    :meth:`SliceView.label_stack`, the whole label volume in the view's plane (its slices
    without foreground are background, as the restacked prediction is there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fmcache.datasets.samples import EXTRA_PREFIXES, Dataset
from fmcache.datasets.volumes import PLANE_AXES, canonical_to_slices
from fmcache.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

VIEW_KEY = "slice_view"  # the cache group attribute that marks a slice view
SUFFIX = "_slices"  # the view's cache group name: the volume dataset's name + this
VIEW_VERSION = 1  # bump when the rows a view selects, or their order, change
_ID = re.compile(r"^(?P<volume>.+)/z(?P<slice>\d{4,})$")


class _Reader:
    """Reads a view row's slice from its volume; keeps the last image and label volume read.

    The embed stage and the sweep walk rows in order, and a volume's slices are consecutive
    rows: one entry per kind spares reading a volume once per slice.
    """

    def __init__(self, source: Dataset, plane: str):
        self.source = source
        self.plane = plane
        self._image: tuple[int, np.ndarray] | None = None
        self._mask: tuple[int, np.ndarray, tuple[float, float, float]] | None = None

    def image_stack(self, volume_row: int) -> np.ndarray:
        """The volume's image as float32 (slices, H, W) in [0, 1], cut in the view's plane."""
        if self._image is None or self._image[0] != volume_row:
            self._image = (volume_row, _reslice(np.asarray(self.source.image(volume_row)), self.plane))
        return self._image[1]

    def mask_stack(self, volume_row: int) -> np.ndarray:
        """The volume's labels as uint8 (slices, H, W), cut in the view's plane."""
        return self._labels(volume_row)[1]

    def spacing(self, volume_row: int) -> tuple[float, float, float]:
        """mm per voxel along the axes of :meth:`mask_stack` (from the same read)."""
        return self._labels(volume_row)[2]

    def _labels(self, volume_row: int) -> tuple[int, np.ndarray, tuple[float, float, float]]:
        if self._mask is None or self._mask[0] != volume_row:
            labels = self.source.mask_volume(volume_row)
            spacing = tuple(float(labels.spacing[a]) for a in PLANE_AXES[self.plane])
            self._mask = (volume_row, _reslice(labels.slices(), self.plane), spacing)
        return self._mask

    def load(self, root: Path, row: pd.Series) -> Image.Image:
        """``DatasetSpec.load`` of the view: the slice as an RGB image, 8 bits = round(255 x value)."""
        from PIL import Image

        stack = self.image_stack(int(row["meta/volume_row"]))
        gray = np.round(np.clip(self._slice(stack, row, "image"), 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))  # (H, W, 3) uint8: RGB

    def mask(self, root: Path, row: pd.Series) -> np.ndarray:
        """``DatasetSpec.mask`` of the view: the slice's label map (H, W)."""
        return self._slice(self.mask_stack(int(row["meta/volume_row"])), row, "label volume")

    def _slice(self, stack: np.ndarray, row: pd.Series, what: str) -> np.ndarray:
        s = int(row["meta/slice"])
        if not 0 <= s < len(stack):
            raise DatasetError(f"{self.source.spec.key}: the {what} of {row['meta/volume']} has {len(stack)} "
                               f"{self.plane} slices, not the {s + 1} its slice view was made with: the files "
                               "changed since; make the view again")
        return stack[s]


@dataclass
class SliceView(Dataset):
    """A 2D dataset of the foreground slices of a volumetric segmentation dataset (see the module).

    ``source`` is the volume dataset, ``plane`` the cut, ``depths`` the number of slices of
    each volume in the view (by volume row); everything else is a :class:`Dataset`.
    """

    source: Dataset | None = None
    plane: str = "axial"
    depths: dict[int, int] = field(default_factory=dict)
    reader: _Reader | None = field(default=None, repr=False, compare=False)

    def missing_files(self) -> list[str]:
        """The volumes' missing files (a volume may be a folder, e.g. a DICOM series)."""
        paths = set(self.table["path"].astype(str))
        return [p for p in self.source.missing_files() if p in paths]

    def label_stack(self, volume_row: int) -> np.ndarray:
        """The whole label volume of ``volume_row`` as uint8 (slices, H, W) in the view's plane:
        the truth a :func:`restack`-ed prediction of that volume is scored against."""
        return self.reader.mask_stack(int(volume_row)).copy()

    def spacing(self, volume_row: int) -> tuple[float, float, float]:
        """mm per voxel along the axes of :meth:`label_stack` (slices, rows, columns)."""
        return self.reader.spacing(int(volume_row))

    def volume_rows(self) -> np.ndarray:
        """The volume rows in the view, in order (each once)."""
        return np.array(list(self.depths), dtype=np.int64)


def slice_dataset(ds: Dataset, plane: str = "axial") -> SliceView:
    """The foreground slices of a volumetric segmentation dataset as a 2D dataset.

    Reads every label volume once to find the slices with any voxel > 0; a volume without
    any is left out and its id recorded (``extra_attrs["slice_view"]["skipped"]``).

    Parameters
    ----------
    ds
        A volumetric segmentation dataset (``ds.spec.volumetric_segmentation``), from
        :func:`fmcache.datasets.load_dataset`.
    plane
        ``"axial"`` (the volumes' slices as ``ds.image`` gives them), ``"coronal"`` or
        ``"sagittal"`` (cut from the same stacks: voxels keep their spacing, so a slice of an
        anisotropic volume looks stretched).

    Returns
    -------
    SliceView
        Named ``f"{ds.name}_slices"``; table columns ``id`` (``"<volume id>/z<index:04d>"``),
        ``subject``, ``split``, ``path`` and every ``label/``, ``sa/``, ``sa_raw/``, ``gen/`` and
        ``meta/`` column of the slice's volume, plus ``meta/volume`` (its id),
        ``meta/volume_row`` and ``meta/slice`` (ints). ``image(i)`` is an RGB PIL image,
        ``mask(i)`` a uint8 (H, W) label map.
    """
    if not ds.spec.volumetric_segmentation:
        raise DatasetError(f"{ds.name} is not a volumetric segmentation dataset (dimension {ds.spec.dim}, task "
                           f"{ds.spec.task}): only volumes with label volumes are cut into slices")
    if plane not in PLANE_AXES:
        raise DatasetError(f"plane {plane!r}: use {', '.join(PLANE_AXES)}")
    reader = _Reader(ds, plane)
    vol_rows, slices, skipped, depths = [], [], [], {}
    ids = ds.table["id"].astype(str).to_numpy()
    for v in range(len(ds.table)):
        labels = reader.mask_stack(v)
        found = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
        if not len(found):
            skipped.append(str(ids[v]))  # nothing to prompt in it
            continue
        depths[v] = int(len(labels))
        vol_rows.extend([v] * len(found))
        slices.extend(int(s) for s in found)
    if not vol_rows:
        raise DatasetError(f"{ds.name}: none of its {len(ds.table)} label volumes holds any foreground; "
                           "there is no slice to segment")
    vol_rows = np.asarray(vol_rows, dtype=np.int64)
    slices = np.asarray(slices, dtype=np.int64)
    table = _table(ds.table, vol_rows, slices)
    spec = dataclasses.replace(ds.spec, dim="2d", load=reader.load, mask=reader.mask, volume=None,
                               title=f"{ds.spec.title} ({plane} slices with foreground)")
    info = {"plane": plane, "of": ds.name, "of_fingerprint": ds.fingerprint, "skipped": skipped}
    return SliceView(spec=spec, name=f"{ds.name}{SUFFIX}", root=ds.root, options=dict(ds.options), seed=ds.seed,
                     table=table, fingerprint=_fingerprint(ds.fingerprint, plane, vol_rows, slices, depths),
                     extra_attrs={**ds.extra_attrs, VIEW_KEY: info}, attribute_rules=ds.attribute_rules,
                     source=ds, plane=plane, depths=depths, reader=reader)


def _table(volumes: pd.DataFrame, vol_rows: np.ndarray, slices: np.ndarray) -> pd.DataFrame:
    keep = [c for c in volumes.columns
            if c in ("id", "subject", "split", "path") or c.startswith(("label/", "sa/", "sa_raw/", *EXTRA_PREFIXES))]
    out = volumes[keep].iloc[vol_rows].reset_index(drop=True)
    vol_ids = out["id"].astype(str).to_numpy()
    out["id"] = [slice_id(v, s) for v, s in zip(vol_ids, slices)]
    out["meta/volume"] = vol_ids
    out["meta/volume_row"] = vol_rows
    out["meta/slice"] = slices
    return out


def _fingerprint(of: str, plane: str, vol_rows: np.ndarray, slices: np.ndarray, depths: Mapping[int, int]) -> str:
    """The volumes' fingerprint with the cut and the slices chosen: a label volume that gains or
    loses a foreground slice makes another view (another cache group)."""
    h = hashlib.sha256()
    h.update(json.dumps({"of": of, "plane": plane, "version": VIEW_VERSION,
                         "depths": {str(k): v for k, v in depths.items()}}, sort_keys=True).encode())
    h.update(vol_rows.astype("<i8").tobytes())
    h.update(slices.astype("<i8").tobytes())
    return h.hexdigest()[:16]


def _reslice(axial: np.ndarray, plane: str) -> np.ndarray:
    """A (slices, H, W) stack in the axial layout of ``canonical_to_slices``, cut in ``plane``."""
    if axial.ndim != 3:
        raise DatasetError(f"a volume's slices have shape {axial.shape}, expected (slices, H, W)")
    if plane == "axial":
        return axial
    # undo the axial cut (rows and columns reversed, then axes (2, 1, 0)) back to RAS+, and cut again
    return canonical_to_slices(np.transpose(axial[:, ::-1, ::-1], (2, 1, 0)), plane)


# ---------------------------------------------------------------------------- ids and the cache


def slice_id(volume_id: str, index: int) -> str:
    """A view row's id: ``"<volume id>/z<index:04d>"``."""
    return f"{volume_id}/z{int(index):04d}"


def split_id(sid: str) -> tuple[str, int]:
    """The volume id and slice index of a view row's id (ValueError when it is none)."""
    m = _ID.match(str(sid))
    if m is None:
        raise ValueError(f"{sid!r} is not a slice id '<volume id>/z<index>'")
    return m["volume"], int(m["slice"])


def is_slice_view(info: Mapping[str, Any]) -> bool:
    """Whether a cache group's attributes (``Embeddings.dataset_info``) describe a slice view."""
    view = info.get(VIEW_KEY)
    return isinstance(view, Mapping) and "plane" in view


def rebuild(info: Mapping[str, Any], data: str | Path | None = None, *, check: bool = True) -> SliceView:
    """The slice view a cache group was made from, made again from the user's copy of the release.

    Parameters
    ----------
    info
        The group's attributes (``Embeddings.dataset_info``): ``adapter``, ``options``,
        ``split_seed``, ``source_fingerprint`` and ``slice_view`` (``plane``, ``of_fingerprint``).
    data
        The volume dataset's release (None: ``$FMCACHE_DATA/<adapter>``).
    check
        DatasetError when the volumes' table or the slices chosen differ from the recorded ones.
    """
    from fmcache.datasets import load_dataset

    if not is_slice_view(info):
        raise DatasetError(f"the cache group of adapter {info.get('adapter')!r} is not a slice view")
    view_info = info[VIEW_KEY]
    ds = load_dataset(str(info["adapter"]), data, options=info.get("options") or {},
                      seed=int(info.get("split_seed", 0)))
    if check and ds.fingerprint != view_info.get("of_fingerprint"):
        raise DatasetError(f"the data at {ds.root} is not what {view_info.get('of')} was cached from (other files, "
                           "options or seed): pass --data the copy it was embedded from")
    view = slice_dataset(ds, plane=str(view_info["plane"]))
    if check and view.fingerprint != info.get("source_fingerprint"):
        raise DatasetError(f"the label volumes at {ds.root} do not have the foreground slices {view.name} was cached "
                           "from (a label file changed): pass --data the copy it was embedded from")
    return view


# ---------------------------------------------------------------------------- back to volumes


def volume_groups(view: SliceView, rows: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Volume row -> the view rows of its slices, in slice order.

    ``rows`` (None: all) restricts to those view rows, e.g. one split's: a volume's slices share
    its split, so a split holds whole volumes.
    """
    t = view.table
    rows = np.arange(len(t)) if rows is None else np.asarray(list(rows), dtype=np.int64)
    vol = t["meta/volume_row"].to_numpy(dtype=np.int64)[rows]
    sl = t["meta/slice"].to_numpy(dtype=np.int64)[rows]
    order = np.lexsort((sl, vol))  # by volume, then slice
    rows, vol = rows[order], vol[order]
    starts = np.flatnonzero(np.r_[True, vol[1:] != vol[:-1]]) if len(vol) else np.array([], np.int64)
    return {int(vol[a]): rows[a:b] for a, b in zip(starts, [*starts[1:], len(vol)])}


def restack(shape: int | Sequence[int], slice_index: Sequence[int] | np.ndarray,
            slice_masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Slice label maps put back into their volume: uint8 (slices, H, W), background elsewhere.

    Parameters
    ----------
    shape
        The volume's (slices, H, W) in the view's plane, or its number of slices (H, W from the masks).
    slice_index
        The slice of each mask, in any order (each slice at most once).
    slice_masks
        (H, W) label maps, one per index.
    """
    index = np.asarray(slice_index, dtype=np.int64).reshape(-1)
    masks = [np.asarray(m) for m in slice_masks]
    if len(masks) != len(index):
        raise ValueError(f"{len(masks)} slice masks for {len(index)} slice indices")
    if isinstance(shape, (int, np.integer)):
        if not masks:
            raise ValueError("a volume's height and width: give its shape, there is no mask to take them from")
        shape = (int(shape), *masks[0].shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"volume shape {shape}: expected (slices, H, W)")
    if len(np.unique(index)) != len(index):
        raise ValueError("a slice index occurs more than once")
    if len(index) and (index.min() < 0 or index.max() >= shape[0]):
        raise ValueError(f"slice indices {index.min()}..{index.max()} outside a volume of {shape[0]} slices")
    out = np.zeros(shape, np.uint8)
    for s, m in zip(index, masks):
        if m.shape != shape[1:]:
            raise ValueError(f"slice {s}: mask of shape {m.shape}, the volume's slices are {shape[1:]}")
        out[s] = m
    return out


def restack_volumes(view: SliceView, rows: Sequence[int] | np.ndarray,
                    slice_masks: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Volume row -> the volume restacked from the masks of view ``rows`` (``slice_masks[k]`` is row
    ``rows[k]``'s), shaped as :meth:`SliceView.label_stack` of that volume."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) != len(slice_masks):
        raise ValueError(f"{len(slice_masks)} slice masks for {len(rows)} rows")
    position = {int(r): k for k, r in enumerate(rows)}
    sl = view.table["meta/slice"].to_numpy(dtype=np.int64)
    out = {}
    for v, members in volume_groups(view, rows).items():
        masks = [slice_masks[position[int(r)]] for r in members]
        shape = (view.depths[v], *np.asarray(masks[0]).shape)
        out[v] = restack(shape, sl[members], masks)
    return out
