"""A volume brought to a 3D segmentation model's input grid, and a prediction brought back.

SAM-Med3D reads a 128³ block at 1.5 mm isotropic spacing around the object; SegVol reads its
own spacing and size. :func:`to_model_input` resamples a canonical
:class:`~fmcache.datasets.volume_grid.Volume` to the model's spacing (MONAI ``Spacing``, which
keeps the volume's axis directions, so an oblique grid stays oblique and only the voxel size
changes), then crops and pads a block of the model's size around a centre. The
:class:`VolumeGeometry` it returns holds everything :func:`to_original_grid` needs to put a
predicted mask back on the original voxels, where it is scored against the label volume.

The geometry record is plain numbers (JSON) and this module imports MONAI (and so torch) only
inside the two functions: reading a stored record next to cached 3D features loads neither.

SegVol's zoom-out resizes the whole volume instead (:func:`resize_to_model_input`), which
is the same kind of record. The intensity recipes are :mod:`fmcache.segment.volume_intensity`'s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from fmcache.errors import SegmentInputError

if TYPE_CHECKING:
    from fmcache.datasets.volume_grid import Volume

VECTOR_LENGTH = 47  # VolumeGeometry.to_vector: 5 triples and 2 affines
Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]
Affine = tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a model's input block lies on a volume's original grid.

    Attributes
    ----------
    original_shape, original_spacing, original_affine, orientation
        The volume as read: ``(X, Y, Z)``, mm per voxel, voxel -> RAS+ mm, axis codes.
    target_spacing
        The model's voxel size in mm.
    resampled_shape, resampled_affine
        The grid MONAI ``Spacing`` resampled the volume onto: same origin and axis
        directions as the original, voxels of ``target_spacing``.
    box_start, box_size
        The model's input block in resampled voxels: ``box_start`` may be negative and
        ``box_start + box_size`` may pass ``resampled_shape``; those parts were padded.
    """

    original_shape: IntTriple
    original_spacing: Triple
    original_affine: Affine
    orientation: tuple[str, str, str]
    target_spacing: Triple
    resampled_shape: IntTriple
    resampled_affine: Affine
    box_start: IntTriple
    box_size: IntTriple

    @property
    def input_affine(self) -> np.ndarray:
        """Voxel index of the model's input block -> RAS+ mm."""
        shift = np.eye(4)
        shift[:3, 3] = self.box_start
        return np.asarray(self.resampled_affine) @ shift

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def to_vector(self) -> np.ndarray:
        """The record as :data:`VECTOR_LENGTH` float64 numbers (how the cache stores it per block).

        Spacing and orientation are not stored twice: they are read off the original affine.
        """
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in (
            self.original_shape, self.target_spacing, self.resampled_shape, self.box_start, self.box_size,
            self.original_affine, self.resampled_affine)])

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "VolumeGeometry":
        """The record :meth:`to_vector` wrote."""
        v = np.asarray(v, np.float64)
        if v.shape != (VECTOR_LENGTH,):
            raise SegmentInputError(f"a volume geometry vector has {VECTOR_LENGTH} numbers, got shape {v.shape}")
        original = v[15:31].reshape(4, 4)
        import nibabel as nib

        return cls(
            original_shape=_ints(v[0:3]),
            original_spacing=_floats(np.sqrt((original[:3, :3] ** 2).sum(axis=0))),
            original_affine=_affine(original),
            orientation=tuple(nib.aff2axcodes(original)),  # type: ignore[arg-type]
            target_spacing=_floats(v[3:6]),
            resampled_shape=_ints(v[6:9]),
            resampled_affine=_affine(v[31:47].reshape(4, 4)),
            box_start=_ints(v[9:12]),
            box_size=_ints(v[12:15]),
        )

    @classmethod
    def from_json(cls, text: str) -> "VolumeGeometry":
        """The record :meth:`to_json` wrote; SegmentInputError when fields are missing or malformed."""
        try:
            d = json.loads(text)
            return cls(
                original_shape=_ints(d["original_shape"]),
                original_spacing=_floats(d["original_spacing"]),
                original_affine=_affine(d["original_affine"]),
                orientation=tuple(str(c) for c in d["orientation"]),  # type: ignore[arg-type]
                target_spacing=_floats(d["target_spacing"]),
                resampled_shape=_ints(d["resampled_shape"]),
                resampled_affine=_affine(d["resampled_affine"]),
                box_start=_ints(d["box_start"]),
                box_size=_ints(d["box_size"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SegmentInputError(f"not a volume geometry record: {e.__class__.__name__}: {e}") from None


def _ints(v) -> IntTriple:
    out = tuple(int(x) for x in v)
    if len(out) != 3:
        raise ValueError(f"expected 3 integers, got {v!r}")
    return out  # type: ignore[return-value]


def _floats(v) -> Triple:
    out = tuple(float(x) for x in v)
    if len(out) != 3:
        raise ValueError(f"expected 3 numbers, got {v!r}")
    return out  # type: ignore[return-value]


def _affine(m) -> Affine:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4 x 4 affine, got shape {a.shape}")
    return tuple(tuple(float(x) for x in row) for row in a)  # type: ignore[return-value]


def _triple(value, name: str, kind=float) -> tuple:
    v = tuple(kind(x) for x in np.broadcast_to(np.asarray(value), (3,)))
    if any(x <= 0 for x in v):
        raise SegmentInputError(f"{name} must be positive along all three axes, got {value!r}")
    return v


def to_model_input(volume: "Volume", spacing=(1.5, 1.5, 1.5), size=(128, 128, 128), center=None,
                   mode: Literal["bilinear", "nearest"] = "bilinear", pad_value: float = 0.0,
                   ) -> tuple[np.ndarray, VolumeGeometry]:
    """Resample a volume to ``spacing`` and cut a ``size`` block around ``center``.

    Parameters
    ----------
    volume
        A canonical volume (:mod:`fmcache.datasets.volume_grid`).
    spacing, size
        The model's voxel size in mm and input shape (a number means the same on all axes).
    center
        A voxel position ``(i, j, k)`` in the *original* grid (e.g. the object's centre from a
        prompt) that lands at index ``size // 2`` of the block; None: the block is centred on
        the resampled volume (``box_start = (resampled_shape - size) // 2``).
    mode
        ``"bilinear"`` (trilinear) for images, ``"nearest"`` for label maps.
    pad_value
        The value of voxels of the block outside the volume.

    Returns
    -------
    (array, geometry)
        float32 ``size`` array and the :class:`VolumeGeometry` that maps it back.
    """
    from monai.data import MetaTensor
    from monai.transforms import BorderPad, Spacing, SpatialCrop

    if mode not in ("bilinear", "nearest"):
        raise SegmentInputError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    pixdim = _triple(spacing, "spacing")
    block = _triple(size, "size", int)
    data = np.asarray(volume.array)
    if data.ndim != 3:
        raise SegmentInputError(f"a 3D volume is expected, got shape {data.shape}")
    image = MetaTensor(data.astype(np.float32, copy=False)[None], affine=np.asarray(volume.affine, np.float64))
    # border padding: Spacing's output grid can reach half a voxel past the last input voxel
    resampled = Spacing(pixdim=pixdim, mode=mode, padding_mode="border")(image)
    res_shape = tuple(int(n) for n in resampled.shape[1:])
    res_affine = np.asarray(resampled.affine, dtype=np.float64)

    if center is None:
        start = tuple((n - b) // 2 for n, b in zip(res_shape, block))
    else:
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (3,) or not np.isfinite(c).all():
            raise SegmentInputError(f"center must be a voxel position (i, j, k), got {center!r}")
        world = np.asarray(volume.affine, np.float64) @ np.append(c, 1.0)
        c_res = np.linalg.solve(res_affine, world)[:3]
        start = tuple(int(np.floor(x + 0.5)) - b // 2 for x, b in zip(c_res, block))

    lo = [max(s, 0) for s in start]
    hi = [min(s + b, n) for s, b, n in zip(start, block, res_shape)]
    if any(h <= low for low, h in zip(lo, hi)):
        raise SegmentInputError(f"the {block} block at {start} does not overlap the resampled volume {res_shape}")
    cropped = SpatialCrop(roi_start=lo, roi_end=hi)(resampled)
    border = [p for low, h, s, b in zip(lo, hi, start, block) for p in (low - s, s + b - h)]
    out = BorderPad(spatial_border=border, mode="constant", value=pad_value)(cropped)

    geometry = VolumeGeometry(
        original_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        original_spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        original_affine=_affine(volume.affine),
        orientation=tuple(volume.orientation),  # type: ignore[arg-type]
        target_spacing=pixdim,  # type: ignore[arg-type]
        resampled_shape=res_shape,  # type: ignore[arg-type]
        resampled_affine=_affine(res_affine),
        box_start=start,  # type: ignore[arg-type]
        box_size=block,  # type: ignore[arg-type]
    )
    return np.asarray(out.array[0], dtype=np.float32), geometry


def resize_to_model_input(volume: "Volume", size, mode: str = "trilinear") -> tuple[np.ndarray, VolumeGeometry]:
    """The whole volume resized to ``size`` (SegVol's zoom-out), with its :class:`VolumeGeometry`.

    A resize is a resampling: voxel j of the output along an axis of n voxels resized to m
    lies where input voxel (j + 0.5) n / m - 0.5 lies (the half-voxel-centred rule of MONAI's
    ``Resize`` and torch's interpolation without corner alignment), so the record is the same
    kind as :func:`to_model_input`'s and :func:`to_original_grid` maps a prediction back.

    Parameters
    ----------
    size
        The model's input shape in the volume's (X, Y, Z) order.
    mode
        MONAI ``Resize`` mode: ``trilinear``, ``nearest``, ``nearest-exact``, ``area``.
    """
    from monai.transforms import Resize

    block = _triple(size, "size", int)
    data = np.asarray(volume.array)
    if data.ndim != 3:
        raise SegmentInputError(f"a 3D volume is expected, got shape {data.shape}")
    resize = Resize(spatial_size=block, mode=mode) if mode in ("nearest", "nearest-exact", "area") else \
        Resize(spatial_size=block, mode=mode, align_corners=False)
    out = np.asarray(resize(data.astype(np.float32, copy=False)[None]))[0]
    ratio = np.array(data.shape, np.float64) / np.array(block, np.float64)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = (ratio - 1.0) / 2.0
    affine = np.asarray(volume.affine, np.float64)
    geometry = VolumeGeometry(
        original_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        original_spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        original_affine=_affine(affine),
        orientation=tuple(volume.orientation),  # type: ignore[arg-type]
        target_spacing=tuple(float(s * r) for s, r in zip(volume.spacing, ratio)),  # type: ignore[arg-type]
        resampled_shape=block,  # type: ignore[arg-type]
        resampled_affine=_affine(affine @ scale),
        box_start=(0, 0, 0),
        box_size=block,  # type: ignore[arg-type]
    )
    return np.asarray(out, dtype=np.float32), geometry


def to_block_coords(points: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Voxel positions (..., 3) of the original grid as positions in the model's input block."""
    p = np.asarray(points, dtype=np.float64)
    world = np.asarray(geometry.original_affine) @ np.concatenate([p.reshape(-1, 3).T, np.ones((1, p.size // 3))])
    return np.linalg.solve(geometry.input_affine, world)[:3].T.reshape(p.shape)


def to_original_grid(mask: np.ndarray, geometry: VolumeGeometry, threshold: float | None = None) -> np.ndarray:
    """A prediction on the model's input block as a uint8 mask on the original voxel grid.

    The padded margins of the block are dropped, the cropped-away parts of the resampled
    volume become background, and MONAI ``SpatialResample`` takes the resampled grid onto
    the original affine and shape.

    Parameters
    ----------
    mask
        ``geometry.box_size`` array: a binary or label mask (bool / integers), resampled by
        nearest neighbour so label values stay as they are; or, with ``threshold``, scores
        (probabilities, logits) resampled trilinearly and thresholded. Scores give the
        smoother boundary when the original grid is finer than the model's; a mask is all a
        model that outputs labels offers.
    threshold
        None for a mask; the foreground cut of the scores otherwise (``> threshold``).
    """
    from monai.data import MetaTensor
    from monai.transforms import BorderPad, SpatialCrop, SpatialResample

    m = np.asarray(mask)
    if m.shape != tuple(geometry.box_size):
        raise SegmentInputError(f"mask has shape {m.shape}; the model's input block is {tuple(geometry.box_size)}")
    if threshold is None:
        if m.dtype.kind not in "biu":
            raise SegmentInputError(f"a {m.dtype} mask needs a threshold (scores); pass a bool or integer mask "
                                    "for nearest-neighbour resampling")
        if m.size and (m.min() < 0 or m.max() > 255):
            raise SegmentInputError("label values must lie in 0..255 to come back as uint8")
        fill, mode = 0.0, "nearest"
    else:
        if not np.isfinite(m).all():
            raise SegmentInputError("scores hold NaN or infinite values")
        # outside the block the model saw nothing: background, below the cut whatever the scores are
        fill, mode = float(min(m.min(), threshold) - 1.0), "bilinear"

    start, block, res_shape = geometry.box_start, geometry.box_size, geometry.resampled_shape
    lo = [max(s, 0) for s in start]
    hi = [min(s + b, n) for s, b, n in zip(start, block, res_shape)]
    inside = SpatialCrop(roi_start=[low - s for low, s in zip(lo, start)],
                         roi_end=[h - s for h, s in zip(hi, start)])(m.astype(np.float32)[None])
    border = [p for low, h, n in zip(lo, hi, res_shape) for p in (low, n - h)]
    on_resampled = BorderPad(spatial_border=border, mode="constant", value=fill)(inside)
    image = MetaTensor(np.asarray(on_resampled), affine=np.asarray(geometry.resampled_affine))
    back = SpatialResample(mode=mode, padding_mode="border")(
        image, dst_affine=np.asarray(geometry.original_affine), spatial_size=geometry.original_shape)
    values = np.asarray(back.array[0])
    if threshold is None:
        return np.rint(values).astype(np.uint8)
    return (values > threshold).astype(np.uint8)
