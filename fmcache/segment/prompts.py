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
        (k, 2) float32 (x, y) positive points, or None (a box prompt, or absent).
    point_labels
        (k,) int32, 1 for each point (foreground), or None.
    box
        (4,) float32 (x0, y0, x1, y1), x1 and y1 inclusive, or None.
    """

    kind: str
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @classmethod
    def absent(cls, kind: str) -> Prompt:
        """The marker for an object with no pixels: no points, no box."""
        _check_kind(kind)
        return cls(kind)

    @property
    def is_absent(self) -> bool:
        return self.points is None and self.box is None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Fixed-shape arrays for storage: ``points`` (k, 2) and ``point_labels`` (k,) for point
        types, ``box`` (4,) for ``bbox``; NaN coordinates and labels of -1 when absent."""
        if self.kind == "bbox":
            box = np.full(4, np.nan, np.float32) if self.box is None else self.box
            return {"box": np.asarray(box, np.float32)}
        k = N_POINTS[self.kind]
        if self.points is None:
            return {"points": np.full((k, 2), np.nan, np.float32), "point_labels": np.full(k, _NO_LABEL, np.int32)}
        return {"points": np.asarray(self.points, np.float32), "point_labels": np.asarray(self.point_labels, np.int32)}

    @classmethod
    def from_arrays(cls, kind: str, arrays: Mapping[str, np.ndarray]) -> Prompt:
        """The prompt that ``to_arrays`` stored (absent if its coordinates are NaN)."""
        _check_kind(kind)
        if kind == "bbox":
            box = np.asarray(arrays["box"], np.float32)
            return cls.absent(kind) if np.isnan(box).any() else cls(kind, box=box)
        points = np.asarray(arrays["points"], np.float32)
        if np.isnan(points).any():
            return cls.absent(kind)
        return cls(kind, points=points, point_labels=np.asarray(arrays["point_labels"], np.int32))


def make_prompt(mask: np.ndarray, kind: str, *, seed: int, item_id: object, cls: int = 1,
                jitter: int = 0) -> Prompt:
    """The prompt of one type for one object.

    Parameters
    ----------
    mask
        (H, W) array; nonzero pixels are the object.
    kind
        One of ``PROMPT_TYPES``. ``rands`` draws its 5 points without replacement, and with
        replacement only when the object has fewer than 5 pixels (then points repeat).
    seed, item_id, cls
        Seed the draws of ``rand``, ``rands`` and a jittered ``bbox``. The item id is read as
        text: 7 and "7" are the same item.
    jitter
        For ``bbox``: each side moves by its own integer drawn uniformly from
        [-jitter, jitter], then is clipped to the image; 0 gives the tight box.

    Returns
    -------
    Prompt
        ``Prompt.absent(kind)`` when the mask is empty.

    Raises
    ------
    SegmentInputError
        A mask that is not 2D, an unknown type, a negative jitter or a seed that is not an integer.
    """
    _check_kind(kind)
    mask = _as_2d(mask, "mask") != 0
    _check_options(seed, jitter)
    if not mask.any():
        return Prompt.absent(kind)
    rng = _rng(seed, item_id, cls, kind)
    if kind == "bbox":
        return Prompt(kind, box=_box(mask, rng, int(jitter)))
    rows, cols = np.nonzero(mask)
    if kind == "center":
        flat = [_inner_point(mask)]
    elif kind == "box_center":
        # FairMedFM's "center" (datasets/utils.py:261-274): floor of the midpoint of the
        # inclusive min and max indices; for a ring it is the hole
        flat = [(rows.min() + rows.max()) // 2 * mask.shape[1] + (cols.min() + cols.max()) // 2]
    else:
        n = N_POINTS[kind]
        # FairMedFM draws with replacement (datasets/utils.py:289); we draw distinct points
        # whenever the object has enough of them
        flat = rng.choice(rows * mask.shape[1] + cols, size=n, replace=rows.size < n)
    y, x = np.divmod(np.asarray(flat), mask.shape[1])
    points = np.stack([x, y], axis=-1).astype(np.float32)
    return Prompt(kind, points=points, point_labels=np.ones(len(points), np.int32))


def class_prompts(label_map: np.ndarray, kind: str, *, seed: int, item_id: object, n_classes: int | None = None,
                  jitter: int = 0) -> dict[int, Prompt]:
    """The prompt of one type for each class of a label map.

    Parameters
    ----------
    label_map
        (H, W) integer array, 0 the background and 1..C the classes; a boolean mask is class 1.
    n_classes
        C; by default the largest label in the map (at least 1).
    kind, seed, item_id, jitter
        As for ``make_prompt``.

    Returns
    -------
    dict
        Class -> Prompt for every class 1..C; ``Prompt.absent(kind)`` for a class with no pixels.
    """
    labels = _label_map(label_map)
    n_classes = _n_classes([labels], n_classes)
    return {c: make_prompt(labels == c, kind, seed=seed, item_id=item_id, cls=c, jitter=jitter)
            for c in range(1, n_classes + 1)}


def build_prompts(masks: Sequence[np.ndarray], ids: Sequence[object], kinds: Sequence[str], *, seed: int,
                  n_classes: int | None = None, jitter: int = 0) -> dict[str, np.ndarray]:
    """Prompts of several types for a batch of items, as plain arrays to store.

    Parameters
    ----------
    masks
        One (H, W) label map per item (sizes may differ); see ``class_prompts``.
    ids
        One id per item; an item's prompts depend on its id, not on its position.
    kinds
        Prompt types, each one of ``PROMPT_TYPES``.
    n_classes
        C; by default the largest label in the batch (at least 1). Give it to get the same
        shapes from every batch of a dataset.
    seed, jitter
        As for ``make_prompt``.

    Returns
    -------
    dict
        ``ids`` (n,) str, ``classes`` (C,) int32 (1..C), ``present`` (n, C) bool, ``seed`` and
        ``jitter`` (0-d int64), and per type ``"{kind}.points"`` (n, C, k, 2) float32 with
        ``"{kind}.point_labels"`` (n, C, k) int32, or ``"bbox.box"`` (n, C, 4) float32; absent
        prompts are NaN with labels of -1. ``prompt_at`` reads one back.
    """
    if len(masks) != len(ids):
        raise SegmentInputError(f"{len(masks)} masks but {len(ids)} ids: give one id per mask")
    for kind in kinds:
        _check_kind(kind)
    _check_options(seed, jitter)
    labels = [_label_map(m) for m in masks]
    n_classes = _n_classes(labels, n_classes)
    out: dict[str, np.ndarray] = {
        "ids": np.asarray([str(i) for i in ids], dtype=str),
        "classes": np.arange(1, n_classes + 1, dtype=np.int32),
        "present": np.array([[(m == c).any() for c in range(1, n_classes + 1)] for m in labels],
                            dtype=bool).reshape(len(labels), n_classes),
        "seed": np.asarray(seed, np.int64),
        "jitter": np.asarray(jitter, np.int64),
    }
    for kind in kinds:
        per_item = [class_prompts(m, kind, seed=seed, item_id=i, n_classes=n_classes, jitter=jitter)
                    for m, i in zip(labels, ids)]
        empty = Prompt.absent(kind).to_arrays()
        for name, blank in empty.items():
            stacked = [[p.to_arrays()[name] for p in item.values()] for item in per_item]
            out[f"{kind}.{name}"] = (np.array(stacked, dtype=blank.dtype) if per_item
                                     else np.empty((0, n_classes, *blank.shape), blank.dtype))
    return out


def prompt_at(arrays: Mapping[str, np.ndarray], kind: str, index: int, cls: int) -> Prompt:
    """The prompt of type ``kind`` for item ``index`` (its position) and class ``cls`` (1..C)
    from the arrays of ``build_prompts``."""
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


def _inner_point(mask: np.ndarray) -> int:
    """Flat index of the pixel farthest from the background, the image's outside counting as
    background (so a mask that fills the image has an answer)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].ravel()
    ties = np.flatnonzero(dist == dist.max())
    # a plateau (an elongated object) would otherwise give its first corner: take the tie
    # nearest the plateau's centroid, the first such in row-major order
    y, x = np.divmod(ties, mask.shape[1])
    return int(ties[np.argmin((y - y.mean()) ** 2 + (x - x.mean()) ** 2)])


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: int) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], np.int64)
    if jitter:
        box += rng.integers(-jitter, jitter, size=4, endpoint=True)
        h, w = mask.shape
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        # sides that crossed are put back in order; each stays within jitter of its tight value
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
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


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise SegmentInputError(f"a {what} must be 2D (H, W), got shape {array.shape}: prompt one slice at a time")
    return array


def _label_map(label_map: np.ndarray) -> np.ndarray:
    labels = _as_2d(label_map, "label map")
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
