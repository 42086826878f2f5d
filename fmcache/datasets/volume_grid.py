"""Volumes with their geometry: the voxel grid a 3D model and a label volume must share.

:mod:`fmcache.datasets.volumes` turns a volume into a stack of [0, 1] slices for 2D
encoders and forgets where the voxels are; a volumetric segmentation model needs more:
the spacing in mm (SAM-Med3D and SegVol resample to their own spacing) and the
orientation. A :class:`Volume` keeps both. Every reader here returns the array in one
voxel order, the closest canonical one (nibabel's RAS+), so that an image and its label
volume read from different containers (NIfTI, a DICOM series, MetaImage) land on the same
grid whenever the release's files describe the same grid:

* axis 0 grows toward the patient's right (R), axis 1 toward anterior (A), axis 2 toward
  superior (S); index 0 is thus the left-, posterior- and inferior-most voxel;
* ``affine`` maps a voxel index (i, j, k, 1) to RAS+ millimetres; ``spacing`` is the
  length of each voxel edge along the array axes.

DICOM and MetaImage describe positions in LPS (DICOM's patient coordinates); their
matrices are turned into RAS+ by negating the first two rows before reorienting.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmcache.datasets.volumes import Plane, canonical_to_slices, dicom_pixels, dicom_series_slices
from fmcache.errors import DatasetError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GRID_TOLERANCE_MM = 1e-3  # two grids whose affines differ by less are the same grid


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare with same_grid / the arrays
class Volume:
    """A 3D array on a known voxel grid.

    Attributes
    ----------
    array
        ``(X, Y, Z)`` in RAS+ voxel order (:attr:`orientation` is ``('R', 'A', 'S')`` for
        every volume the readers here return).
    affine
        4 x 4 float64: voxel index -> RAS+ position in mm.
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array's three axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """The anatomical direction each array axis grows toward, e.g. ``('R', 'A', 'S')``."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def slices(self, plane: Plane = "axial") -> np.ndarray:
        """The array as ``(slices, H, W)`` in the layout of :func:`fmcache.datasets.volumes.load_nifti`."""
        return canonical_to_slices(self.array, plane)

    def same_grid(self, other: "Volume") -> bool:
        """Whether both volumes have the same shape and the same voxel positions (within 1 µm)."""
        return self.shape == other.shape and bool(np.abs(self.affine - other.affine).max() < GRID_TOLERANCE_MM)


def canonical(array: np.ndarray, affine: np.ndarray) -> Volume:
    """Reorder an array's axes (and flip them) to the closest RAS+ order; the affine follows.

    Parameters
    ----------
    array
        3D array whose axis ``n`` is the affine's column ``n``.
    affine
        4 x 4 voxel -> RAS+ mm.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return Volume(np.ascontiguousarray(out), np.asarray(new_affine, dtype=np.float64))


# ---------------------------------------------------------------------------- NIfTI


def read_nifti_volume(path: Path, *, labels: bool = False) -> Volume:
    """A NIfTI file as a canonical :class:`Volume`.

    ``labels``: the stored values as they are (integer label maps: no float conversion,
    no interpolation), else float32 in the file's units (scl_slope applied). DatasetError
    naming the file when it is missing, unreadable or not 3D.
    """
    import nibabel as nib

    if not path.is_file():
        raise DatasetError(f"NIfTI file not found: {path} (check --data points at the dataset root)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if labels else img.get_fdata(dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"cannot read NIfTI {path}: {e.__class__.__name__}: {e} (file corrupt or truncated?)") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"NIfTI {path} has shape {data.shape}; a 3D volume is expected")
    return canonical(data, affine)


# ---------------------------------------------------------------------------- DICOM


def read_dicom_volume(folder: Path, *, any_name: bool = False, labels: bool = False) -> Volume:
    """A DICOM series folder as a canonical :class:`Volume` in modality units (float32);
    ``labels``: the stored values, no rescaling (masks stored as DICOM).

    The grid comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing of
    the slices in position order (see :func:`fmcache.datasets.volumes.dicom_series_slices`,
    ``any_name`` included); a series without them has no known geometry and is an error.
    """
    slices = dicom_series_slices(folder, any_name=any_name)
    affine = dicom_affine(folder, [ds for _, ds in slices])
    stack = np.stack([dicom_pixels(p, ds, rescale=not labels) for p, ds in slices])  # (slice, row, column)
    return canonical(np.transpose(stack, (2, 1, 0)), affine)


def dicom_affine(folder: Path, datasets: list) -> np.ndarray:
    """The RAS+ affine of slices in position order, for an array indexed (column, row, slice)."""
    first = datasets[0]
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if first.get(tag) in (None, ""):
            raise DatasetError(f"DICOM series {folder} has no {tag}: its voxel grid (spacing, orientation) is unknown")
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        thickness = float(first.get("SliceThickness") or 1.0)
        step = np.cross(iop[:3], iop[3:]) * thickness
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # along a row: the column index grows
    lps[:3, 1] = iop[3:] * row_spacing  # down a column: the row index grows
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


# ---------------------------------------------------------------------------- MetaImage


def read_image_volume(path: Path, *, labels: bool = False) -> Volume:
    """A file SimpleITK reads (MetaImage ``.mha`` / ``.mhd``, NRRD, ...) as a canonical :class:`Volume`.

    ``labels``: the stored integer values, else float32. The direction matrix, spacing and
    origin (LPS) give the grid, so files stored in different axis orders come out alike.
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DatasetError(f"reading {path.name} needs SimpleITK: pip install SimpleITK") from None
    if not path.is_file():
        raise DatasetError(f"image file not found: {path} (check --data points at the dataset root)")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise DatasetError(f"cannot read {path}: {first} (file corrupt or truncated?)") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{path} holds a {img.GetDimension()}D image with {img.GetNumberOfComponentsPerPixel()} "
                           "component(s); a 3D single-channel volume is expected")
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))  # SimpleITK gives (z, y, x)
    if not labels:
        data = data.astype(np.float32)
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3) * np.array(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return canonical(data, LPS_TO_RAS @ lps)


# ---------------------------------------------------------------------------- labels


def class_volume(path: Path, table: dict[int, int], dataset: str) -> Volume:
    """A label-volume file (NIfTI, or any format SimpleITK reads) as class ids on its grid:
    :func:`remap_labels` of its stored values."""
    read = read_nifti_volume if path.name.endswith((".nii", ".nii.gz")) else read_image_volume
    labels = read(path, labels=True)
    return Volume(remap_labels(labels.array, table, f"{dataset}: {path}"), labels.affine)


def remap_labels(values: np.ndarray, table: dict[int, int], where: str) -> np.ndarray:
    """Release label values -> class ids (uint8): ``table[v]`` for listed values, 0 for the rest.

    A non-integer value is an error naming ``where`` (a float volume is not a label map).
    """
    v = np.asarray(values)
    if v.dtype.kind == "f":
        if not np.isfinite(v).all() or (v != np.round(v)).any():
            raise DatasetError(f"{where} holds non-integer values; a label map of integer codes is expected")
        v = v.astype(np.int64)
    elif v.dtype.kind not in "iub":
        raise DatasetError(f"{where} has values of type {v.dtype}; a label map of integer codes is expected")
    out = np.zeros(v.shape, np.uint8)
    for code, cls in table.items():
        out[v == code] = cls
    return out
