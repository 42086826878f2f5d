"""Prompts for SAM-family models, derived from ground-truth masks.

Coordinates follow SAM: a point is (x, y) with x the column and y the row, a box is
(x0, y0, x1, y1) (``SamPredictor.predict``: "XYXY format", points "(X,Y) in pixels"). Both are
pixel indices stored as float32: SAM's prompt encoder adds 0.5 itself to reach the pixel
centre (segment_anything/modeling/prompt_encoder.py, ``_embed_points`` and ``_embed_boxes``),
so pixel (row r, column c) is the point (c, r). x1 and y1 are inclusive, the last column and
row of the object, as SAM computes boxes from masks (``batched_mask_to_box`` in
segment_anything/utils/amg.py) and as FairMedFM does (datasets/utils.py:300-311).

Every random draw comes from a generator seeded by a content hash of (seed, item id, class,
prompt type), so an item's prompt does not depend on the other items of a run or their order.

A class with no pixels gets the *absent* prompt: ``Prompt.absent(kind)``, whose points and box
are None (``prompt.is_absent``); stored, it is NaN coordinates and point labels of -1.

Volumes (3D models: SAM-Med3D, SegVol) get the same prompt types from a 3D label volume. A volume
is an (X, Y, Z) array, the order of ``fmcache.datasets.volume_grid.Volume.array`` (RAS+: axis 0
toward the right, 1 anterior, 2 superior), and a 3D point is (x, y, z) = the voxel's index along
axes 0, 1, 2: ``volume[x, y, z]`` is the voxel. In both cases x, y (and z) name the array's axes
by their letters; a 2D image is (H, W) = (Y, X), so its point (x, y) reverses the array order,
and a volume is (X, Y, Z), so its point keeps it. An array in (Z, Y, X) order (a stack of slices,
SimpleITK's ``GetArrayFromImage``) is transposed first: ``array.transpose(2, 1, 0)``. A 3D box
is (x0, y0, z0, x1, y1, z1), x1, y1 and z1 inclusive. Coordinates are voxel indices of the given
volume: a model that resamples or crops (SAM-Med3D's 128^3 input) maps them into its own grid.

``center`` is the point deepest inside the object. With a ``spacing`` (the voxel's size in mm
along each array axis, ``Volume.spacing``; for an image, along (rows, columns)) depth is measured
in mm, so an anisotropic volume's centre is the deepest point of the anatomy, not of the voxel
grid. The other types do not depend on spacing: ``rand`` and ``rands`` are uniform over voxels,
``bbox`` and ``box_center`` are voxel-index boxes.

``build_prompts`` stores a batch of images or a batch of volumes, never both: points are
(n, C, k, 2) or (n, C, k, 3) and boxes (n, C, 4) or (n, C, 6).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fmcache.errors import SegmentInputError, did_you_mean

N_POINTS = {"center": 1, "box_center": 1, "rand": 1, "rands": 5}
"""Positive points per object for each point prompt type."""

PROMPT_TYPES = (*N_POINTS, "bbox")
"""Every prompt type: ``center`` (inside the object), ``box_center`` (FairMedFM's centre of the
box), ``rand`` (1 uniform point), ``rands`` (5 uniform points), ``bbox`` (tight box)."""

# SAM reads a point label of -1 as "not a point" (padding), so it marks absent points too
_NO_LABEL = -1


@dataclass(frozen=True, eq=False)
class Prompt:
    """The prompt for one object.

    Attributes
    ----------
    kind
        The prompt type, one of ``PROMPT_TYPES``.
    points
        (k, 2) float32 (x, y) positive points, (k, 3) (x, y, z) for a volume, or None (a box
        prompt, or absent).
    point_labels
        (k,) int32, 1 for each point (foreground), or None.
    box
        (4,) float32 (x0, y0, x1, y1), (6,) (x0, y0, z0, x1, y1, z1) for a volume, the upper
        corner inclusive, or None.
    ndim
        2 for an image, 3 for a volume; read off the points or box when not given (2 when
        absent), so only an absent volume prompt needs it.
    """

    kind: str
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    ndim: int | None = None

    def __post_init__(self) -> None:
        shown = set()
        if self.points is not None:
            shown.add(np.shape(self.points)[-1])
        if self.box is not None:
            shown.add(np.shape(self.box)[-1] // 2)
        if len(shown) > 1 or (self.ndim is not None and shown and shown != {self.ndim}):
            raise SegmentInputError(f"a {self.kind!r} prompt mixes dimensions: ndim={self.ndim}, points "
                                    f"{np.shape(self.points)}, box {np.shape(self.box)}")
        if self.ndim is None:
            object.__setattr__(self, "ndim", shown.pop() if shown else 2)
        if self.ndim not in (2, 3):
            raise SegmentInputError(f"a prompt is for a 2D image or a 3D volume, got ndim={self.ndim}")

    @classmethod
    def absent(cls, kind: str, ndim: int = 2) -> Prompt:
        """The marker for an object with no pixels: no points, no box; ``ndim`` 3 for a volume."""
        _check_kind(kind)
        return cls(kind, ndim=ndim)

    @property
    def is_absent(self) -> bool:
        return self.points is None and self.box is None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Fixed-shape arrays for storage: ``points`` (k, d) and ``point_labels`` (k,) for point
        types, ``box`` (2d,) for ``bbox``, d = ``ndim``; NaN coordinates and labels of -1 when absent."""
        d = self.ndim
        if self.kind == "bbox":
            box = np.full(2 * d, np.nan, np.float32) if self.box is None else self.box
            return {"box": np.asarray(box, np.float32)}
        k = N_POINTS[self.kind]
        if self.points is None:
            return {"points": np.full((k, d), np.nan, np.float32), "point_labels": np.full(k, _NO_LABEL, np.int32)}
        return {"points": np.asarray(self.points, np.float32), "point_labels": np.asarray(self.point_labels, np.int32)}

    @classmethod
    def from_arrays(cls, kind: str, arrays: Mapping[str, np.ndarray]) -> Prompt:
        """The prompt that ``to_arrays`` stored (absent if its coordinates are NaN); 2D or 3D by
        the arrays' last dimension."""
        _check_kind(kind)
        if kind == "bbox":
            box = np.asarray(arrays["box"], np.float32)
            return cls.absent(kind, box.shape[-1] // 2) if np.isnan(box).any() else cls(kind, box=box)
        points = np.asarray(arrays["points"], np.float32)
        if np.isnan(points).any():
            return cls.absent(kind, points.shape[-1])
        return cls(kind, points=points, point_labels=np.asarray(arrays["point_labels"], np.int32))


def make_prompt(mask: np.ndarray, kind: str, *, seed: int, item_id: object, cls: int = 1,
                jitter: int = 0, spacing: Sequence[float] | None = None) -> Prompt:
    """The prompt of one type for one object.

    Parameters
    ----------
    mask
        (H, W) image or (X, Y, Z) volume; nonzero pixels (voxels) are the object.
    kind
        One of ``PROMPT_TYPES``. ``rands`` draws its 5 points without replacement, and with
        replacement only when the object has fewer than 5 pixels (then points repeat).
    seed, item_id, cls
        Seed the draws of ``rand``, ``rands`` and a jittered ``bbox``. The item id is read as
        text: 7 and "7" are the same item.
    jitter
        For ``bbox``: each side moves by its own integer drawn uniformly from
        [-jitter, jitter], then is clipped to the image (volume); 0 gives the tight box.
    spacing
        The pixel (voxel) size along each array axis, e.g. ``Volume.spacing`` in mm; only
        ``center`` uses it, to find the deepest point in those units. None: every axis 1.

    Returns
    -------
    Prompt
        ``Prompt.absent(kind, mask.ndim)`` when the mask is empty.

    Raises
    ------
    SegmentInputError
        A mask that is neither 2D nor 3D, an unknown type, a negative jitter, a seed that is not
        an integer or a spacing that is not one positive size per axis.
    """
    _check_kind(kind)
    mask = _as_image(mask, "mask") != 0
    _check_options(seed, jitter)
    spacing = _spacing(spacing, mask.ndim)
    if not mask.any():
        return Prompt.absent(kind, mask.ndim)
    rng = _rng(seed, item_id, cls, kind)
    if kind == "bbox":
        return Prompt(kind, box=_box(mask, rng, int(jitter)))
    where = np.nonzero(mask)
    if kind == "center":
        flat = [_inner_point(mask, spacing)]
    elif kind == "box_center":
        # FairMedFM's "center" (datasets/utils.py:261-274): floor of the midpoint of the
        # inclusive min and max indices; for a ring it is the hole
        flat = [np.ravel_multi_index(tuple((i.min() + i.max()) // 2 for i in where), mask.shape)]
    else:
        n = N_POINTS[kind]
        # FairMedFM draws with replacement (datasets/utils.py:289); we draw distinct points
        # whenever the object has enough of them
        flat = rng.choice(np.ravel_multi_index(where, mask.shape), size=n, replace=where[0].size < n)
    index = np.unravel_index(np.asarray(flat), mask.shape)
    points = np.stack([index[a] for a in _point_axes(mask.ndim)], axis=-1).astype(np.float32)
    return Prompt(kind, points=points, point_labels=np.ones(len(points), np.int32))


def class_prompts(label_map: np.ndarray, kind: str, *, seed: int, item_id: object, n_classes: int | None = None,
                  jitter: int = 0, spacing: Sequence[float] | None = None) -> dict[int, Prompt]:
    """The prompt of one type for each class of a label map.

    Parameters
    ----------
    label_map
        (H, W) image or (X, Y, Z) volume of integers, 0 the background and 1..C the classes; a
        boolean mask is class 1.
    n_classes
        C; by default the largest label in the map (at least 1).
    kind, seed, item_id, jitter, spacing
        As for ``make_prompt``.

    Returns
    -------
    dict
        Class -> Prompt for every class 1..C; ``Prompt.absent(kind)`` for a class with no pixels.
    """
    labels = _label_map(label_map)
    n_classes = _n_classes([labels], n_classes)
    return {c: make_prompt(labels == c, kind, seed=seed, item_id=item_id, cls=c, jitter=jitter, spacing=spacing)
            for c in range(1, n_classes + 1)}


def build_prompts(masks: Sequence[np.ndarray], ids: Sequence[object], kinds: Sequence[str], *, seed: int,
                  n_classes: int | None = None, jitter: int = 0,
                  spacings: Sequence[Sequence[float] | None] | None = None) -> dict[str, np.ndarray]:
    """Prompts of several types for a batch of items, as plain arrays to store.

    Parameters
    ----------
    masks
        One label map per item, all (H, W) images or all (X, Y, Z) volumes (sizes may differ);
        see ``class_prompts``.
    ids
        One id per item; an item's prompts depend on its id, not on its position.
    kinds
        Prompt types, each one of ``PROMPT_TYPES``.
    n_classes
        C; by default the largest label in the batch (at least 1). Give it to get the same
        shapes from every batch of a dataset.
    seed, jitter
        As for ``make_prompt``.
    spacings
        One ``spacing`` per item (see ``make_prompt``; None for an item in index units), or None
        for none at all.

    Returns
    -------
    dict
        ``ids`` (n,) str, ``classes`` (C,) int32 (1..C), ``present`` (n, C) bool, ``seed`` and
        ``jitter`` (0-d int64), and per type ``"{kind}.points"`` (n, C, k, d) float32 with
        ``"{kind}.point_labels"`` (n, C, k) int32, or ``"bbox.box"`` (n, C, 2d) float32, d = 2
        for images ((x, y) points, (x0, y0, x1, y1) boxes) and 3 for volumes ((x, y, z),
        (x0, y0, z0, x1, y1, z1)); absent prompts are NaN with labels of -1. With ``spacings``,
        also ``spacing`` (n, d) float64, 1 where an item had None. An empty batch has d = 2.
        ``prompt_at`` reads one prompt back.

    Raises
    ------
    SegmentInputError
        Besides ``make_prompt``'s: images and volumes in one batch, or counts of ids or
        spacings that differ from the count of masks.
    """
    if len(masks) != len(ids):
        raise SegmentInputError(f"{len(masks)} masks but {len(ids)} ids: give one id per mask")
    if spacings is not None and len(spacings) != len(masks):
        raise SegmentInputError(f"{len(masks)} masks but {len(spacings)} spacings: give one spacing (or None) per mask")
    for kind in kinds:
        _check_kind(kind)
    _check_options(seed, jitter)
    labels = [_label_map(m) for m in masks]
    dims = sorted({m.ndim for m in labels})
    if len(dims) > 1:
        first = {d: next(i for i, m in enumerate(labels) if m.ndim == d) for d in dims}
        raise SegmentInputError(f"the masks mix 2D images (item {first[2]}, shape {labels[first[2]].shape}) and 3D "
                                f"volumes (item {first[3]}, shape {labels[first[3]].shape}): build their prompts "
                                f"in separate calls")
    ndim = dims[0] if dims else 2
    per_spacing = [None] * len(labels) if spacings is None else [_spacing(s, ndim) for s in spacings]
    n_classes = _n_classes(labels, n_classes)
    out: dict[str, np.ndarray] = {
        "ids": np.asarray([str(i) for i in ids], dtype=str),
        "classes": np.arange(1, n_classes + 1, dtype=np.int32),
        "present": np.array([[(m == c).any() for c in range(1, n_classes + 1)] for m in labels],
                            dtype=bool).reshape(len(labels), n_classes),
        "seed": np.asarray(seed, np.int64),
        "jitter": np.asarray(jitter, np.int64),
    }
    if spacings is not None:
        out["spacing"] = np.array([np.ones(ndim) if s is None else s for s in per_spacing],
                                  dtype=np.float64).reshape(len(labels), ndim)
    for kind in kinds:
        per_item = [class_prompts(m, kind, seed=seed, item_id=i, n_classes=n_classes, jitter=jitter, spacing=s)
                    for m, i, s in zip(labels, ids, per_spacing)]
        empty = Prompt.absent(kind, ndim).to_arrays()
        for name, blank in empty.items():
            stacked = [[p.to_arrays()[name] for p in item.values()] for item in per_item]
            out[f"{kind}.{name}"] = (np.array(stacked, dtype=blank.dtype) if per_item
                                     else np.empty((0, n_classes, *blank.shape), blank.dtype))
    return out


def prompt_at(arrays: Mapping[str, np.ndarray], kind: str, index: int, cls: int) -> Prompt:
    """The prompt of type ``kind`` for item ``index`` (its position) and class ``cls`` (1..C)
    from the arrays of ``build_prompts``: a 2D or 3D prompt as the arrays hold."""
    _check_kind(kind)
    prefix = f"{kind}."
    fields = {k[len(prefix):]: v[index, cls - 1] for k, v in arrays.items() if k.startswith(prefix)}
    if not fields:
        raise SegmentInputError(f"no {kind!r} prompts in these arrays: build them with kinds=[{kind!r}, ...]")
    return Prompt.from_arrays(kind, fields)


def _rng(seed: int, item_id: object, cls: int, kind: str) -> np.random.Generator:
    # a content hash, not hash(): the same on every process, machine and run
    key = json.dumps([int(seed), str(item_id), int(cls), kind])
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "little"))


def _point_axes(ndim: int) -> tuple[int, ...]:
    """The array axis of each point coordinate: (x, y) of an (H, W) image are axes (1, 0), (x, y, z)
    of an (X, Y, Z) volume are axes (0, 1, 2)."""
    return (1, 0) if ndim == 2 else (0, 1, 2)


def _inner_point(mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> int:
    """Flat index of the pixel (voxel) farthest from the background, in units of ``spacing``, the
    image's outside counting as background (so a mask that fills the image has an answer)."""
    # the transform runs on the object's box plus a one-voxel background frame: a nearest
    # background voxel outside that box is never nearer than the frame, so depths are the same as
    # on the whole array, at the cost of the object's size instead of the volume's
    where = np.nonzero(mask)
    lo = np.array([i.min() for i in where])
    crop = mask[tuple(slice(a, b + 1) for a, b in zip(lo, (i.max() for i in where)))]
    core = (slice(1, -1),) * mask.ndim
    dist = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing)[core].ravel()
    # with a spacing, equal depths reached along different axes can differ in the last bit
    ties = np.flatnonzero(dist >= dist.max() * (1 - 1e-12))
    # a plateau (an elongated object) would otherwise give its first corner: take the tie
    # nearest the plateau's centroid (in units of spacing), the first such in row-major order;
    # measured on the whole array's indices so the cropping changes no rounding
    index = [i + o for i, o in zip(np.unravel_index(ties, crop.shape), lo)]
    scale = (1,) * mask.ndim if spacing is None else spacing
    spread = sum(((i - i.mean()) * s) ** 2 for i, s in zip(index, scale))
    best = int(np.argmin(spread))
    return int(np.ravel_multi_index(tuple(i[best] for i in index), mask.shape))


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    where = np.nonzero(mask)
    axes = _point_axes(mask.ndim)
    box = np.array([where[a].min() for a in axes] + [where[a].max() for a in axes], np.int64)
    if jitter:
        box += rng.integers(-jitter, jitter, size=box.size, endpoint=True)
        last = [mask.shape[a] - 1 for a in axes]
        box = np.clip(box, 0, last + last)
        # sides that crossed are put back in order; each stays within jitter of its tight value
        d = len(axes)
        box = np.concatenate([np.minimum(box[:d], box[d:]), np.maximum(box[:d], box[d:])])
    return box.astype(np.float32)


def _check_options(seed: int, jitter: int) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(jitter) or jitter < 0:
        raise SegmentInputError(f"box jitter must be a whole number of pixels >= 0, got {jitter!r}")
    if not is_int(seed):
        raise SegmentInputError(f"the prompt seed must be an integer, got {seed!r}")


def _check_kind(kind: str) -> None:
    if kind not in PROMPT_TYPES:
        raise SegmentInputError(f"unknown prompt type {kind!r}{did_you_mean(str(kind), PROMPT_TYPES)}; "
                               f"choose from {', '.join(PROMPT_TYPES)}")


def _as_image(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise SegmentInputError(f"a {what} must be 2D (H, W) or a 3D (X, Y, Z) volume, got shape {array.shape}")
    return array


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    try:
        sizes = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        sizes = np.empty(0)
    if sizes.shape != (ndim,) or not (np.isfinite(sizes) & (sizes > 0)).all():
        raise SegmentInputError(f"a spacing is one positive size per axis of the {ndim}D mask, got {spacing!r}")
    return tuple(float(s) for s in sizes)


def _label_map(label_map: np.ndarray) -> np.ndarray:
    labels = _as_image(label_map, "label map")
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise SegmentInputError(f"a label map must hold integers (0 background, 1..C classes), got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise SegmentInputError(f"a label map holds a negative label {labels.min()}: 0 is background, 1..C classes")
    return labels


def _n_classes(labels: Sequence[np.ndarray], n_classes: int | None) -> int:
    largest = max((int(m.max()) for m in labels if m.size), default=0)
    if n_classes is None:
        return max(largest, 1)
    if n_classes < 1 or largest > n_classes:
        raise SegmentInputError(f"n_classes={n_classes} but the masks hold label {largest}: give n_classes >= {largest}")
    return int(n_classes)
