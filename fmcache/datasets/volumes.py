"""Reading 3D volumes (NIfTI, DICOM series) as stacks of 2D slices for 2.5D encoding.

Every loader returns a float32 array ``(slices, H, W)``. Which way the slices are cut, and
in which order, is fixed here so that every dataset means the same thing by "slice k":

* The scope's "long axis" is the body's long (craniocaudal) axis, so a volume is cut into
  **axial** slices, ordered **inferior -> superior** (slice 0 is the lowest). It is *not*
  the array axis with the most voxels: a chest CT has 512 x 512 pixels in-plane and often
  fewer slices, and cutting along the in-plane axis would give sagittal images, which is
  neither what the benchmark encodes nor what 2D models were trained on.
* NIfTI: the image is first reoriented with nibabel's ``as_closest_canonical`` (RAS+), so
  the voxel order of the file no longer matters; slice k is canonical index k along the
  chosen axis (lowest index = inferior for axial, posterior for coronal, left for sagittal).
  In-plane, slices are laid out as radiologists view them (axial: anterior at the top, the
  patient's right on the image's left), the layout DICOM pixel data has.
* DICOM: slices are sorted by ImagePositionPatient projected on the slice normal, signed so
  that the position grows along the patient axis the normal is closest to (LPS: left,
  posterior, superior; an axial series thus runs inferior -> superior), else by
  SliceLocation, else by InstanceNumber. Pixels keep their stored in-plane layout (DICOM
  pixel data is meant to be shown as stored).

Intensities come back in the file's units (HU for CT, after RescaleSlope / Intercept);
:func:`window`, :func:`percentile_normalise` and :func:`slice_minmax_normalise` map them
to [0, 1].
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from fmcache.datasets.dicom_image import CODECS_HINT
from fmcache.errors import DatasetError

Plane = Literal["axial", "coronal", "sagittal"]
# canonical (RAS+) axes as (slice, row, column); rows and columns are then reversed so
# that superior / anterior come first in rows and the patient's right comes first in columns
PLANE_AXES: dict[str, tuple[int, int, int]] = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}

# Lung window: level -600 HU, width 1500 HU (the usual chest-CT lung setting)
LUNG_WINDOW = (-1350.0, 150.0)
# Abdominal soft-tissue window: level 40 HU, width 400 (kidney, liver, tumours, cysts)
ABDOMEN_WINDOW = (-160.0, 240.0)
# level -500, width 1500: the "common lung window" FairMedFM's COVID_CT_MD reader clips to
FAIRMEDFM_CT_WINDOW = (-1250.0, 250.0)
MRI_PERCENTILES = (0.5, 99.5)
N_SLICES = 32
NIFTI_SUFFIXES = (".nii", ".nii.gz")


# ---------------------------------------------------------------------------- NIfTI


def is_nifti(path: str | Path) -> bool:
    """Whether the file name ends in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | Path, *, plane: Plane = "axial") -> np.ndarray:
    """A NIfTI volume (.nii or .nii.gz) as float32 slices in anatomical order.

    Parameters
    ----------
    path
        The NIfTI file.
    plane
        ``axial`` (default: slices along the inferior -> superior axis), ``coronal``
        (posterior -> anterior) or ``sagittal`` (left -> right).

    Returns
    -------
    numpy.ndarray
        float32 ``(slices, H, W)`` in the file's intensity units (scl_slope applied), after
        reorientation to RAS+; slice 0 is the lowest canonical index along the slice axis.
        Axial slices have anterior at the top and the patient's right on the left.

    Raises
    ------
    DatasetError
        When the file is missing, unreadable, truncated or not 3D; the message names it.
    """
    import nibabel as nib

    p = Path(path)
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {', '.join(PLANE_AXES)}, got {plane!r}")
    if not p.is_file():
        raise DatasetError(f"NIfTI file not found: {p} (check --data points at the dataset root)")
    try:
        img = nib.as_closest_canonical(nib.load(str(p)))
        data = img.get_fdata(dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"cannot read NIfTI {p}: {e.__class__.__name__}: {e} (file corrupt or truncated?)") from None
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) is a 3D volume saved as 4D
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"NIfTI {p} has shape {data.shape}; a 3D volume is expected")
    return canonical_to_slices(data, plane)


def canonical_to_slices(data: np.ndarray, plane: Plane = "axial") -> np.ndarray:
    """A volume in canonical (RAS+) voxel order as ``(slices, H, W)`` cut in ``plane``.

    The layout every loader here returns (see the module docstring); the dtype is kept, so
    a label volume cut this way stays aligned voxel for voxel with its image.
    """
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {', '.join(PLANE_AXES)}, got {plane!r}")
    s, r, c = PLANE_AXES[plane]
    return np.ascontiguousarray(np.transpose(data, (s, r, c))[:, ::-1, ::-1])


# ---------------------------------------------------------------------------- DICOM


def load_dicom_series(folder: str | Path) -> np.ndarray:
    """One DICOM series (a folder of single-slice ``.dcm`` files) as float32 slices.

    Parameters
    ----------
    folder
        The folder holding the series' files (other files and subfolders are ignored;
        localizer images, ImageType containing LOCALIZER, are skipped).

    Returns
    -------
    numpy.ndarray
        float32 ``(slices, Rows, Columns)`` in modality units (HU for CT: RescaleSlope and
        RescaleIntercept applied per slice), ordered by position along the slice normal
        (an axial series runs inferior -> superior), else by SliceLocation, else by
        InstanceNumber.

    Raises
    ------
    DatasetError
        Naming the folder when it has no ``.dcm`` files, mixes series or image sizes, or
        lacks every ordering tag; naming the file when one cannot be decoded.
    """
    slices = dicom_series_slices(folder)
    return np.stack([dicom_pixels(p, ds) for p, ds in slices]).astype(np.float32, copy=False)


def dicom_series_slices(folder: str | Path, *, any_name: bool = False) -> list:
    """The ``(path, pydicom dataset)`` pairs of one DICOM series folder, first slice first.

    ``any_name``: read every file of the folder, not only ``*.dcm`` (releases such as
    3D-IRCADb store their slices as ``image_0``, ``image_1``, ... without an extension).
    Ordering and errors as for :func:`load_dicom_series`.
    """
    d = Path(folder)
    if not d.is_dir():
        raise DatasetError(f"DICOM series folder not found: {d} (check --data points at the dataset root)")
    files = sorted(p for p in d.iterdir() if p.is_file() and (any_name or p.suffix.lower() == ".dcm")
                   and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"no DICOM {'' if any_name else '(.dcm) '}files in {d}")
    slices = [(p, ds) for p in files if not _is_localizer(ds := _read_dicom(p))]
    if not slices:
        raise DatasetError(f"DICOM series {d} holds only localizer images")
    _check_one_series(d, slices)
    return [slices[i] for i in _slice_order(d, slices)]


def _read_dicom(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read DICOM {path}: {e.__class__.__name__}: {e} (file corrupt or not DICOM?)") from None


def _is_localizer(ds) -> bool:
    return "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _check_one_series(folder: Path, slices: list) -> None:
    for tag in ("SeriesInstanceUID", "Rows", "Columns"):
        values = {str(ds.get(tag)) for _, ds in slices}
        if len(values) > 1:
            raise DatasetError(
                f"DICOM folder {folder} mixes series: {len(values)} different {tag} values "
                f"({', '.join(sorted(values)[:3])}); keep one series per folder"
            )


def _has(ds, tag: str) -> bool:
    return ds.get(tag) not in (None, "")


def _slice_order(folder: Path, slices: list) -> np.ndarray:
    """Indices of ``slices`` from first to last (see :func:`load_dicom_series`)."""
    datasets = [ds for _, ds in slices]
    if all(_has(ds, "ImagePositionPatient") and _has(ds, "ImageOrientationPatient") for ds in datasets):
        orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
        if np.abs(orientations - orientations[0]).max() > 1e-3:
            raise DatasetError(f"DICOM folder {folder} mixes slice orientations (ImageOrientationPatient); keep one series per folder")
        normal = np.cross(orientations[0, :3], orientations[0, 3:])
        normal *= np.sign(normal[np.argmax(np.abs(normal))])  # grow toward L, P or S
        key = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]) @ normal
        source = "ImagePositionPatient"
    elif all(_has(ds, "SliceLocation") for ds in datasets):
        key, source = np.array([float(ds.SliceLocation) for ds in datasets]), "SliceLocation"
    elif all(_has(ds, "InstanceNumber") for ds in datasets):
        key, source = np.array([float(ds.InstanceNumber) for ds in datasets]), "InstanceNumber"
    else:
        bad = next(p for p, ds in slices if not _has(ds, "InstanceNumber"))
        raise DatasetError(
            f"cannot order the slices of DICOM folder {folder}: {bad.name} has none of "
            f"ImagePositionPatient + ImageOrientationPatient, SliceLocation, InstanceNumber"
        )
    # two slices at one place mean a duplicate or a second series (e.g. a second reconstruction)
    if len(np.unique(np.round(key, 4))) < len(key):
        raise DatasetError(
            f"DICOM folder {folder} has two slices at the same {source}; it holds a duplicate or a mixed series"
        )
    return np.argsort(key, kind="stable")


def dicom_pixels(path: Path, ds, *, rescale: bool = True) -> np.ndarray:
    """One slice's pixels as float32 in modality units (RescaleSlope / Intercept applied);
    ``rescale=False``: the stored values as they are (label masks stored as DICOM)."""
    try:
        arr = ds.pixel_array
    # pydicom: ValueError (length), AttributeError (no PixelData), RuntimeError / NotImplementedError (no decoder)
    except (ValueError, AttributeError, TypeError, KeyError, RuntimeError, NotImplementedError, OSError, EOFError) as e:
        raise DatasetError(
            f"cannot decode the pixels of DICOM {path}: {e.__class__.__name__}: {e} (file corrupt, or a compressed "
            f"transfer syntax: {CODECS_HINT})"
        ) from None
    if arr.ndim != 2:
        raise DatasetError(f"DICOM {path} holds pixel data of shape {arr.shape}; single-frame grayscale slices are expected")
    if not rescale:
        return arr
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * slope + intercept


# ---------------------------------------------------------------------------- intensities


def window(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to ``[low, high]`` and scale linearly to [0, 1] (float32).

    A CT window in HU, e.g. :data:`LUNG_WINDOW` = (-1350, 150): level -600, width 1500.
    """
    if not high > low:
        raise ValueError(f"window needs high > low, got ({low}, {high})")
    v = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=low)
    out = (np.clip(v, low, high) - np.float32(low)) / np.float32(high - low)
    # float32 rounding can overshoot by one ulp; the bounds must hold exactly
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def percentile_normalise(volume: np.ndarray, low: float = MRI_PERCENTILES[0], high: float = MRI_PERCENTILES[1]) -> np.ndarray:
    """Min-max scale to [0, 1] between two percentiles of the volume's own voxels.

    The default 0.5 - 99.5 keeps a few hot voxels (MRI bias-field or vessel outliers) from
    squeezing the brain into a narrow grey band. A constant volume gives zeros.
    """
    v = np.asarray(volume, dtype=np.float32)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros(v.shape, np.float32)
    lo, hi = np.percentile(finite, [low, high])
    if not hi > lo:
        return np.zeros(v.shape, np.float32)
    return window(np.where(np.isfinite(v), v, lo), float(lo), float(hi))


def slice_minmax_normalise(volume: np.ndarray) -> np.ndarray:
    """Min-max scale each slice (axis 0) to [0, 1] between its own minimum and maximum.

    The scaling FairMedFM's ADNI reader (datasets/ADNI.py) applies; unlike
    :func:`percentile_normalise`, a single hot voxel sets its slice's scale. Non-finite
    voxels do not set the scale and come back as 0; a constant slice gives zeros.
    """
    v = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(v)
    lo = np.where(finite, v, np.inf).min(axis=(1, 2), keepdims=True)
    hi = np.where(finite, v, -np.inf).max(axis=(1, 2), keepdims=True)
    scaled = hi > lo  # False for a constant slice and for one without a finite voxel
    lo = np.where(scaled, lo, np.float32(0))
    span = np.where(scaled, hi - lo, np.float32(1))
    out = np.where(finite & scaled, (np.where(finite, v, lo) - lo) / span, np.float32(0))
    # float32 rounding can overshoot by one ulp; the bounds must hold exactly
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- slices


def resample_slices(volume: np.ndarray, n: int = N_SLICES) -> np.ndarray:
    """Linear interpolation along the slice axis (axis 0) to exactly ``n`` slices.

    Uses the half-pixel convention of ``torch.nn.functional.interpolate(mode="linear",
    align_corners=False)``, as the reference resizes its volumes: output slice k samples
    input position ``(k + 0.5) * S / n - 0.5``, clamped to the ends. Slice order is kept,
    and a volume that already has ``n`` slices comes back unchanged.

    Parameters
    ----------
    volume
        ``(S, H, W)`` array, S >= 1.
    n
        Number of slices wanted (32 for the benchmark's 2.5D protocol).

    Returns
    -------
    numpy.ndarray
        float32 ``(n, H, W)``.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or v.shape[0] < 1:
        raise ValueError(f"resample_slices needs a (slices, H, W) volume, got shape {v.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = v.shape[0]
    if s == n:
        return v.copy()
    pos = np.clip((np.arange(n) + 0.5) * (s / n) - 0.5, 0.0, s - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, s - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    return ((1.0 - w) * v[lo] + w * v[hi]).astype(np.float32)


def slices_to_images(volume: np.ndarray) -> list[Image.Image]:
    """Each slice of a [0, 1] volume as an 8-bit RGB PIL image (gray replicated).

    Parameters
    ----------
    volume
        ``(S, H, W)`` with values in [0, 1] (values outside are clipped).

    Returns
    -------
    list of PIL.Image.Image
        S images of size (W, H), mode RGB, in slice order.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"slices_to_images needs a (slices, H, W) volume, got shape {v.shape}")
    u8 = np.round(np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return [Image.fromarray(s).convert("RGB") for s in u8]
